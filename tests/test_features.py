"""The shared frame preprocessing: dominant hand, mirroring, normalisation, length."""
import numpy as np
import pytest
import tensorflow as tf

from bench.seed_recipe import seed_preprocess_frames
from fingerspell import features
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
def test_empty_frames_are_dropped_and_only_long_sequences_resampled(n_frames):
    rng = np.random.default_rng(n_frames)
    frames = hand_frames(n_frames, "right_hand", rng)
    frames[::3] = np.nan  # frames where nothing was detected
    seen = n_frames - len(range(0, n_frames, 3))
    out = features.preprocess_frames(tf.constant(frames), 128).numpy()
    assert out.shape == (min(max(seen, 1), 128), features.SIDE_FEATURES)
    assert np.isfinite(out).all()


def test_padding_with_nan_rows_changes_nothing():
    """Rows where nothing was detected are dropped, so a caller may pad any input to a fixed size."""
    frames = hand_frames(30, "left_hand", np.random.default_rng(7))
    padded = np.concatenate([frames[:10], np.full((5, 156), np.nan), frames[10:], np.full((50, 156), np.nan)])
    np.testing.assert_array_equal(features.preprocess_frames(tf.constant(frames)).numpy(),
                                  features.preprocess_frames(tf.constant(padded.astype(np.float32))).numpy())


def test_long_sequences_are_resampled_to_nearest_frames_and_short_ones_kept():
    x = tf.reshape(tf.range(256, dtype=tf.float32), [256, 1])
    np.testing.assert_array_equal(features.shorten(x, 128).numpy()[:, 0], np.arange(256)[1::2])
    np.testing.assert_array_equal(features.shorten(x[:100], 128).numpy()[:, 0], np.arange(100))


def test_without_padding_mask_every_sequence_is_zero_padded_to_max_frames():
    frames = tf.constant(hand_frames(40, "right_hand", np.random.default_rng(8)))
    out = features.model_input(frames, 128, "hand", padding_mask=False).numpy()
    assert out.shape == (128, features.SIDE_FEATURES) and not out[40:].any()
    np.testing.assert_array_equal(out[:40], features.model_input(frames, 128, "hand").numpy())


def test_seed_preprocessing_shape_and_left_branch_defect():
    rng = np.random.default_rng(4)
    right = seed_preprocess_frames(tf.constant(hand_frames(50, "right_hand", rng))).numpy()
    left = seed_preprocess_frames(tf.constant(hand_frames(50, "left_hand", rng))).numpy()
    assert right.shape == left.shape == (128, 63)
    assert abs(right[:50].mean()) < 1e-4  # normalised per frame
    assert left[:50].mean() > 0.2  # the seed's left branch skips normalisation


def test_training_pipeline_matches_the_export_preprocessing_when_augmentation_is_neutral(tmp_path):
    """The batched training path (augment, then normalise batches) is the export's function in disguise."""
    from fingerspell.data import pipeline

    rng = np.random.default_rng(6)
    sequences = [hand_frames(n, side, rng) for n, side in [(40, "right_hand"), (200, "left_hand"), (90, "right_hand")]]
    off = {name: 0.0 for name in Config().augmentation_probabilities}
    neutral = Config(**{**off, "aug_speed_p": 1.0, "aug_affine_p": 1.0, "aug_frame_drop_p": 1.0},
                     aug_speed_min=1.0, aug_speed_max=1.0, aug_frame_drop_rate=0.0, aug_scale=0.0,
                     aug_rotate_degrees=0.0, aug_shift=0.0, aug_shear=0.0)
    records_ds = tf.data.Dataset.from_generator(
        lambda: ({"landmarks": s, "phrase": "ab"} for s in sequences),
        output_signature={"landmarks": tf.TensorSpec([None, 156], tf.float32), "phrase": tf.TensorSpec([], tf.string)})
    batched = pipeline.training_batches(records_ds, neutral, training=False, batch_size=3)
    (per_example, _), _ = next(iter(batched))
    augmenting = pipeline.training_batches(records_ds, neutral, training=True, batch_size=3, shuffle_buffer=1)
    (frames, _), _ = next(iter(augmenting))
    expected = pipeline.model_batch(sequences, neutral).numpy()
    assert expected.shape == (3, 224, 78)  # 200 frames padded with NaN to a multiple of FRAME_BUCKET
    np.testing.assert_allclose(per_example.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(frames.numpy(), expected, atol=1e-4)
