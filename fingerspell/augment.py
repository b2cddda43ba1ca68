"""Training-time augmentation of dominant-side points [T, 26, 3] (before normalisation).

Each augmentation is switched by the config. They act on raw image coordinates so a
rotation really turns the hand, and NaN marks a dropped point exactly as MediaPipe
marks an undetected one.
"""
from __future__ import annotations

import math

import tensorflow as tf

from fingerspell.config import Config
from fingerspell.schema import N_HAND_POINTS

# Points of each finger on MediaPipe's hand (thumb, index, middle, ring, pinky).
FINGERS = tf.constant([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20]])


def resample_speed(points: tf.Tensor, low: float, high: float) -> tf.Tensor:
    """Play the sequence 0.8-1.2x as fast (nearest frames)."""
    n = tf.shape(points)[0]
    speed = tf.random.uniform([], low, high)
    new_n = tf.maximum(tf.cast(tf.round(tf.cast(n, tf.float32) / speed), tf.int32), 1)
    index = tf.cast((tf.range(new_n, dtype=tf.float32) + 0.5) * speed, tf.int32)
    return tf.gather(points, tf.minimum(index, tf.maximum(n - 1, 0)))


def affine(points: tf.Tensor, scale: float, degrees: float, shift: float) -> tf.Tensor:
    """Scale, rotate (in the image plane) and shift all points about their mean."""
    angle = tf.random.uniform([], -degrees, degrees) * (math.pi / 180.0)
    factor = tf.random.uniform([], 1.0 - scale, 1.0 + scale)
    offset = tf.random.uniform([2], -shift, shift)
    cos, sin = tf.cos(angle), tf.sin(angle)
    rotation = tf.stack([tf.stack([cos, -sin]), tf.stack([sin, cos])])
    xy = points[..., :2]
    valid = tf.logical_not(tf.math.is_nan(xy))
    centre = tf.reduce_sum(tf.where(valid, xy, 0.0), axis=[0, 1]) / tf.maximum(
        tf.reduce_sum(tf.cast(valid, tf.float32), axis=[0, 1]), 1.0)
    xy = tf.einsum("tpc,dc->tpd", xy - centre, rotation) * factor + centre + offset
    return tf.concat([xy, points[..., 2:] * factor], axis=-1)


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
    blank = tf.logical_and(frame >= start, frame < start + span)[:, None, None]
    return tf.where(blank, tf.fill(tf.shape(points), math.nan), points)


def drop_points(points: tf.Tensor, rate: float) -> tf.Tensor:
    """Blank single hand points, and now and then a whole finger, across the sequence."""
    point_drop = tf.random.uniform([N_HAND_POINTS]) < rate
    finger = tf.random.uniform([], 0, 5, dtype=tf.int32)
    finger_points = tf.reduce_any(tf.equal(tf.range(N_HAND_POINTS)[:, None], FINGERS[finger][None, :]), axis=1)
    finger_drop = tf.logical_and(finger_points, tf.random.uniform([]) < rate * 4)
    hand_drop = tf.logical_or(point_drop, finger_drop)
    n_arm = tf.shape(points)[1] - N_HAND_POINTS
    drop = tf.concat([hand_drop, tf.zeros([n_arm], tf.bool)], axis=0)[None, :, None]
    return tf.where(drop, tf.fill(tf.shape(points), math.nan), points)


def augment(points: tf.Tensor, cfg: Config) -> tf.Tensor:
    """Apply the augmentations the config switches on, in a fixed order."""
    if cfg.aug_speed:
        points = resample_speed(points, cfg.aug_speed_min, cfg.aug_speed_max)
    if cfg.aug_affine:
        points = affine(points, cfg.aug_scale, cfg.aug_rotate_degrees, cfg.aug_shift)
    if cfg.aug_frame_drop:
        points = drop_frames(points, cfg.aug_frame_drop_rate)
    if cfg.aug_point_dropout:
        points = drop_points(points, cfg.aug_point_dropout_rate)
    return points
