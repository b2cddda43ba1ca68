"""Training-time augmentation of dominant-side points (before normalisation).

Each augmentation is switched by the config. They act on raw image coordinates so a
rotation really turns the hand, and NaN marks a dropped point exactly as MediaPipe
marks an undetected one. The temporal ones change a sequence's length and run per
sequence ([T, 26, 3]); the spatial ones run on whole batches ([B, T, 26, 3]) with
parameters drawn per sequence, because a few batched ops cost far less CPU than
many small per-sequence ones (the input pipeline shares the CPU with training).
"""
from __future__ import annotations

import math

import tensorflow as tf

from fingerspell.config import Config
from fingerspell.data.schema import N_HAND_POINTS

# Points of each finger on MediaPipe's hand (thumb, index, middle, ring, pinky).
FINGERS = ((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17, 18, 19, 20))


def _blank(points: tf.Tensor, where: tf.Tensor) -> tf.Tensor:
    return tf.where(where, tf.fill(tf.shape(points), math.nan), points)


# --- per sequence: [T, P, 3] --------------------------------------------------------------------

def resample_speed(points: tf.Tensor, low: float, high: float) -> tf.Tensor:
    """Play the sequence 0.8-1.2x as fast (nearest frames)."""
    n = tf.shape(points)[0]
    speed = tf.random.uniform([], low, high)
    new_n = tf.maximum(tf.cast(tf.round(tf.cast(n, tf.float32) / speed), tf.int32), 1)
    index = tf.cast((tf.range(new_n, dtype=tf.float32) + 0.5) * speed, tf.int32)
    return tf.gather(points, tf.minimum(index, tf.maximum(n - 1, 0)))


def drop_frames(points: tf.Tensor, rate: float) -> tf.Tensor:
    """Remove a random `rate` share of frames and blank (NaN) one random span."""
    n = tf.shape(points)[0]
    keep = tf.random.uniform([n]) >= rate
    keep = tf.logical_or(keep, tf.equal(tf.reduce_sum(tf.cast(keep, tf.int32)), 0))
    points = tf.boolean_mask(points, keep)
    n = tf.shape(points)[0]
    span = tf.cast(tf.cast(n, tf.float32) * tf.random.uniform([], 0.0, rate), tf.int32)
    start = tf.random.uniform([], 0, tf.maximum(n - span, 1), dtype=tf.int32)
    frame = tf.range(n)
    return _blank(points, tf.logical_and(frame >= start, frame < start + span)[:, None, None])


def temporal(points: tf.Tensor, cfg: Config) -> tf.Tensor:
    if cfg.aug_speed:
        points = resample_speed(points, cfg.aug_speed_min, cfg.aug_speed_max)
    if cfg.aug_frame_drop:
        points = drop_frames(points, cfg.aug_frame_drop_rate)
    return points


# --- per batch: [B, T, P, 3], parameters drawn per sequence ---------------------------------------

def affine(points: tf.Tensor, scale: float, degrees: float, shift: float) -> tf.Tensor:
    """Scale, rotate (in the image plane) and shift each sequence's points about their mean."""
    batch = tf.shape(points)[0]
    angle = tf.random.uniform([batch], -degrees, degrees) * (math.pi / 180.0)
    factor = tf.random.uniform([batch, 1, 1, 1], 1.0 - scale, 1.0 + scale)
    offset = tf.random.uniform([batch, 1, 1, 2], -shift, shift)
    cos, sin = tf.cos(angle), tf.sin(angle)
    rotation = tf.reshape(tf.stack([cos, -sin, sin, cos], axis=-1), [batch, 2, 2])
    xy = points[..., :2]
    valid = tf.logical_not(tf.math.is_nan(xy))
    centre = tf.reduce_sum(tf.where(valid, xy, 0.0), axis=[1, 2], keepdims=True) / tf.maximum(
        tf.reduce_sum(tf.cast(valid, tf.float32), axis=[1, 2], keepdims=True), 1.0)
    xy = tf.einsum("btpc,bdc->btpd", xy - centre, rotation) * factor + centre + offset
    return tf.concat([xy, points[..., 2:] * factor], axis=-1)


def drop_points(points: tf.Tensor, rate: float) -> tf.Tensor:
    """Blank single hand points, and now and then a whole finger, across each sequence."""
    batch = tf.shape(points)[0]
    point_drop = tf.random.uniform([batch, N_HAND_POINTS]) < rate
    finger_masks = tf.constant([[p in finger for p in range(N_HAND_POINTS)] for finger in FINGERS])
    finger = tf.gather(finger_masks, tf.random.uniform([batch], 0, len(FINGERS), dtype=tf.int32))
    finger_drop = tf.logical_and(finger, tf.random.uniform([batch, 1]) < rate * 4)
    hand_drop = tf.logical_or(point_drop, finger_drop)
    arm = tf.zeros([batch, tf.shape(points)[2] - N_HAND_POINTS], tf.bool)
    return _blank(points, tf.concat([hand_drop, arm], axis=1)[:, None, :, None])


def spatial(points: tf.Tensor, cfg: Config) -> tf.Tensor:
    if cfg.aug_affine:
        points = affine(points, cfg.aug_scale, cfg.aug_rotate_degrees, cfg.aug_shift)
    if cfg.aug_point_dropout:
        points = drop_points(points, cfg.aug_point_dropout_rate)
    return points
