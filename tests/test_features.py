"""The shared frame preprocessing: dominant hand, mirroring, normalisation, length."""
import numpy as np
import pytest
import tensorflow as tf

from bench.seed_recipe import seed_preprocess_frames
from fingerspell import features
from fingerspell.features import augment
from fingerspell.data import schema
from fingerspell.config import Config

COL = {name: i for i, name in enumerate(schema.SELECTED_COLUMNS)}


def hand_frames(n_frames: int, side: str, rng: np.random.Generator, missing_other: bool = True) -> np.ndarray:
    """Frames with one hand present everywhere; the other hand NaN (or present in a few frames)."""
    frames = rng.uniform(0.3, 0.7, size=(n_frames, schema.N_SELECTED_COLUMNS)).astype(np.float32)
    other = "left_hand" if side == "right_hand" else "right_hand"
    if missing_other:
        for c in "xyz":
            for i in range(21):
                frames[2:, COL[f"{c}_{other}_{i}"]] = np.nan  # present only in the first two frames
    return frames


def test_selected_columns_layout():
    assert len(schema.SELECTED_COLUMNS) == 156 == len(set(schema.SELECTED_COLUMNS))
    assert schema.SELECTED_COLUMNS[0] == "x_left_hand_0"
    assert schema.SELECTED_COLUMNS[52] == "y_left_hand_0"
    assert [schema.SELECTED_POINTS[i] for i in schema.LEFT_ARM_POINTS] == [("pose", p) for p in (13, 15, 17, 19, 21)]
    assert [schema.SELECTED_POINTS[i] for i in schema.RIGHT_ARM_POINTS] == [("pose", p) for p in (14, 16, 18, 20, 22)]
    assert all(c in schema.LANDMARK_COLUMNS for c in schema.SELECTED_COLUMNS)


def test_dominant_side_picks_the_hand_present_in_more_frames():
    rng = np.random.default_rng(0)
    right = hand_frames(30, "right_hand", rng)
    points = features.dominant_side(tf.constant(right)).numpy()
    expected = np.stack([right[:, COL[f"x_right_hand_{i}"]] for i in range(21)], axis=1)
    np.testing.assert_allclose(points[:, :21, 0], expected)
    expected_arm = np.stack([right[:, COL[f"y_pose_{p}"]] for p in schema.RIGHT_ARM_POSE], axis=1)
    np.testing.assert_allclose(points[:, 21:, 1], expected_arm)


def test_left_dominant_sequences_are_mirrored():
    rng = np.random.default_rng(1)
    left = hand_frames(30, "left_hand", rng)
    points = features.dominant_side(tf.constant(left)).numpy()
    x = np.stack([left[:, COL[f"x_left_hand_{i}"]] for i in range(21)], axis=1)
    np.testing.assert_allclose(points[:, :21, 0], 1.0 - x, rtol=1e-6)
    arm_x = np.stack([left[:, COL[f"x_pose_{p}"]] for p in schema.LEFT_ARM_POSE], axis=1)
    np.testing.assert_allclose(points[:, 21:, 0], 1.0 - arm_x, rtol=1e-6)
    y = np.stack([left[:, COL[f"y_left_hand_{i}"]] for i in range(21)], axis=1)
    np.testing.assert_allclose(points[:, :21, 1], y)


def test_mirrored_left_hand_gives_the_same_features_as_the_right_hand():
    """A left-handed signer and their mirror image must look the same to the model."""
    rng = np.random.default_rng(2)
    right = hand_frames(40, "right_hand", rng)
    mirrored = np.full_like(right, np.nan)
    for c in "xyz":
        for i in range(21):
            value = right[:, COL[f"{c}_right_hand_{i}"]]
            mirrored[:, COL[f"{c}_left_hand_{i}"]] = 1.0 - value if c == "x" else value
        for left_p, right_p in zip(schema.LEFT_ARM_POSE, schema.RIGHT_ARM_POSE):
            value = right[:, COL[f"{c}_pose_{right_p}"]]
            mirrored[:, COL[f"{c}_pose_{left_p}"]] = 1.0 - value if c == "x" else value
    ours = features.preprocess_frames(tf.constant(right)).numpy()
    theirs = features.preprocess_frames(tf.constant(mirrored)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_normalisation_removes_hand_position_and_size():
    rng = np.random.default_rng(3)
    frames = hand_frames(20, "right_hand", rng)
    moved = frames.copy()
    for i in range(21):
        for c, (shift, scale) in zip("xyz", [(0.2, 1.5), (-0.1, 1.5), (0.0, 1.5)]):
            col = COL[f"{c}_right_hand_{i}"]
            moved[:, col] = frames[:, col] * scale + shift
    a = features.preprocess_frames(tf.constant(frames)).numpy()[:20, :63]
    b = features.preprocess_frames(tf.constant(moved)).numpy()[:20, :63]
    np.testing.assert_allclose(a, b, atol=1e-4)
    hand = a.reshape(20, 21, 3)
    np.testing.assert_allclose(hand.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.sqrt((hand[..., :2] ** 2).mean(axis=(1, 2))), 1.0, rtol=1e-4)


@pytest.mark.parametrize("n_frames", [0, 1, 5, 128, 129, 1000])
def test_any_length_becomes_frame_len_without_nan(n_frames):
    rng = np.random.default_rng(n_frames)
    frames = hand_frames(n_frames, "right_hand", rng)
    frames[::3] = np.nan  # whole frames missing
    out = features.preprocess_frames(tf.constant(frames), 128).numpy()
    assert out.shape == (128, features.SIDE_FEATURES)
    assert np.isfinite(out).all()
    if 0 < n_frames <= 128:
        assert not out[n_frames:].any(), "short sequences are zero-padded at the end"


def test_long_sequences_are_resampled_to_nearest_frames():
    x = tf.reshape(tf.range(256, dtype=tf.float32), [256, 1])
    out = features.fit_length(x, 128).numpy()[:, 0]
    np.testing.assert_array_equal(out, np.arange(256)[1::2])


def test_seed_preprocessing_shape_and_left_branch_defect():
    rng = np.random.default_rng(4)
    right = seed_preprocess_frames(tf.constant(hand_frames(50, "right_hand", rng))).numpy()
    left = seed_preprocess_frames(tf.constant(hand_frames(50, "left_hand", rng))).numpy()
    assert right.shape == left.shape == (128, 63)
    assert abs(right[:50].mean()) < 1e-4  # normalised per frame
    assert left[:50].mean() > 0.2  # the seed's left branch skips normalisation


def test_augmentations_keep_shapes_and_change_values():
    cfg = Config()
    rng = np.random.default_rng(5)
    points = features.dominant_side(tf.constant(hand_frames(60, "right_hand", rng)))
    tf.random.set_seed(0)
    stretched = augment.temporal(points, cfg)
    assert stretched.shape[1:] == (26, 3) and 40 <= stretched.shape[0] <= 80
    batch = tf.stack([features.fit_length(stretched, cfg.frame_len, fill=np.nan)] * 2)
    out = augment.spatial(batch, cfg)
    assert out.shape == (2, 128, 26, 3)
    assert not np.allclose(np.nan_to_num(out[0].numpy()), np.nan_to_num(out[1].numpy())), "drawn per sequence"
    x = features.normalize(out)
    assert x.shape == (2, 128, 78) and np.isfinite(x.numpy()).all()
    rotated = augment.affine(points[None], 0.0, 30.0, 0.0)[0].numpy()
    assert not np.allclose(rotated, points.numpy())
    # a rotation keeps distances between points
    d0 = np.linalg.norm(points.numpy()[:, 0, :2] - points.numpy()[:, 8, :2], axis=-1)
    d1 = np.linalg.norm(rotated[:, 0, :2] - rotated[:, 8, :2], axis=-1)
    np.testing.assert_allclose(d0, d1, rtol=1e-4)


def test_drop_frames_and_points_blank_with_nan():
    tf.random.set_seed(1)
    points = tf.random.uniform([100, 26, 3])
    dropped = augment.drop_frames(points, 0.3).numpy()
    assert 40 <= len(dropped) < 100
    blank = np.isnan(dropped).all(axis=(1, 2))
    assert np.isnan(dropped).any(axis=(1, 2)).sum() == blank.sum(), "whole frames are blanked"
    out = augment.drop_points(tf.stack([points] * 8), 0.2).numpy()
    missing = np.isnan(out).all(axis=(1, 3))  # [B, 26]: a point is blank in every frame
    assert missing[:, :21].any() and not missing[:, 21:].any(), "only hand points are dropped"
    assert (np.isnan(out).any(axis=(1, 3)) == missing).all()


def test_training_pipeline_matches_the_export_preprocessing_when_augmentation_is_neutral(tmp_path):
    """The batched training path (augment, then normalise batches) is the export's function in disguise."""
    from fingerspell.data import pipeline

    rng = np.random.default_rng(6)
    sequences = [hand_frames(n, side, rng) for n, side in [(40, "right_hand"), (200, "left_hand"), (90, "right_hand")]]
    neutral = Config(aug_speed_min=1.0, aug_speed_max=1.0, aug_frame_drop_rate=0.0, aug_scale=0.0,
                     aug_rotate_degrees=0.0, aug_shift=0.0, aug_point_dropout_rate=0.0)
    records_ds = tf.data.Dataset.from_generator(
        lambda: ({"landmarks": s, "phrase": "ab"} for s in sequences),
        output_signature={"landmarks": tf.TensorSpec([None, 156], tf.float32), "phrase": tf.TensorSpec([], tf.string)})
    batched = pipeline.training_batches(records_ds, neutral, training=False, batch_size=3)
    (per_example, _), _ = next(iter(batched))
    augmenting = pipeline.training_batches(records_ds, neutral, training=True, batch_size=3, shuffle_buffer=1)
    (frames, _), _ = next(iter(augmenting))
    expected = np.stack([features.preprocess_frames(tf.constant(s)).numpy() for s in sequences])
    np.testing.assert_allclose(per_example.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(frames.numpy(), expected, atol=1e-4)
