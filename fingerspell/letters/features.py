"""Hand landmarks -> features made to generalise across people, cameras and hands.

One TensorFlow function, `window_features`, is the model's first layer, so training and the
exported TFLite model compute exactly the same features. Its input is a short window of
frames `[N, WINDOW, 21, 3]` (MediaPipe Hands' points, image-normalised x, y and relative z;
a still image is its frame repeated) and a handedness `[N]` (+1 where MediaPipe labelled the
hand "Left", -1 "Right", 0 unknown).

- **Chirality made canonical.** A left hand, or a right hand seen in a mirrored selfie
  camera, is mirrored (x -> -x) to one handedness. MediaPipe's own label decides where there
  is one (it reads the image, and it was right on the real images where the 3-D shape was
  not); otherwise the sign of the triple product of the index and pinky metacarpals and the
  thumb's metacarpal, which a rotation never changes and a mirror always flips (on the 10,508
  real training frames it agrees on 99% of them). Canonical is the sign MediaPipe's "Left" has.
- **Position and size removed, orientation kept.** Points are centred on the wrist and
  divided by the palm size (mean wrist-to-knuckle length), so where the hand is and how big it
  looks do not matter; the hand's rotation is kept (G/H point sideways, P/Q down: the same
  shape, other letters), and augmentation covers plausible rotations instead.
- **Shape.** The 20 bone directions (unit vectors; not the points themselves, which also
  carry one signer's finger lengths and held out slightly worse on another signer), the bend
  between consecutive bones of each finger, and the distances from the thumb tip to every
  other point and between the other fingertips (E, M, N, S, T differ by where the thumb is).
- **Motion.** J and Z are drawn in the air: the path of the index and little-finger tips
  over the window, relative to the last frame, in palm sizes. A still image has none.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from fingerspell.letters.config import WINDOW  # frames of motion the features see (kept in the light config)

HAND_POINTS = 21
WRIST, THUMB_MCP, THUMB_TIP = 0, 2, 4
INDEX_MCP, PINKY_MCP = 5, 17
KNUCKLES = (5, 9, 13, 17)
FINGERTIPS = (8, 12, 16, 20)
MOTION_TIPS = (8, 20)  # Z is drawn with the index finger, J with the little finger
#: Each point's parent in MediaPipe's hand skeleton (the wrist has none).
PARENTS = (-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19)
FINGERS = ((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17, 18, 19, 20))


def _cross(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """a x b over the last axis, in ops TFLite has as builtins (tf.linalg.cross is not one)."""
    ax, ay, az = a[..., 0], a[..., 1], a[..., 2]
    bx, by, bz = b[..., 0], b[..., 1], b[..., 2]
    return tf.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], axis=-1)


def chirality(points: tf.Tensor) -> tf.Tensor:
    """+1 or -1 per hand [..., 21, 3]: the sign of (index knuckle x little knuckle) . thumb metacarpal."""
    wrist = points[..., WRIST, :]
    index, pinky, thumb = (points[..., i, :] - wrist for i in (INDEX_MCP, PINKY_MCP, THUMB_MCP))
    triple = tf.reduce_sum(_cross(index, pinky) * thumb, axis=-1)
    return tf.where(triple >= 0, 1.0, -1.0)


def canonical_sign(last_frame: tf.Tensor, handedness: tf.Tensor) -> tf.Tensor:
    """[N]: +1 keeps x, -1 mirrors it: MediaPipe's label where known, else the hand's geometry."""
    return tf.where(tf.not_equal(handedness, 0.0), tf.sign(handedness), chirality(last_frame))


def _unit(vectors: tf.Tensor) -> tf.Tensor:
    return vectors / (tf.norm(vectors, axis=-1, keepdims=True) + 1e-6)


def hand_shape(points: tf.Tensor) -> tf.Tensor:
    """[N, 21, 3] canonical, wrist-centred, palm-scaled points -> [N, SHAPE_FEATURES]."""
    children = list(range(1, HAND_POINTS))
    bones = _unit(tf.gather(points, children, axis=1) - tf.gather(points, [PARENTS[i] for i in children], axis=1))
    bends = []
    for finger in FINGERS:  # cosine between consecutive bones: 1 straight, lower when bent
        rows = [finger.index(p) for p in finger[1:]]
        first, second = (tf.gather(bones, [finger[r] - 1 for r in rows[:-1]], axis=1),
                         tf.gather(bones, [finger[r] - 1 for r in rows[1:]], axis=1))
        bends.append(tf.reduce_sum(first * second, axis=-1))
    bones_flat = tf.reshape(bones, [-1, (HAND_POINTS - 1) * 3])
    thumb_tip = points[:, THUMB_TIP:THUMB_TIP + 1, :]
    others = [i for i in range(HAND_POINTS) if i not in (WRIST, THUMB_TIP)]
    thumb_distances = tf.norm(tf.gather(points, others, axis=1) - thumb_tip, axis=-1)
    pairs = [(a, b) for i, a in enumerate(FINGERTIPS) for b in FINGERTIPS[i + 1:]]
    tip_distances = tf.stack([tf.norm(points[:, a] - points[:, b], axis=-1) for a, b in pairs], axis=1)
    return tf.concat([bones_flat, *bends, thumb_distances, tip_distances], axis=1)


def window_features(window: tf.Tensor, handedness: tf.Tensor) -> tf.Tensor:
    """[N, WINDOW, 21, 3] frames (the last is classified) and handedness [N] -> [N, FEATURES]."""
    window = tf.convert_to_tensor(window, tf.float32)
    handedness = tf.convert_to_tensor(handedness, tf.float32)
    last = window[:, -1]
    mirror = tf.stack([canonical_sign(last, handedness), tf.ones_like(handedness), tf.ones_like(handedness)],
                      axis=-1)[:, None, None, :]
    window = window * mirror  # x -> -x for the other chirality; the wrist centring below removes the offset
    last = window[:, -1]
    wrist = last[:, WRIST:WRIST + 1, :]
    palm = tf.reduce_mean(tf.norm(tf.gather(last, list(KNUCKLES), axis=1) - wrist, axis=-1), axis=1)
    palm = tf.maximum(palm, 1e-4)[:, None, None]
    shape = hand_shape((last - wrist) / palm)
    tips = tf.gather(window, list(MOTION_TIPS), axis=2)[..., :2]  # [N, W, 2, 2]: image-plane paths
    paths = (tips[:, :-1] - tips[:, -1:]) / palm[..., None]
    motion = tf.reshape(paths, [-1, (WINDOW - 1) * len(MOTION_TIPS) * 2])
    return tf.concat([shape, motion], axis=1)


def feature_count() -> int:
    return int(window_features(np.zeros([1, WINDOW, HAND_POINTS, 3], np.float32), np.ones([1], np.float32))
               .shape[1])


def recording_handedness(frames: np.ndarray, handedness: np.ndarray) -> np.ndarray:
    """[T]: MediaPipe's labels where there are any; else, for a recording without labels (.npy, .pose), the
    geometric chirality most of its frames have, for every frame. One signer with one camera has one
    chirality, while a single frame's triple product can flip (a flattened O: a fifth of its frames)."""
    handedness = np.asarray(handedness, np.float32)
    if len(frames) < 2 or np.any(handedness != 0):
        return handedness
    votes = chirality(np.asarray(frames, np.float32)).numpy()
    return np.full(len(frames), 1.0 if votes.sum() >= 0 else -1.0, np.float32)


def still_windows(frames: np.ndarray) -> np.ndarray:
    """[T, 21, 3] frames -> [T, WINDOW, 21, 3] windows of each frame alone (an image has no motion)."""
    return np.repeat(np.asarray(frames, np.float32)[:, None], WINDOW, axis=1)


def clip_windows(frames: np.ndarray) -> np.ndarray:
    """[T, 21, 3] consecutive frames -> [T, WINDOW, 21, 3]: each frame with those before it
    (the first frames repeat the clip's first)."""
    frames = np.asarray(frames, np.float32)
    index = np.arange(len(frames))[:, None] + np.arange(-WINDOW + 1, 1)[None, :]
    return frames[np.clip(index, 0, None)]
