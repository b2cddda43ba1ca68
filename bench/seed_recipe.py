"""The seed notebook's recipe, re-implemented for the benchmarks only (never reachable from the library).

Importing this module registers `normalization="seed"` with the shared frame preprocessing,
so the library's training, evaluation and export run the seed's preprocessing when a
benchmark asks for it. `seed_config()` is the seed's training recipe at our model sizes.
Its defects (see shared/seeds/README.md) are reproduced on purpose: this is the baseline.
"""
from __future__ import annotations

from typing import Any

import tensorflow as tf

from fingerspell.config import Config, ConfigError
from fingerspell.data import schema
from fingerspell.features.frames import HAND_FEATURES, hand_frame_counts, is_nan, register_normalization, to_points

SEED_FEATURES = HAND_FEATURES  # the seed drops its pose points by mistake


def seed_features(landmarks: schema.LandmarkSet) -> int:
    """The seed reads the 156 hands-and-arms columns only."""
    if landmarks is not schema.HANDS_ARMS:
        raise ConfigError(f"normalization='seed' reads landmarks={schema.HANDS_ARMS.name!r} only, "
                          f"not {landmarks.name!r}")
    return SEED_FEATURES


def seed_preprocess_frames(frames: tf.Tensor, frame_len: int = 128,
                           landmarks: schema.LandmarkSet = schema.HANDS_ARMS) -> tf.Tensor:
    """The seed notebook's pre_process.

    Faithful to its behaviour: hands only (its pose indices come out empty), the hand
    normalised per frame over all 63 values in the right-hand branch only (the left
    branch mirrors and skips it), bilinear resize of longer sequences before NaN -> 0.
    """
    seed_features(landmarks)
    points = to_points(frames)
    n_left, n_right = hand_frame_counts(points)
    left = tf.gather(points, schema.LEFT_HAND_POINTS, axis=1)
    right = tf.gather(points, schema.RIGHT_HAND_POINTS, axis=1)
    right_flat = tf.reshape(tf.transpose(right, [0, 2, 1]), [-1, HAND_FEATURES])
    mean = tf.reduce_mean(right_flat, axis=1, keepdims=True)
    std = tf.math.reduce_std(right_flat, axis=1, keepdims=True)
    right_flat = (right_flat - mean) / std
    mirrored = left * tf.constant([-1.0, 1.0, 1.0]) + tf.constant([1.0, 0.0, 0.0])
    left_flat = tf.reshape(tf.transpose(mirrored, [0, 2, 1]), [-1, HAND_FEATURES])
    # The seed picks the left hand when the right one has more NaN frames.
    x = tf.where(n_left > n_right, left_flat, right_flat)
    n = tf.shape(x)[0]
    x = tf.cond(
        n > frame_len,
        lambda: tf.image.resize(x[..., None], [frame_len, HAND_FEATURES])[..., 0],
        lambda: tf.pad(x, [[0, tf.maximum(frame_len - n, 0)], [0, 0]]),
    )
    x = tf.where(is_nan(x), tf.zeros_like(x), x)
    return tf.reshape(x, [frame_len, HAND_FEATURES])


def seed_config(**changes: Any) -> Config:
    """The seed notebook's recipe: its geometry (the `seed` preset) and preprocessing, key_dim = num_hid,
    Adam 1e-4, no augmentation."""
    seed = dict(
        preset="seed", normalization="seed", key_dim=200, learning_rate=1e-4, lr_schedule="constant",
        warmup_epochs=0.0, weight_decay=0.0, clipnorm=0.0, trim_padding=False,
        steps_per_execution=1,  # Keras 2 model.fit called the step once per batch
    )
    seed.update({name: 0.0 for name in Config.from_dict({"preset": "seed"}).augmentation_probabilities})
    seed.update(changes)
    return Config.from_dict(seed)


register_normalization("seed", seed_preprocess_frames, seed_features)
