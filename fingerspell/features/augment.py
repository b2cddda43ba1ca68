"""Training-time augmentation of dominant-side points (before normalisation).

The set follows the 1st-place write-up of Kaggle's ASL Fingerspelling competition, where
each of these was worth about +0.005: speed changes (whole sequence and one window),
frame removal, time and space masks, affine with shear, flip through a landmark
symmetry map, finger / point / part drop, CutMix of two sequences of one signer, and
random decoder-input tokens. This is our own implementation in TF ops.

They act on raw image coordinates so a rotation really turns the hand, and NaN marks a
dropped point exactly as MediaPipe marks an undetected one (normalisation then treats
both alike). The temporal ones change a sequence's length and run per sequence
([T, P, 3]); the spatial ones run on whole batches ([B, T, P, 3]) with parameters drawn
per sequence, because a few batched ops cost far less CPU than many small per-sequence
ones (the input pipeline shares the CPU with training). Padding frames of a batch are
all NaN and stay NaN: every spatial augmentation either maps NaN to NaN or only blanks.

Every augmentation applies to each sequence independently with its config probability
`cfg.aug_*_p`: per sequence through `apply_with_p` (a `tf.cond`), per batch through
`apply_each_with_p` (the augmented batch is chosen per sequence with `tf.where`).
Functions that know where points are take the layout as arguments, defaulting to
the 26 dominant-side points of `hands_arms` (`DEFAULT_LAYOUT`); `layout_for` gives any
landmark set's layout.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import tensorflow as tf

from fingerspell.config import Config
from fingerspell.data import vocab
from fingerspell.data.schema import HANDS_ARMS, N_HAND_POINTS, LandmarkSet

# Points of each finger on MediaPipe's hand (thumb, index, middle, ring, pinky); the wrist is 0.
FINGERS = ((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17, 18, 19, 20))


@dataclass(frozen=True)
class PointLayout:
    """Where the points of one frame are, for the augmentations that treat points differently.

    hand: indices of the hand points (single points may be dropped);
    fingers: index groups dropped together in a window of frames;
    parts: non-hand index groups that may be dropped whole (today the arm; face parts later);
    symmetry: symmetry[i] is the point that point i becomes in a left-right mirror image
    (an involution over all points, so mirroring twice is the identity).
    """

    hand: tuple[int, ...]
    fingers: tuple[tuple[int, ...], ...]
    parts: tuple[tuple[int, ...], ...]
    symmetry: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.symmetry)
        if sorted(self.symmetry) != list(range(n)):
            raise ValueError(f"symmetry {self.symmetry}: expected a permutation of 0..{n - 1}")
        if any(self.symmetry[j] != i for i, j in enumerate(self.symmetry)):
            raise ValueError(f"symmetry {self.symmetry}: mirroring twice must give every point back")
        groups = [self.hand, *self.fingers, *self.parts]
        if any(not 0 <= i < n for group in groups for i in group) or not all(groups):
            raise ValueError(f"hand, fingers and parts must be non-empty groups of point indices in 0..{n - 1}")

    @property
    def n_points(self) -> int:
        return len(self.symmetry)


def layout_for(landmarks: LandmarkSet) -> PointLayout:
    """The layout of a landmark set's dominant-side points (`LandmarkSet.side`): the hand first, then
    each context group as a part.

    The symmetry keeps every hand point in place (a mirrored right hand is a left hand with the same
    MediaPipe point numbers, and the model reads it where the hand is) and swaps the context points
    whose mirror images are context points too (the two eyes, the two arms); a point whose mirror image
    is not among them (the arm of `hands_arms`, whose other side is not read) stays in place.
    """
    side = landmarks.side
    where = {k: j for j, k in enumerate(side)}
    symmetry = []
    for j, k in enumerate(side):
        partner = where.get(landmarks.symmetry[k], j)
        symmetry.append(j if j < N_HAND_POINTS or partner < N_HAND_POINTS else partner)
    return PointLayout(
        hand=tuple(range(N_HAND_POINTS)),
        fingers=FINGERS,
        parts=tuple(tuple(where[landmarks.index[p]] for p in group) for _, group in landmarks.context),
        symmetry=tuple(symmetry),
    )


#: The dominant-side points of `hands_arms`: hand 0-20, then the side's 5 arm pose points (one part);
#: the symmetry is the identity.
DEFAULT_LAYOUT = layout_for(HANDS_ARMS)

#: Share of a sequence's frames that window_speed / drop_finger_window act on.
WINDOW_SHARE = (0.1, 0.5)
#: Side of space_mask's box, as a share of the sequence's x-y extent.
BOX_SHARE = (0.1, 0.3)
#: Range of the CutMix fraction: both sequences keep a fair part.
CUTMIX_FRACTION = (0.2, 0.8)
#: Longest phrase the targets hold: `<` + phrase + `>` in vocab.MAX_TARGET_LEN tokens.
MAX_CHARS = vocab.MAX_TARGET_LEN - 2

#: Augmentation name -> its probability field in Config, in the order they run.
TEMPORAL = {"speed": "aug_speed_p", "window_speed": "aug_window_speed_p", "frame_drop": "aug_frame_drop_p",
            "time_mask": "aug_time_mask_p"}
SPATIAL = {"flip": "aug_flip_p", "affine": "aug_affine_p", "point_drop": "aug_point_drop_p",
           "finger_drop": "aug_finger_drop_p", "part_drop": "aug_part_drop_p", "space_mask": "aug_space_mask_p"}
PAIRED = {"cutmix": "aug_cutmix_p"}
TOKENS = {"token_mask": "aug_token_mask_p"}
#: Every augmentation, name -> probability field.
PROBABILITIES = {**TEMPORAL, **SPATIAL, **PAIRED, **TOKENS}


def enabled(cfg: Config, names: Iterable[str] | None = None) -> list[str]:
    """Config fields (`aug_*_p`) of the augmentations with probability > 0, among `names` (default: all).

    Field names rather than short names, so a message can say what to set to 0.
    """
    names = PROBABILITIES if names is None else names
    return [PROBABILITIES[n] for n in names if getattr(cfg, PROBABILITIES[n]) > 0]


def any_enabled(cfg: Config, names: Iterable[str] | None = None) -> bool:
    return bool(enabled(cfg, names))


#: Every function here is plain TF ops whose only Python branches test Python values (a probability,
#: a layout), so AutoGraph has nothing to convert; marking them spares the seconds its conversion
#: takes when a `Dataset.map` is built. Rates, ranges and layouts must therefore be Python values.
_plain_ops = tf.autograph.experimental.do_not_convert


# --- helpers ------------------------------------------------------------------------------------

def _blank(points: tf.Tensor, where: tf.Tensor) -> tf.Tensor:
    return tf.where(where, tf.constant(math.nan, points.dtype), points)


def _is_nan(x: tf.Tensor) -> tf.Tensor:
    return tf.math.is_nan(x)


def _round_int(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.round(x), tf.int32)


def _group_masks(groups: Sequence[Sequence[int]], n_points: tf.Tensor) -> tf.Tensor:
    """[G, P] bool: which points belong to each group (groups may differ in size)."""
    width = max(len(g) for g in groups)
    index = tf.constant([list(g) + [-1] * (width - len(g)) for g in groups], tf.int32)  # -1: one_hot gives 0
    return tf.reduce_any(tf.one_hot(index, n_points, on_value=True, off_value=False, dtype=tf.bool), axis=1)


def _lengths(points: tf.Tensor) -> tf.Tensor:
    """[B, T, P, 3] -> [B]: frames up to the last one where anything was seen (padding follows it)."""
    seen = tf.reduce_any(tf.logical_not(_is_nan(points)), axis=[2, 3])  # [B, T]
    frame = tf.range(1, tf.shape(points)[1] + 1)
    return tf.reduce_max(tf.where(seen, frame[None, :], 0), axis=1)


@_plain_ops
def apply_with_p(points: tf.Tensor, p: float, function: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """`function(points)` with probability p, else `points` (one sequence; shapes may differ).

    A p of 0 or 1 is decided in Python, so a switched-off augmentation adds no op at all.
    """
    if p <= 0:
        return points
    if p >= 1:
        return function(points)
    return tf.cond(tf.random.uniform([]) < p, lambda: function(points), lambda: points)


@_plain_ops
def apply_each_with_p(points: tf.Tensor, p: float, function: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Per sequence of a batch: `function(points)[b]` with probability p, else `points[b]`.

    The whole batch is augmented and each sequence picks its version: one batched op
    instead of a branch per sequence (cheap: a batch of points is small).
    """
    if p <= 0:
        return points
    augmented = function(points)
    if p >= 1:
        return augmented
    chosen = tf.random.uniform([tf.shape(points)[0]]) < p
    return tf.where(tf.reshape(chosen, [-1] + [1] * (len(points.shape) - 1)), augmented, points)


# --- per sequence: [T, P, 3] --------------------------------------------------------------------

@_plain_ops
def resample_at_speed(points: tf.Tensor, speed: tf.Tensor) -> tf.Tensor:
    """The sequence played `speed` times as fast, by nearest frames (0 frames stay 0, else at least 1).

    Nearest frames, not interpolation: a blend of a present and a missing hand would be NaN,
    and a blend of two hand shapes is a shape nobody signed.
    """
    n = tf.shape(points)[0]
    speed = tf.cast(speed, tf.float32)
    new_n = tf.where(n > 0, tf.maximum(_round_int(tf.cast(n, tf.float32) / speed), 1), 0)
    index = tf.cast((tf.range(new_n, dtype=tf.float32) + 0.5) * speed, tf.int32)
    return tf.gather(points, tf.minimum(index, tf.maximum(n - 1, 0)))


@_plain_ops
def resample_speed(points: tf.Tensor, low: float, high: float) -> tf.Tensor:
    """Play the whole sequence at a random speed in [low, high] (0.5 -> twice the frames).

    Signers spell at very different speeds; the model should read the hand shapes, not the tempo.
    """
    return resample_at_speed(points, tf.random.uniform([], low, high))


@_plain_ops
def window_speed(points: tf.Tensor, low: float, high: float, share: tuple[float, float] = WINDOW_SHARE) -> tf.Tensor:
    """Change the speed of one random window (a `share` of the frames) only.

    Within one phrase, signers linger on some letters and rush others: a local tempo change
    teaches the model that letters have no fixed duration.
    """
    n = tf.shape(points)[0]
    width = tf.minimum(tf.maximum(_round_int(tf.cast(n, tf.float32) * tf.random.uniform([], *share)), 1), n)
    start = tf.random.uniform([], 0, tf.maximum(n - width + 1, 1), dtype=tf.int32)
    window = resample_speed(points[start:start + width], low, high)
    return tf.concat([points[:start], window, points[start + width:]], axis=0)


@_plain_ops
def drop_frames(points: tf.Tensor, rate: float) -> tf.Tensor:
    """Remove round(rate * T) random frames (at most T - 1), keeping the others' order.

    MediaPipe and cameras skip frames; recordings also differ in frame rate.
    """
    n = tf.shape(points)[0]
    n_drop = tf.minimum(_round_int(tf.cast(n, tf.float32) * rate), tf.maximum(n - 1, 0))
    keep = tf.sort(tf.random.shuffle(tf.range(n))[: n - n_drop])
    return tf.gather(points, keep)


@_plain_ops
def time_mask(points: tf.Tensor, max_share: float) -> tf.Tensor:
    """Blank (NaN) one random span of 1 to max(1, max_share * T) frames, never every frame.

    Hands leave the view or go undetected for a while; the decoder must bridge such gaps
    from context rather than rely on every letter being seen.
    """
    if max_share <= 0:
        return points
    n = tf.shape(points)[0]
    longest = tf.maximum(tf.cast(tf.cast(n, tf.float32) * max_share, tf.int32), 1)
    span = tf.minimum(tf.random.uniform([], 1, longest + 1, dtype=tf.int32), tf.maximum(n - 1, 0))
    start = tf.random.uniform([], 0, tf.maximum(n - span + 1, 1), dtype=tf.int32)
    frame = tf.range(n)
    inside = tf.logical_and(frame >= start, frame < start + span)
    return _blank(points, tf.reshape(inside, [-1] + [1] * (len(points.shape) - 1)))


@_plain_ops
def temporal(points: tf.Tensor, cfg: Config) -> tf.Tensor:
    """The per-sequence augmentations, each with its probability: speed, window speed, frame drop, time mask."""
    points = apply_with_p(points, cfg.aug_speed_p, lambda x: resample_speed(x, cfg.aug_speed_min, cfg.aug_speed_max))
    points = apply_with_p(points, cfg.aug_window_speed_p,
                          lambda x: window_speed(x, cfg.aug_speed_min, cfg.aug_speed_max))
    points = apply_with_p(points, cfg.aug_frame_drop_p, lambda x: drop_frames(x, cfg.aug_frame_drop_rate))
    return apply_with_p(points, cfg.aug_time_mask_p, lambda x: time_mask(x, cfg.aug_time_mask_max))


# --- two sequences of one signer ----------------------------------------------------------------

@_plain_ops
def splice(points_a: tf.Tensor, phrase_a: tf.Tensor, points_b: tf.Tensor, phrase_b: tf.Tensor,
           fraction: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """a's first round(f * T_a) frames + b's frames from round(f * T_b); the phrases cut alike.

    f = 1 gives a back unchanged, f = 0 gives b. Never 0 frames when a has frames.
    """
    f = tf.cast(fraction, tf.float32)
    n_a, n_b = tf.shape(points_a)[0], tf.shape(points_b)[0]
    cut_a = _round_int(f * tf.cast(n_a, tf.float32))
    cut_b = _round_int(f * tf.cast(n_b, tf.float32))
    cut_a = tf.minimum(tf.maximum(cut_a, 1 - (n_b - cut_b)), n_a)  # at least one frame in all
    len_a = tf.strings.length(phrase_a)  # bytes, as pipeline.tokenize splits phrases (the map is ASCII)
    len_b = tf.strings.length(phrase_b)
    chars_a = _round_int(f * tf.cast(len_a, tf.float32))
    chars_b = _round_int(f * tf.cast(len_b, tf.float32))
    points = tf.concat([points_a[:cut_a], points_b[cut_b:]], axis=0)
    phrase = tf.strings.substr(phrase_a, 0, chars_a) + tf.strings.substr(phrase_b, chars_b, len_b - chars_b)
    return points, phrase


@_plain_ops
def fitting_fraction(fraction: tf.Tensor, len_a: tf.Tensor, len_b: tf.Tensor, max_chars: int) -> tf.Tensor:
    """`fraction`, or the nearest one whose spliced phrase has at most `max_chars` characters.

    The spliced length is round(f*a) + b - round(f*b) <= f*(a - b) + b + 1, so moving f
    towards the shorter phrase until that bound fits always fits; when no f in [0, 1] does,
    f = 1 (a unchanged).
    """
    f = tf.cast(fraction, tf.float32)
    a, b = tf.cast(len_a, tf.float32), tf.cast(len_b, tf.float32)
    length = tf.round(f * a) + b - tf.round(f * b)
    room = float(max_chars) - 1.0 - b
    difference = a - b
    safe = tf.where(tf.equal(difference, 0.0), 1.0, difference)
    bound = room / safe  # a longer: f <= bound; b longer: f >= bound
    clipped = tf.where(difference > 0, tf.minimum(f, bound), tf.maximum(f, bound))
    clipped = tf.where(tf.logical_and(clipped >= 0.0, clipped <= 1.0), clipped, 1.0)
    return tf.where(length <= float(max_chars), f, clipped)


@_plain_ops
def cutmix(points_a: tf.Tensor, phrase_a: tf.Tensor, points_b: tf.Tensor, phrase_b: tf.Tensor,
           max_chars: int = MAX_CHARS, fraction: float | tf.Tensor | None = None,
           fraction_range: tuple[float, float] = CUTMIX_FRACTION) -> tuple[tf.Tensor, tf.Tensor]:
    """(points, phrase): the first fraction f of a's frames and characters, then the rest of b's.

    Sequences of one signer (the caller pairs them) share hands, camera and pace, so the
    splice looks like one recording and its phrase is about what was signed: a new
    phrase from seen material. f is drawn from `fraction_range` unless given, then
    clipped so the phrase has at most `max_chars` characters.
    """
    f = tf.random.uniform([], *fraction_range) if fraction is None else tf.cast(fraction, tf.float32)
    f = fitting_fraction(f, tf.strings.length(phrase_a), tf.strings.length(phrase_b), max_chars)
    return splice(points_a, phrase_a, points_b, phrase_b, f)


@_plain_ops
def should_cutmix(cfg: Config) -> tf.Tensor:
    """A scalar bool drawn with probability `cfg.aug_cutmix_p`."""
    return tf.random.uniform([]) < cfg.aug_cutmix_p


@_plain_ops
def maybe_cutmix(points_a: tf.Tensor, phrase_a: tf.Tensor, points_b: tf.Tensor, phrase_b: tf.Tensor,
                 cfg: Config) -> tuple[tf.Tensor, tf.Tensor]:
    """`cutmix` with probability `cfg.aug_cutmix_p`, else (points_a, phrase_a), without a branch (f = 1)."""
    if cfg.aug_cutmix_p <= 0:
        return points_a, phrase_a
    f = tf.where(should_cutmix(cfg), tf.random.uniform([], *CUTMIX_FRACTION), 1.0)
    f = fitting_fraction(f, tf.strings.length(phrase_a), tf.strings.length(phrase_b), cfg.max_target_len - 2)
    return splice(points_a, phrase_a, points_b, phrase_b, f)


# --- per batch: [B, T, P, 3], parameters drawn per sequence ---------------------------------------

@_plain_ops
def transform(points: tf.Tensor, matrix: tf.Tensor, offset: tf.Tensor, z_scale: tf.Tensor) -> tf.Tensor:
    """x-y' = matrix @ (x-y - centre) + centre + offset per sequence (centre: its mean x-y); z' = z * z_scale.

    matrix [B, 2, 2], offset [B, 2], z_scale [B]. NaN points stay NaN.
    """
    xy = points[..., :2]
    valid = tf.logical_not(_is_nan(xy))
    centre = tf.reduce_sum(tf.where(valid, xy, 0.0), axis=[1, 2], keepdims=True) / tf.maximum(
        tf.reduce_sum(tf.cast(valid, points.dtype), axis=[1, 2], keepdims=True), 1.0)
    xy = tf.einsum("btpc,bdc->btpd", xy - centre, matrix) + centre + offset[:, None, None, :]
    return tf.concat([xy, points[..., 2:] * z_scale[:, None, None, None]], axis=-1)


@_plain_ops
def affine(points: tf.Tensor, scale: float, degrees: float, shear: float = 0.0, shift: float = 0.0) -> tf.Tensor:
    """Scale (1 +- scale), rotate (+- degrees), shear (x by y and y by x, +- shear) and shift (+- shift)
    each sequence's points about their mean x-y; z is scaled with x-y.

    Cameras sit at other distances and angles, and hands are of other sizes; shear covers
    the perspective of a hand turned a little towards or away from the camera.
    """
    batch = tf.shape(points)[0]
    angle = tf.random.uniform([batch], -degrees, degrees) * (math.pi / 180.0)
    factor = tf.random.uniform([batch], 1.0 - scale, 1.0 + scale)
    shear_x = tf.random.uniform([batch], -shear, shear)
    shear_y = tf.random.uniform([batch], -shear, shear)
    offset = tf.random.uniform([batch, 2], -shift, shift)
    cos, sin, one = tf.cos(angle), tf.sin(angle), tf.ones([batch])
    rotation = tf.reshape(tf.stack([cos, -sin, sin, cos], axis=-1), [batch, 2, 2])
    shearing = tf.reshape(tf.stack([one, shear_x, shear_y, one], axis=-1), [batch, 2, 2])
    matrix = factor[:, None, None] * tf.matmul(rotation, shearing)
    return transform(points, matrix, offset, factor)


@_plain_ops
def flip(points: tf.Tensor, symmetry: Sequence[int] = DEFAULT_LAYOUT.symmetry) -> tf.Tensor:
    """Mirror left-right: x -> 1 - x, and point i takes the place of its mirror image symmetry[i].

    A mirrored signer is a left-handed one; with both sides among the points the symmetry
    map swaps their indices so a left hand lands where a right hand is expected.
    """
    mirrored = points * tf.constant([-1.0, 1.0, 1.0], points.dtype) + tf.constant([1.0, 0.0, 0.0], points.dtype)
    return tf.gather(mirrored, tf.constant(list(symmetry), tf.int32), axis=-2)


@_plain_ops
def drop_points(points: tf.Tensor, rate: float, hand: Sequence[int] = DEFAULT_LAYOUT.hand) -> tf.Tensor:
    """Blank each of the `hand` points with probability `rate`, in every frame of the sequence.

    MediaPipe misses occluded points; the model should read a letter from the others.
    """
    batch, n_points = tf.shape(points)[0], tf.shape(points)[2]
    in_hand = _group_masks([hand], n_points)[0]
    drop = tf.logical_and(tf.random.uniform([batch, n_points]) < rate, in_hand[None, :])
    return _blank(points, drop[:, None, :, None])


@_plain_ops
def drop_finger_window(points: tf.Tensor, fingers: Sequence[Sequence[int]] = DEFAULT_LAYOUT.fingers,
                       share: tuple[float, float] = WINDOW_SHARE) -> tf.Tensor:
    """Blank one random finger in one random window (a `share` of the sequence's frames).

    A finger hidden behind the others for a few letters is the commonest detection
    failure; the model must not depend on any single finger.
    """
    batch, n_frames = tf.shape(points)[0], tf.shape(points)[1]
    lengths = tf.cast(_lengths(points), tf.float32)
    width = tf.maximum(_round_int(lengths * tf.random.uniform([batch], *share)), 1)
    room = tf.maximum(_round_int(lengths) - width + 1, 1)
    start = tf.minimum(tf.cast(tf.random.uniform([batch]) * tf.cast(room, tf.float32), tf.int32), room - 1)
    frame = tf.range(n_frames)[None, :]
    in_window = tf.logical_and(frame >= start[:, None], frame < (start + width)[:, None])  # [B, T]
    finger = tf.random.uniform([batch], 0, len(fingers), dtype=tf.int32)
    in_finger = tf.gather(_group_masks(fingers, tf.shape(points)[2]), finger)  # [B, P]
    return _blank(points, tf.logical_and(in_window[:, :, None, None], in_finger[:, None, :, None]))


@_plain_ops
def drop_part(points: tf.Tensor, parts: Sequence[Sequence[int]] = DEFAULT_LAYOUT.parts) -> tf.Tensor:
    """Blank one random non-hand part (its points in every frame).

    The pose or face models fail on their own (sleeves, the frame's edge); the hand alone
    must still be read.
    """
    if not parts:
        return points
    part = tf.random.uniform([tf.shape(points)[0]], 0, len(parts), dtype=tf.int32)
    in_part = tf.gather(_group_masks(parts, tf.shape(points)[2]), part)  # [B, P]
    return _blank(points, in_part[:, None, :, None])


@_plain_ops
def space_mask(points: tf.Tensor, share: tuple[float, float] = BOX_SHARE) -> tf.Tensor:
    """Blank the points inside one random axis-aligned box of image x-y, in every frame.

    Each side of the box is a `share` of the sequence's x-y extent, and the box lies
    within that extent: points at the edge of the view or behind an object go missing together.
    """
    batch = tf.shape(points)[0]
    xy = points[..., :2]
    valid = tf.logical_not(tf.reduce_any(_is_nan(xy), axis=-1, keepdims=True))  # [B, T, P, 1]
    low = tf.reduce_min(tf.where(valid, xy, math.inf), axis=[1, 2], keepdims=True)  # [B, 1, 1, 2]
    high = tf.reduce_max(tf.where(valid, xy, -math.inf), axis=[1, 2], keepdims=True)
    seen = tf.reduce_any(valid, axis=[1, 2], keepdims=True)
    low, high = tf.where(seen, low, 0.0), tf.where(seen, high, 0.0)
    size = (high - low) * tf.random.uniform([batch, 1, 1, 2], *share)
    corner = low + (high - low - size) * tf.random.uniform([batch, 1, 1, 2])
    inside = tf.reduce_all(tf.logical_and(xy >= corner, xy <= corner + size), axis=-1, keepdims=True)
    return _blank(points, tf.logical_and(inside, seen))


@_plain_ops
def spatial(points: tf.Tensor, cfg: Config, layout: PointLayout | None = None) -> tf.Tensor:
    """The per-batch augmentations, each per sequence with its probability: flip, affine, point drop,
    finger window drop, part drop, space mask. `layout`: default, that of the config's landmark set."""
    layout = layout or layout_for(cfg.landmark_set)
    points = apply_each_with_p(points, cfg.aug_flip_p, lambda x: flip(x, layout.symmetry))
    points = apply_each_with_p(points, cfg.aug_affine_p, lambda x: affine(
        x, cfg.aug_scale, cfg.aug_rotate_degrees, cfg.aug_shear, cfg.aug_shift))
    points = apply_each_with_p(points, cfg.aug_point_drop_p,
                               lambda x: drop_points(x, cfg.aug_point_drop_rate, layout.hand))
    points = apply_each_with_p(points, cfg.aug_finger_drop_p, lambda x: drop_finger_window(x, layout.fingers))
    points = apply_each_with_p(points, cfg.aug_part_drop_p, lambda x: drop_part(x, layout.parts))
    return apply_each_with_p(points, cfg.aug_space_mask_p, space_mask)


# --- decoder input: [B, L] token ids ------------------------------------------------------------

@_plain_ops
def mask_tokens(dec_in: tf.Tensor, rate: float) -> tf.Tensor:
    """Replace each character token (not START, PAD or END) with probability `rate` by another character.

    Teacher forcing feeds the decoder the true previous characters, so it learns to lean
    on its language model; wrong inputs make it read the frames as well. The replacement
    always differs from the original, so `rate` is the share of characters changed.
    """
    if rate <= 0:
        return dec_in
    dec_in = tf.convert_to_tensor(dec_in)
    is_char = tf.logical_and(dec_in >= 0, dec_in < vocab.N_CHARS)
    replace = tf.logical_and(is_char, tf.random.uniform(tf.shape(dec_in)) < rate)
    other = tf.random.uniform(tf.shape(dec_in), 0, vocab.N_CHARS - 1, dtype=tf.int32)
    other = tf.cast(other, dec_in.dtype)
    other = other + tf.cast(other >= dec_in, dec_in.dtype)  # skip the original: N_CHARS - 1 others
    return tf.where(replace, other, dec_in)


@_plain_ops
def tokens(dec_in: tf.Tensor, cfg: Config) -> tf.Tensor:
    """Decoder-input token masking at rate `cfg.aug_token_mask_p` (the share of characters replaced)."""
    return mask_tokens(dec_in, cfg.aug_token_mask_p)
