"""Landmark sets: which columns preprocessing stores, the model reads and inference_args.json lists."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from fingerspell import features
from fingerspell.config import Config, ConfigError
from fingerspell.data import pipeline, records, schema
from fingerspell.data.convert import PreprocessConfig, PreprocessError, preprocess
from fingerspell.data.parquet import read_sequences
from fingerspell.features import augment

SETS = list(schema.LANDMARK_SETS.values())
FACE = schema.HANDS_ARMS_FACE


def test_the_sets_and_their_sizes():
    sizes = {s.name: (s.n_points, s.n_columns, s.n_side_points) for s in SETS}
    assert sizes == {"hands_arms": (52, 156, 26), "hands_arms_face": (130, 390, 109), "all": (543, 1629, 543)}
    assert schema.HANDS_ARMS.columns == schema.SELECTED_COLUMNS
    assert schema.ALL_LANDMARKS.columns == schema.LANDMARK_COLUMNS  # Kaggle's own order
    for s in SETS:
        assert len(set(s.columns)) == s.n_columns and set(s.columns) <= set(schema.LANDMARK_COLUMNS)
        assert schema.landmark_set_of_width(s.n_columns) is s  # records tell their set by their width
        assert all(s.symmetry[s.symmetry[k]] == k for k in range(s.n_points))
        assert [s.points[k] for k in s.side[:21]] == [("right_hand", i) for i in range(21)]
    # the 130 points: both hands, shoulders to palm points, 40 lips, 4 nose, 16 + 16 eyes
    parts = {name: len(group) for name, group in FACE.context}
    assert parts == {"arms": 12, "lips": 40, "nose": 4, "eyes": 32}
    with pytest.raises(ValueError, match="expected one of"):
        schema.landmark_set("face")


def test_a_set_must_hold_the_mirror_image_of_every_point():
    with pytest.raises(ValueError, match="mirror images"):
        schema.LandmarkSet("lopsided", schema.SELECTED_POINTS + (("pose", 11),), (), "")


def mirror_frames(frames: np.ndarray, landmarks: schema.LandmarkSet) -> np.ndarray:
    """The same frames as a mirror image would show them: x -> 1 - x, every point relabelled as its mirror."""
    index = {name: k for k, name in enumerate(landmarks.columns)}
    mirrored = np.empty_like(frames)
    for k, name in enumerate(landmarks.columns):
        coord, rest = name.split("_", 1)
        part, point = rest.rsplit("_", 1)
        mirror_part, mirror_point = schema.mirror_point((part, int(point)))
        value = frames[:, index[f"{coord}_{mirror_part}_{mirror_point}"]]
        mirrored[:, k] = 1.0 - value if coord == "x" else value
    return mirrored


@pytest.fixture(scope="module")
def right_handed(synthetic_small) -> np.ndarray:
    """A real synthetic sequence (all 543 points) whose right hand is the dominant one."""
    import pandas as pd

    meta = pd.read_csv(synthetic_small / "train.csv")
    for path, group in meta.groupby("path"):
        found = read_sequences(synthetic_small / path, schema.LANDMARK_COLUMNS, group.sequence_id.tolist())
        for frames in found.values():
            right = ~np.isnan(frames[:, schema.ALL_LANDMARKS.right_hand_columns]).any(axis=1)
            left = ~np.isnan(frames[:, schema.ALL_LANDMARKS.left_hand_columns]).any(axis=1)
            if right.sum() > left.sum() + 5 and len(frames) > 20:
                return frames.astype(np.float32)
    raise AssertionError("no right-handed sequence in the synthetic data")


@pytest.mark.parametrize("landmarks", SETS, ids=lambda s: s.name)
def test_a_signer_and_their_mirror_image_look_the_same_to_the_model(right_handed, landmarks):
    """Mirroring a left-handed signer must relabel every point through the symmetry map: the mirror image
    of a right-handed sequence (a left-handed one) gives the same model input."""
    frames = right_handed[:, landmarks.landmark_positions]
    mirrored = mirror_frames(frames, landmarks)
    ours = features.preprocess_frames(tf.constant(frames), 384, landmarks).numpy()
    theirs = features.preprocess_frames(tf.constant(mirrored), 384, landmarks).numpy()
    assert ours.shape == (len(frames), landmarks.n_side_points * 3)
    np.testing.assert_allclose(ours, theirs, atol=2e-4)
    # and the set matters: without relabelling (x flipped only) the face would come out on the wrong side
    if landmarks is not schema.HANDS_ARMS:
        flipped_only = frames.copy()
        x = slice(0, landmarks.n_points)
        flipped_only[:, x] = 1.0 - flipped_only[:, x]
        hands = np.r_[landmarks.left_hand_columns, landmarks.right_hand_columns]
        flipped_only[:, hands] = mirrored[:, hands]
        wrong = features.preprocess_frames(tf.constant(flipped_only), 384, landmarks).numpy()
        assert np.abs(wrong - ours).max() > 0.1


def test_hands_arms_side_points_are_the_hand_and_its_arm(right_handed):
    frames = right_handed[:, schema.HANDS_ARMS.landmark_positions]
    points = features.dominant_side(tf.constant(frames)).numpy()
    col = {name: k for k, name in enumerate(schema.SELECTED_COLUMNS)}
    expected = [f"y_right_hand_{i}" for i in range(21)] + [f"y_pose_{p}" for p in schema.RIGHT_ARM_POSE]
    np.testing.assert_array_equal(points[:, :, 1], frames[:, [col[c] for c in expected]])


def test_augmentation_layouts():
    assert augment.layout_for(schema.HANDS_ARMS) == augment.DEFAULT_LAYOUT
    layout = augment.layout_for(FACE)
    side = [FACE.points[k] for k in FACE.side]
    assert [len(p) for p in layout.parts] == [12, 40, 4, 32]
    # the eyes and arms swap sides in a flip, the dominant hand stays where the model reads the hand
    left_eye, right_eye = ("face", 33), ("face", 263)  # the outer corners of the eyes
    assert side[layout.symmetry[side.index(left_eye)]] == right_eye
    assert side[layout.symmetry[side.index(("pose", 13))]] == ("pose", 14)
    assert layout.symmetry[:21] == tuple(range(21))
    every = augment.layout_for(schema.ALL_LANDMARKS)
    assert every.symmetry[21:42] == tuple(range(21, 42))  # the other hand is not swapped into the dominant one


def write_records(tmp_path, synthetic_small, landmarks: str):
    out = tmp_path / landmarks
    manifest = preprocess(PreprocessConfig(synthetic_small, out, workers=1, progress=False, landmarks=landmarks))
    return out, manifest


def test_preprocess_stores_the_set_and_training_reads_any_stored_subset(tmp_path, synthetic_small):
    face_dir, manifest = write_records(tmp_path, synthetic_small, "hands_arms_face")
    assert manifest["landmarks"] == "hands_arms_face" and manifest["selected_columns"] == list(FACE.columns)
    assert manifest["format"]["n_columns"] == 390
    base_dir, base = write_records(tmp_path, synthetic_small, "hands_arms")
    assert base["kept"] == manifest["kept"]  # the hand rule reads the same hand columns
    assert records.check_layout(records.shard_paths(face_dir)) is FACE

    face = list(records.load_dataset(face_dir).take(3).as_numpy_iterator())
    assert face[0]["landmarks"].shape[1] == 390
    subset = list(records.load_dataset(face_dir, landmarks=schema.HANDS_ARMS).take(3).as_numpy_iterator())
    stored = list(records.load_dataset(base_dir).take(3).as_numpy_iterator())
    for a, b in zip(subset, stored):
        assert a["sequence_id"] == b["sequence_id"]
        np.testing.assert_array_equal(a["landmarks"], b["landmarks"])

    with pytest.raises(records.RecordFormatError, match=r"preprocess --landmarks all"):
        records.load_dataset(base_dir, landmarks=schema.ALL_LANDMARKS)
    with pytest.raises(PreprocessError, match="--landmarks"):
        preprocess(PreprocessConfig(synthetic_small, tmp_path / "x", workers=1, progress=False, landmarks="face"))


def test_training_batches_of_the_face_set_with_every_augmentation(tmp_path, synthetic_small):
    face_dir, _ = write_records(tmp_path, synthetic_small, "hands_arms_face")
    probabilities = {name: 0.5 for name in Config().augmentation_probabilities}
    cfg = Config(landmarks="hands_arms_face", **probabilities)
    (frames, _), _ = next(iter(pipeline.training_batches(records.load_dataset(face_dir, landmarks=FACE), cfg,
                                                         training=True, batch_size=8)))
    assert frames.shape[0] == 8 and frames.shape[2] == 109 * 3
    rows = tf.reduce_all(tf.math.is_nan(frames), axis=2)  # padding rows are all NaN, the others have none
    assert not tf.reduce_any(tf.logical_and(tf.math.is_nan(frames), tf.logical_not(rows[..., None])))


def test_seed_preprocessing_reads_hands_arms_only():
    pytest.importorskip("bench.seed_recipe")
    with pytest.raises(ConfigError, match="hands_arms"):
        features.feature_dim("seed", FACE)
    with pytest.raises(ConfigError, match="landmarks"):
        Config(landmarks="faces").validate()


@pytest.mark.slow
def test_export_of_the_face_set_lists_its_columns_and_matches_keras(tmp_path, synthetic_small, right_handed):
    """An export reads exactly the set's columns, in inference_args.json's order, and decodes like Keras."""
    from ai_edge_litert.interpreter import Interpreter

    from fingerspell.export.tflite import convert, write_submission
    from fingerspell.model.transformer import build_model

    cfg = Config(landmarks="hands_arms_face", num_hid=32, ff_dim=64, enc_layers=1, seed=0)
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg, features.feature_dim(cfg.normalization, cfg.landmark_set))
    paths = write_submission(convert(model, cfg), tmp_path / "sub", cfg.landmark_set)
    columns = json.loads(paths["inference_args"].read_text())["selected_columns"]
    assert columns == list(FACE.columns) and len(columns) == 390
    frames = right_handed[:, schema.landmark_positions(columns)]
    interpreter = Interpreter(model_path=str(paths["model"]))
    runner = interpreter.get_signature_runner()
    got = np.argmax(runner(inputs=frames)["outputs"], axis=-1)
    expected = model.generate(pipeline.model_batch([frames], cfg), decoder=cfg.decoder)[0].numpy()
    np.testing.assert_array_equal(got, expected[:len(got)])
