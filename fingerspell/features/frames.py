"""Frame preprocessing: [T, C] selected landmark columns -> [T', features], T' <= max_frames.

C is the column count of the run's landmark set (`schema.LandmarkSet`: 156 for `hands_arms`, the
default; 390 for `hands_arms_face`; 1629 for `all`); every function takes the set, defaulting to
`hands_arms`.

Written in TensorFlow ops that convert to TFLite builtins, and imported by both the
tf.data pipeline and the TFLite export, so training and inference run the same code.
NaN tests use `x != x` because TFLite has no IsNan builtin.

Our normalisation ("hand"), chosen because it makes the model see hand *shape*
independently of where the signer stands and how large their hand is, while the
arm keeps the hand's *motion*:
- the hand is centred on its own mean point in each frame and scaled by the frame's
  RMS x-y spread (one scale for x, y and z so the shape is not distorted);
- the arm pose points (with larger sets: the arm, face and other-hand points together, the
  "context") are centred on their mean over the whole sequence and scaled by the sequence's
  RMS x-y spread, so moves such as j and z, and where the hand is against the face, stay visible.
Missing points become 0 after normalisation (0 is the mean, the least surprising value).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from fingerspell.config import ConfigError
from fingerspell.data import schema

HAND_FEATURES = schema.N_HAND_POINTS * 3
SIDE_FEATURES = schema.N_SIDE_POINTS * 3  # 78: the dominant hand and its arm (hands_arms)
LandmarkSet = schema.LandmarkSet
DEFAULT_SET = schema.HANDS_ARMS


def is_nan(x: tf.Tensor) -> tf.Tensor:
    return tf.not_equal(x, x)


def to_points(frames: tf.Tensor, landmarks: LandmarkSet = DEFAULT_SET) -> tf.Tensor:
    """[T, C] coordinate-major columns -> [T, P, 3] points (x, y, z), e.g. [T, 52, 3] for hands_arms."""
    frames = tf.reshape(tf.cast(frames, tf.float32), [-1, 3, landmarks.n_points])
    return tf.transpose(frames, [0, 2, 1])


def hand_frame_counts(points: tf.Tensor, landmarks: LandmarkSet = DEFAULT_SET) -> tuple[tf.Tensor, tf.Tensor]:
    """Frames in which the left and right hand are fully present."""
    present = tf.logical_not(tf.reduce_any(is_nan(points), axis=2))  # [T, P]
    left = tf.reduce_all(tf.gather(present, landmarks.left_hand, axis=1), axis=1)
    right = tf.reduce_all(tf.gather(present, landmarks.right_hand, axis=1), axis=1)
    return (tf.reduce_sum(tf.cast(left, tf.int32)), tf.reduce_sum(tf.cast(right, tf.int32)))


def dominant_side(frames: tf.Tensor, landmarks: LandmarkSet = DEFAULT_SET) -> tf.Tensor:
    """[T, C] -> [T, S, 3]: the hand present in more frames, then the set's context points
    (for hands_arms, S = 26: the same side's arm).

    A left-dominant sequence is mirrored (x -> 1 - x, each point relabelled as its mirror image
    through the set's symmetry map) so the model always sees a right hand. Ties go to the right
    hand, as in the seed.
    """
    points = to_points(frames, landmarks)
    n_left, n_right = hand_frame_counts(points, landmarks)
    left = tf.gather(points, [landmarks.symmetry[k] for k in landmarks.side], axis=1)
    right = tf.gather(points, landmarks.side, axis=1)
    mirrored = left * tf.constant([-1.0, 1.0, 1.0]) + tf.constant([1.0, 0.0, 0.0])
    return tf.where(n_left > n_right, mirrored, right)


def _nan_mean(x: tf.Tensor, axis, keepdims: bool = True) -> tf.Tensor:
    valid = tf.logical_not(is_nan(x))
    total = tf.reduce_sum(tf.where(valid, x, tf.zeros_like(x)), axis=axis, keepdims=keepdims)
    count = tf.reduce_sum(tf.cast(valid, x.dtype), axis=axis, keepdims=keepdims)
    return total / tf.maximum(count, 1.0)


def _centre_and_scale(points: tf.Tensor, axis) -> tf.Tensor:
    """Centre points on their NaN-aware mean over `axis`, divide by the RMS x-y spread."""
    centred = points - _nan_mean(points, axis=axis)
    spread = _nan_mean(tf.square(centred[..., :2]), axis=axis)  # [..., 2]
    scale = tf.sqrt(tf.reduce_mean(spread, axis=-1, keepdims=True))
    return centred / tf.maximum(scale, 1e-6)


def normalize(points: tf.Tensor) -> tf.Tensor:
    """[..., T, S, 3] dominant-side points -> [..., T, 3 S] normalised features, NaN -> 0
    (S = 26 -> 78 features for hands_arms).

    Works on one sequence or a batch (the training pipeline normalises whole batches).
    """
    hand = _centre_and_scale(points[..., : schema.N_HAND_POINTS, :], axis=-2)
    arm = _centre_and_scale(points[..., schema.N_HAND_POINTS :, :], axis=[-3, -2])
    x = tf.concat([hand, arm], axis=-2)
    x = tf.where(is_nan(x), tf.zeros_like(x), x)
    return tf.reshape(x, tf.concat([tf.shape(x)[:-2], [points.shape[-2] * 3]], axis=0))


def drop_empty_frames(frames: tf.Tensor) -> tf.Tensor:
    """[T, C] -> the frames where at least one selected landmark was detected.

    A frame where nothing was seen carries no information, and dropping it is what lets
    any caller pad a sequence with NaN rows (a fixed-size input) without changing its result.
    """
    return tf.boolean_mask(frames, tf.reduce_any(tf.logical_not(is_nan(frames)), axis=1))


def shorten(x: tf.Tensor, max_frames: int) -> tf.Tensor:
    """[T, ...] -> [min(T, max_frames), ...]: nearest frames when longer, unchanged otherwise.

    Nearest-frame resampling never blends a present hand with a missing one; a sequence is
    never stretched (the model masks what is missing instead). One gather covers both cases,
    so no conditional op reaches the TFLite graph.
    """
    n = tf.shape(x)[0]
    length = tf.minimum(n, max_frames)
    stride = tf.cast(n, tf.float32) / tf.cast(tf.maximum(length, 1), tf.float32)
    index = tf.cast((tf.cast(tf.range(length), tf.float32) + 0.5) * stride, tf.int32)
    return tf.gather(x, tf.minimum(index, tf.maximum(n - 1, 0)))


def pad_to(x: tf.Tensor, length: int | tf.Tensor, fill: float = 0.0) -> tf.Tensor:
    """[T, ...] padded at the end with `fill` to [max(T, length), ...].

    A concatenation rather than tf.pad: the TFLite converter infers shapes anew, and only this way does it
    keep the other sizes known (a convolution needs its channels).
    """
    missing = tf.maximum(length - tf.shape(x)[0], 0)
    filler = tf.fill(tf.concat([[missing], tf.shape(x)[1:]], axis=0), tf.constant(fill, x.dtype))
    return tf.concat([x, filler], axis=0)


def side_points(frames: tf.Tensor, max_frames: int, landmarks: LandmarkSet = DEFAULT_SET) -> tf.Tensor:
    """[T, C] -> [T', S, 3] dominant-side points of the frames where anything was detected, at most
    `max_frames` of them and at least one (a sequence where nothing was seen is one all-missing frame)."""
    return shorten(dominant_side(at_least_one_frame(drop_empty_frames(frames)), landmarks), max_frames)


def preprocess_frames(frames: tf.Tensor, max_frames: int = 384, landmarks: LandmarkSet = DEFAULT_SET) -> tf.Tensor:
    """[T, C] raw selected columns (NaN where undetected) -> [T', 3 S] model input, 1 <= T' <= max_frames
    ([T', 78] for hands_arms).

    Length first, then normalisation: the arm's sequence statistics are those of the
    frames the model sees; missing points become 0.
    """
    return normalize(side_points(frames, max_frames, landmarks))


def side_features(landmarks: LandmarkSet) -> int:
    """Features per frame of our preprocessing: x, y, z of each dominant-side point."""
    return landmarks.n_side_points * 3


FrameFunction = Callable[[tf.Tensor, int, LandmarkSet], tf.Tensor]
FeatureCount = Callable[[LandmarkSet], int]

#: normalization name -> (frame function ([T, C], max_frames, landmark set) -> [T', dim] with
#: 1 <= T' <= max_frames, dim of a landmark set). "hand" is ours; benchmarks register other recipes
#: (bench/seed_recipe.py registers the seed notebook's).
_NORMALIZATIONS: dict[str, tuple[FrameFunction, FeatureCount]] = {"hand": (preprocess_frames, side_features)}


def register_normalization(name: str, function: FrameFunction, dim: FeatureCount) -> None:
    """Make `normalization=name` in a config run `function` (used by tf.data and the export alike);
    `dim` gives its features per frame for a landmark set (raising ConfigError for a set it cannot take)."""
    _NORMALIZATIONS[name] = (function, dim)


def _lookup(normalization: str) -> tuple[FrameFunction, FeatureCount]:
    if normalization not in _NORMALIZATIONS:
        raise ConfigError(f"normalization={normalization!r}: expected one of {sorted(_NORMALIZATIONS)}")
    return _NORMALIZATIONS[normalization]


def feature_dim(normalization: str, landmarks: LandmarkSet = DEFAULT_SET) -> int:
    """Features per frame that the named preprocessing produces from a landmark set."""
    return _lookup(normalization)[1](landmarks)


def at_least_one_frame(frames: tf.Tensor) -> tf.Tensor:
    """[T, C] -> [max(T, 1), C]: a sequence of 0 frames becomes one frame where nothing was detected (NaN).

    Kaggle's test data holds sequences of 0 frames, and the TFLite runtime of its 2023 grader
    (tflite-runtime 2.14.0) kills the whole process with SIGFPE on the 0-length tensors such a
    sequence makes inside the graph; one all-missing frame is what "nothing seen" means anyway.
    """
    return pad_to(frames, 1, fill=math.nan)


def model_input(frames: tf.Tensor, max_frames: int, normalization: str, padding_mask: bool = True,
                landmarks: LandmarkSet = DEFAULT_SET) -> tf.Tensor:
    """The frame preprocessing a config names: [T, C] (T may be 0) -> [T', feature_dim], T' <= max_frames.

    Without `padding_mask` (the seed's geometry) every sequence is padded with zeros to max_frames,
    and the model sees the padding as frames.
    """
    feature_dim(normalization, landmarks)  # a recipe that cannot take this set says so here
    x = _lookup(normalization)[0](at_least_one_frame(frames), max_frames, landmarks)
    return x if padding_mask else pad_to(x, max_frames)


#: Padded batches and the export pad frames to a multiple of this (rounded up to the subsampling):
#: a few shapes for XLA to compile, and padding that the model's mask makes invisible.
FRAME_BUCKET = 32


def padded_length(frames: int | tf.Tensor, subsampling: int, bucket: int = 1) -> tf.Tensor:
    """`frames` rounded up to a multiple of the subsampling (and of `bucket` frames, if larger)."""
    step = subsampling * max(1, -(-bucket // subsampling))
    return (frames + step - 1) // step * step


def pad_for_model(x: tf.Tensor, subsampling: int) -> tf.Tensor:
    """[T', F] features -> [T'', F] with NaN rows to a multiple of the subsampling: the model masks NaN
    rows, and a multiple of the stride keeps every strided convolution's "same" padding the same as in
    a padded batch."""
    return pad_to(x, padded_length(tf.shape(x)[0], subsampling), fill=math.nan)
