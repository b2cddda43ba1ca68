"""Augmentation: each one's exact effect on a small known input, its probability, and padding.

Random draws are seeded and the assertions are properties that hold for every draw
(lengths, which points are blank, where a point goes), so no test depends on luck.
"""
import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from fingerspell.config import Config
from fingerspell.data import vocab
from fingerspell.features import augment
from fingerspell.features.augment import DEFAULT_LAYOUT, FINGERS, PointLayout

P = DEFAULT_LAYOUT.n_points  # 26
ARM = DEFAULT_LAYOUT.parts[0]


def numbered(n_frames: int, offset: float = 0.0) -> tf.Tensor:
    """[T, 26, 3] points whose every coordinate is its frame number (+ offset): frames are recognisable."""
    return tf.constant(np.broadcast_to(np.arange(n_frames, dtype=np.float32)[:, None, None] + offset, (n_frames, P, 3)))


def frame_ids(points) -> np.ndarray:
    return np.asarray(points)[:, 0, 0]


def random_batch(batch: int, frames: int, padding: int = 0, seed: int = 0) -> tf.Tensor:
    """[B, frames + padding, 26, 3] points in the image, with `padding` all-NaN frames at the end."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0.2, 0.8, size=(batch, frames + padding, P, 3)).astype(np.float32)
    points[:, frames:] = np.nan
    return tf.constant(points)


def config(**probabilities) -> Config:
    """A config with every augmentation off except the probabilities given (short names: speed=1.0)."""
    values = {field: 0.0 for field in augment.PROBABILITIES.values()}
    values.update({augment.PROBABILITIES[name]: p for name, p in probabilities.items()})
    return dataclasses.replace(Config(), **values)


def blank(points) -> np.ndarray:
    return np.isnan(np.asarray(points))


# --- layout and switches --------------------------------------------------------------------------

def test_default_layout_is_todays_26_points():
    assert DEFAULT_LAYOUT.n_points == 26
    assert DEFAULT_LAYOUT.hand == tuple(range(21)) and DEFAULT_LAYOUT.fingers == FINGERS
    assert DEFAULT_LAYOUT.parts == (tuple(range(21, 26)),)
    assert DEFAULT_LAYOUT.symmetry == tuple(range(26))
    with pytest.raises(ValueError, match="permutation"):
        PointLayout(hand=(0,), fingers=((0,),), parts=(), symmetry=(0, 0))
    with pytest.raises(ValueError, match="twice"):
        PointLayout(hand=(0,), fingers=((0,),), parts=(), symmetry=(1, 2, 0))
    with pytest.raises(ValueError, match="indices"):
        PointLayout(hand=(0, 5), fingers=((0,),), parts=(), symmetry=(1, 0))


def test_enabled_names_the_probabilities_above_zero():
    cfg = config()
    assert augment.enabled(cfg) == [] and not augment.any_enabled(cfg)
    cfg = config(speed=0.5, token_mask=0.2)
    assert augment.enabled(cfg) == ["aug_speed_p", "aug_token_mask_p"] and augment.any_enabled(cfg)
    assert augment.enabled(cfg, augment.SPATIAL) == [] and augment.enabled(cfg, augment.TEMPORAL) == ["aug_speed_p"]
    fields = {f.name for f in dataclasses.fields(Config) if f.name.startswith("aug_") and f.name.endswith("_p")}
    assert set(augment.PROBABILITIES.values()) == fields, "every probability of the config has its augmentation"


def test_all_probabilities_zero_is_the_identity():
    cfg = config()
    points, batch = numbered(12), random_batch(3, 10, padding=2)
    dec_in = tf.constant([[vocab.START, 1, 2, 3, vocab.END, vocab.PAD]])
    np.testing.assert_array_equal(augment.temporal(points, cfg), points)
    np.testing.assert_array_equal(augment.spatial(batch, cfg), batch)
    np.testing.assert_array_equal(augment.tokens(dec_in, cfg), dec_in)
    cut, phrase = augment.maybe_cutmix(points, tf.constant("abcd"), numbered(20, 100), tf.constant("wxyz"), cfg)
    np.testing.assert_array_equal(cut, points)
    assert phrase.numpy() == b"abcd"


def test_batch_probabilities_choose_per_sequence():
    tf.random.set_seed(3)
    batch = random_batch(64, 4)
    out = augment.apply_each_with_p(batch, 0.5, lambda x: x + 1.0).numpy()
    shifted = np.all(out == batch.numpy() + 1.0, axis=(1, 2, 3))
    kept = np.all(out == batch.numpy(), axis=(1, 2, 3))
    assert (shifted ^ kept).all(), "each sequence is whole: augmented or untouched"
    assert 0 < shifted.sum() < 64
    np.testing.assert_array_equal(augment.apply_each_with_p(batch, 1.0, lambda x: x + 1.0), batch + 1.0)
    np.testing.assert_array_equal(augment.apply_with_p(numbered(3), 1.0, lambda x: x[:1]), numbered(1))


# --- per sequence -----------------------------------------------------------------------------

def test_resample_speed_at_fixed_factors():
    doubled = augment.resample_speed(numbered(7), 0.5, 0.5)
    np.testing.assert_array_equal(frame_ids(doubled), np.repeat(np.arange(7), 2))
    halved = augment.resample_speed(numbered(10), 2.0, 2.0)
    np.testing.assert_array_equal(frame_ids(halved), [1, 3, 5, 7, 9])
    assert augment.resample_speed(numbered(1), 2.0, 2.0).shape[0] == 1, "never 0 frames"
    assert augment.resample_speed(numbered(0), 0.5, 0.5).shape[0] == 0
    assert augment.temporal(numbered(7), dataclasses.replace(config(speed=1.0), aug_speed_min=0.5,
                                                             aug_speed_max=0.5)).shape[0] == 14


def test_window_speed_stretches_one_window_only():
    tf.random.set_seed(4)
    for _ in range(5):
        ids = frame_ids(augment.window_speed(numbered(20), 0.5, 0.5)).astype(int)
        counts = np.bincount(ids, minlength=20)
        assert (np.diff(ids) >= 0).all() and (counts >= 1).all(), "order kept, no frame lost"
        doubled = np.flatnonzero(counts == 2)
        assert set(counts) <= {1, 2} and 2 <= len(doubled) <= 10, "10-50% of 20 frames"
        assert (np.diff(doubled) == 1).all(), "one contiguous window"
        assert len(ids) == 20 + len(doubled)
    fixed = frame_ids(augment.window_speed(numbered(20), 0.5, 0.5, share=(0.25, 0.25))).astype(int)
    assert len(fixed) == 25 and (np.bincount(fixed) == 2).sum() == 5


def test_drop_frames_removes_the_share_and_keeps_order():
    tf.random.set_seed(5)
    ids = frame_ids(augment.drop_frames(numbered(10), 0.5))
    assert len(ids) == 5 and (np.diff(ids) > 0).all() and set(ids) <= set(range(10))
    assert augment.drop_frames(numbered(3), 0.99).shape[0] == 1, "never all frames"
    np.testing.assert_array_equal(augment.drop_frames(numbered(6), 0.0), numbered(6))


def test_time_mask_blanks_one_span_of_whole_frames():
    tf.random.set_seed(6)
    for _ in range(5):
        out = augment.time_mask(numbered(20), 0.3).numpy()
        frames = blank(out).all(axis=(1, 2))
        assert (blank(out).any(axis=(1, 2)) == frames).all(), "whole frames"
        span = np.flatnonzero(frames)
        assert 1 <= len(span) <= 6 and (np.diff(span) == 1).all()
        np.testing.assert_array_equal(out[~frames], numbered(20).numpy()[~frames])
    assert not blank(augment.time_mask(numbered(1), 0.5)).any(), "never every frame"


# --- cutmix -----------------------------------------------------------------------------------

def split_cutmix(points, phrase) -> tuple[int, int, int, int]:
    """(a's frames kept, b's first frame kept, a's characters kept, b's first character kept)."""
    ids = frame_ids(points)
    from_a = ids < 100
    assert (np.diff(ids) > 0).all() and (from_a[:-1] >= from_a[1:]).all(), "a's frames, then b's"
    phrase = phrase.numpy().decode()
    chars_a = sum(c in "abcd" for c in phrase)
    assert phrase == "abcd"[:chars_a] + "wxyz"[4 - (len(phrase) - chars_a):]
    first_b = int(ids[~from_a][0]) - 100 if (~from_a).any() else 20
    return int(from_a.sum()), first_b, chars_a, 4 - (len(phrase) - chars_a)


def test_cutmix_splices_frames_and_phrases_at_one_fraction():
    a, b = numbered(10), numbered(20, 100)
    points, phrase = augment.cutmix(a, tf.constant("abcd"), b, tf.constant("wxyz"), fraction=0.5)
    np.testing.assert_array_equal(frame_ids(points), list(range(5)) + list(range(110, 120)))
    assert phrase.numpy() == b"abyz"
    tf.random.set_seed(7)
    grid = np.linspace(*augment.CUTMIX_FRACTION, 6001)
    for _ in range(10):
        cut_a, cut_b, chars_a, chars_b = split_cutmix(*augment.cutmix(a, tf.constant("abcd"), b, tf.constant("wxyz")))
        same = ((np.round(grid * 10) == cut_a) & (np.round(grid * 20) == cut_b)
                & (np.round(grid * 4) == chars_a) & (np.round(grid * 4) == chars_b))
        assert same.any(), f"no one fraction cuts at {cut_a}/10, {cut_b}/20 frames and {chars_a}/4 characters"


def test_cutmix_clips_the_phrase_to_max_chars():
    a, b = numbered(10), numbered(20, 100)
    _, phrase = augment.cutmix(a, tf.constant("abcdefghij"), b, tf.constant("wx"), max_chars=5, fraction=0.8)
    assert len(phrase.numpy()) <= 5 and phrase.numpy().startswith(b"ab")
    tf.random.set_seed(8)
    for _ in range(10):
        _, phrase = augment.cutmix(a, tf.constant("abcdefghij"), b, tf.constant("wx"), max_chars=6)
        assert len(phrase.numpy()) <= 6
    # no cut fits: a comes back unchanged
    points, phrase = augment.cutmix(a, tf.constant("abcd"), b, tf.constant("qrstuvwxyz"), max_chars=4, fraction=0.5)
    np.testing.assert_array_equal(points, a)
    assert phrase.numpy() == b"abcd"


def test_maybe_cutmix_with_probability_one_always_splices():
    cfg = config(cutmix=1.0)
    tf.random.set_seed(9)
    assert augment.should_cutmix(cfg).numpy() and not augment.should_cutmix(config()).numpy()
    for _ in range(3):
        points, phrase = augment.maybe_cutmix(numbered(10), tf.constant("abcd"), numbered(20, 100),
                                              tf.constant("wxyz"), cfg)
        cut_a, cut_b, chars_a, chars_b = split_cutmix(points, phrase)
        assert 0 < chars_a < 4 and 0 < cut_a < 10 and 0 < cut_b < 20


# --- per batch --------------------------------------------------------------------------------

def test_affine_shear_only_moves_points_to_their_sheared_position():
    d, c = 0.1, np.array([0.4, 0.6], np.float32)
    offsets = np.array([[d, 0], [0, d], [-d, 0], [0, -d], [d, d], [-d, -d]], np.float32)  # mean 0
    points = np.full((4, 3, P, 3), np.nan, np.float32)
    points[:, :, :6, :2] = c + offsets
    points[:, :, :6, 2] = 0.25
    tf.random.set_seed(10)
    out = augment.affine(tf.constant(points), scale=0.0, degrees=0.0, shear=0.2, shift=0.0).numpy()
    shear_x = (out[:, 0, 1, 0] - c[0]) / d  # (0, d) -> (shear_x * d, d)
    shear_y = (out[:, 0, 0, 1] - c[1]) / d  # (d, 0) -> (d, shear_y * d)
    assert (np.abs(shear_x) <= 0.2 + 1e-6).all() and (np.abs(shear_y) <= 0.2 + 1e-6).all()
    assert (shear_x != 0).any() and (shear_x != shear_y).any()
    expected = c + offsets @ np.stack([np.stack([np.ones(4), shear_y], -1), np.stack([shear_x, np.ones(4)], -1)], 1)
    np.testing.assert_allclose(out[:, :, :6, :2], np.broadcast_to(expected[:, None], (4, 3, 6, 2)), atol=1e-6)
    np.testing.assert_array_equal(out[..., 2], points[..., 2])  # z unchanged without scaling
    assert blank(out[:, :, 6:]).all(), "missing points stay missing"


def test_affine_scale_only_scales_about_the_mean_and_z_alike():
    batch = random_batch(4, 5)
    tf.random.set_seed(11)
    out = augment.affine(batch, scale=0.3, degrees=0.0).numpy()
    xy = batch.numpy()[..., :2]
    centre = xy.mean(axis=(1, 2), keepdims=True)
    factor = (out[..., 2] / batch.numpy()[..., 2]).reshape(4, -1)
    assert np.allclose(factor, factor[:, :1], rtol=1e-5) and (np.abs(factor - 1) <= 0.3 + 1e-5).all()
    np.testing.assert_allclose(out[..., :2], centre + (xy - centre) * factor[:, 0, None, None, None], atol=1e-5)


def test_flip_mirrors_x_through_the_symmetry_map():
    batch = random_batch(2, 4, padding=1)
    twice = augment.flip(augment.flip(batch))
    np.testing.assert_allclose(twice, batch, atol=1e-6)  # NaN compares equal here
    symmetry = (1, 0, 3, 2)  # two mirrored pairs of points
    points = batch[:, :, :4]
    out = augment.flip(points, symmetry).numpy()
    source = points.numpy()[:, :, list(symmetry)]
    np.testing.assert_allclose(out[..., 0], 1.0 - source[..., 0], atol=1e-6)
    np.testing.assert_array_equal(out[..., 1:], source[..., 1:])
    np.testing.assert_allclose(augment.flip(tf.constant(out), symmetry), points, atol=1e-6)


def test_drop_points_blanks_hand_points_in_every_frame():
    batch = random_batch(8, 5)
    tf.random.set_seed(12)
    out = blank(augment.drop_points(batch, 1.0))
    assert out[:, :, :21].all() and not out[:, :, 21:].any()
    np.testing.assert_array_equal(augment.drop_points(batch, 0.0), batch)
    out = blank(augment.drop_points(batch, 0.3, hand=(0, 1, 2)))
    assert (out.any(axis=(1, 3)) == out.all(axis=(1, 3))).all(), "a point is blank in every frame or none"
    assert not out[:, :, 3:].any() and out.any()


def test_drop_finger_window_blanks_one_finger_in_one_window():
    batch = random_batch(16, 20, padding=4)
    tf.random.set_seed(13)
    out = blank(augment.drop_finger_window(batch))[:, :20]
    for sequence in out:
        points = np.flatnonzero(sequence.any(axis=(0, 2)))
        assert tuple(points) in FINGERS, "exactly one finger's 4 points"
        frames = sequence[:, points].all(axis=(1, 2))
        assert (sequence.any(axis=(1, 2)) == frames).all(), "all 4 points in the same frames, nothing else"
        window = np.flatnonzero(frames)
        assert 2 <= len(window) <= 10 and (np.diff(window) == 1).all(), "one window of 10-50% of the frames"
    out = blank(augment.drop_finger_window(batch, share=(0.25, 0.25)))
    assert (out[:, :20].any(axis=(2, 3)).sum(axis=1) == 5).all(), "a quarter of 20 frames"
    assert (out[:, :20].sum(axis=(1, 2, 3)) == 5 * 4 * 3).all(), "5 frames x 4 points x 3 coordinates"


def test_drop_part_blanks_exactly_one_part():
    batch = random_batch(16, 5)
    tf.random.set_seed(14)
    out = blank(augment.drop_part(batch))
    assert out[:, :, list(ARM)].all() and not out[:, :, :21].any()
    parts = ((21, 22), (23, 24, 25))
    out = blank(augment.drop_part(batch, parts))
    seen = set()
    for sequence in out:
        dropped = tuple(np.flatnonzero(sequence.any(axis=(0, 2))))
        assert dropped in parts and sequence[:, list(dropped)].all()
        seen.add(dropped)
    assert seen == set(parts)


def test_space_mask_blanks_only_the_points_of_one_box():
    # Frame t holds all points near node t of a 12 x 12 grid: nodes 1/11 of the extent apart, so every
    # box of at least 10% of the extent per side holds a node's points, and something is blanked.
    nodes = np.stack(np.meshgrid(np.linspace(0.2, 0.8, 12), np.linspace(0.3, 0.7, 12)), -1).reshape(-1, 2)
    rng = np.random.default_rng(15)
    points = np.zeros((4, 145, P, 3), np.float32)
    points[:, :144, :, :2] = nodes[None, :, None, :] + rng.uniform(-0.002, 0.002, size=(4, 144, P, 2))
    points[:, 144] = np.nan  # padding
    tf.random.set_seed(15)
    out = augment.space_mask(tf.constant(points)).numpy()
    assert blank(out[:, 144]).all()
    for before, after in zip(points[:, :144], out[:, :144]):
        gone = blank(after).any(axis=-1)
        assert (blank(after).all(axis=-1) == gone).all() and gone.any()
        xy, kept = before[..., :2][gone], before[..., :2][~gone]
        low, high = xy.min(axis=0), xy.max(axis=0)
        extent = before[..., :2].reshape(-1, 2).max(axis=0) - before[..., :2].reshape(-1, 2).min(axis=0)
        assert (high - low <= 0.3 * extent + 1e-6).all()
        assert not np.all((kept >= low) & (kept <= high), axis=-1).any(), "no kept point inside the box"
        np.testing.assert_array_equal(after[~gone], before[~gone])


def test_padding_stays_nan_after_every_batch_augmentation():
    batch = random_batch(6, 8, padding=3)
    tf.random.set_seed(16)
    functions = {
        "flip": augment.flip,
        "affine": lambda x: augment.affine(x, 0.3, 30.0, 0.3, 0.1),
        "drop_points": lambda x: augment.drop_points(x, 0.5),
        "drop_finger_window": augment.drop_finger_window,
        "drop_part": augment.drop_part,
        "space_mask": augment.space_mask,
        "spatial": lambda x: augment.spatial(x, config(**{n: 1.0 for n in augment.SPATIAL})),
    }
    for name, function in functions.items():
        out = function(batch).numpy()
        assert out.shape == batch.shape and blank(out[:, 8:]).all(), name


# --- decoder input ----------------------------------------------------------------------------

def test_mask_tokens_changes_characters_only():
    rng = np.random.default_rng(17)
    dec_in = np.full((64, 40), vocab.PAD, np.int32)
    for row in dec_in:
        n = rng.integers(0, 37)
        row[0], row[1:n + 1], row[n + 1] = vocab.START, rng.integers(0, vocab.N_CHARS, n), vocab.END
    chars = dec_in < vocab.N_CHARS
    tf.random.set_seed(17)
    out = augment.mask_tokens(tf.constant(dec_in), 1.0).numpy()
    np.testing.assert_array_equal(out[~chars], dec_in[~chars])
    assert (out[chars] != dec_in[chars]).all() and (out[chars] >= 0).all() and (out[chars] < vocab.N_CHARS).all()
    np.testing.assert_array_equal(augment.mask_tokens(tf.constant(dec_in), 0.0), dec_in)
    out = augment.tokens(tf.constant(dec_in), config(token_mask=0.2)).numpy()
    np.testing.assert_array_equal(out[~chars], dec_in[~chars])
    assert 0.15 < (out[chars] != dec_in[chars]).mean() < 0.25


# --- inside tf.data ---------------------------------------------------------------------------

def test_every_augmentation_runs_in_a_tf_data_graph():
    cfg = config(**{name: 0.5 for name in augment.PROBABILITIES})
    pairs = tf.data.Dataset.from_tensor_slices((tf.range(8) + 12, tf.constant(["abcd", "wxyz"] * 4)))

    def sequence(n, phrase):
        points = tf.random.uniform([n, P, 3], 0.2, 0.8)
        other = tf.random.uniform([n + 5, P, 3], 0.2, 0.8)
        points, phrase = augment.maybe_cutmix(points, phrase, other, tf.constant("qrst"), cfg)
        points = augment.temporal(points, cfg)
        return tf.pad(points, [[0, 64 - tf.shape(points)[0]], [0, 0], [0, 0]], constant_values=math.nan), phrase

    def batch(points, phrase):
        dec_in = tf.fill([tf.shape(points)[0], 6], 3)
        return augment.spatial(tf.ensure_shape(points, [None, 64, P, 3]), cfg), augment.tokens(dec_in, cfg), phrase

    tf.random.set_seed(18)
    ds = pairs.map(sequence).batch(4).map(batch)
    for points, dec_in, phrase in ds:
        assert points.shape == (4, 64, P, 3) and dec_in.shape == (4, 6) and phrase.shape == (4,)
