"""Letters: the feature function, augmentation, the contiguous-block split, and the three commands on real data."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fingerspell import cli
from fingerspell.letters import augment, features, training
from fingerspell.letters.items import Item

LETTERS = Path(__file__).parent / "fixtures" / "letters"
VIDEO = Path(__file__).parent / "fixtures" / "signer_selfie.mp4"


def real_frames(letter: str, n: int = 8) -> np.ndarray:
    """[n, 21, 3] consecutive real MediaPipe Hands frames of a letter."""
    return np.stack([np.load(LETTERS / "landmarks" / letter / f"frame_{i}.npy").reshape(21, 3)
                     for i in range(n)]).astype(np.float32)


def feats(windows: np.ndarray, handedness: float = 0.0) -> np.ndarray:
    return features.window_features(windows, np.full(len(windows), handedness, np.float32)).numpy()


def mirrored(windows: np.ndarray) -> np.ndarray:
    out = windows.copy()
    out[..., 0] = 1.0 - out[..., 0]
    return out


# --- features ---------------------------------------------------------------------------------

def test_a_mirrored_hand_gives_the_same_features_by_geometry_or_by_mediapipes_label():
    windows = features.clip_windows(real_frames("B"))
    base = feats(windows)
    assert features.chirality(windows[:, -1]).numpy().tolist() == [-1.0] * len(windows)  # this signer, mirrored
    np.testing.assert_allclose(feats(mirrored(windows)), base, atol=1e-5)  # geometry: canonical either way
    # With MediaPipe's labels the other way round, the same holds; labels decide over geometry.
    np.testing.assert_allclose(feats(mirrored(windows), handedness=1.0), feats(windows, handedness=-1.0), atol=1e-5)
    assert not np.allclose(feats(windows, handedness=1.0), feats(windows, handedness=-1.0), atol=1e-3)


def test_position_and_size_do_not_matter_but_orientation_does():
    windows = features.clip_windows(real_frames("A"))
    base = feats(windows)
    np.testing.assert_allclose(feats(windows * 1.8 + 0.25), base, atol=1e-4)
    rotated = augment.augment(windows, np.random.default_rng(0), roll=40, yaw=0, pitch=0, aspect=1.0,
                              finger_scale=0.0, jitter=0.0)
    assert np.abs(feats(rotated) - base).max() > 0.1  # G/H vs P/Q: a rotated hand is another letter


def test_a_still_window_has_no_motion_and_a_moving_one_has():
    frames = real_frames("O")
    still = feats(features.still_windows(frames))
    motion = (features.WINDOW - 1) * len(features.MOTION_TIPS) * 2
    assert np.all(still[:, -motion:] == 0)
    moving = frames.copy()
    moving[:, 20, 1] += np.arange(len(frames)) * 0.02  # the little finger's tip draws a line (a J's stroke)
    assert np.abs(feats(features.clip_windows(moving))[features.WINDOW:, -motion:]).max() > 0.1
    assert features.clip_windows(frames).shape == (len(frames), features.WINDOW, 21, 3)


def test_augmentation_keeps_rigid_shape_under_rotation_and_scales_fingers():
    windows = features.clip_windows(real_frames("L"[:1] if False else "A"))
    rng = np.random.default_rng(1)
    rotated = augment.augment(windows, rng, 30, 30, 30, aspect=1.0, finger_scale=0.0, jitter=0.0)
    bones = lambda w: np.linalg.norm(w[..., 1:, :] - w[..., [features.PARENTS[i] for i in range(1, 21)], :], axis=-1)
    np.testing.assert_allclose(bones(rotated), bones(windows), rtol=1e-4)
    longer = augment.scale_fingers(windows, np.full((len(windows), 5), 1.2))
    index = list(features.FINGERS[1])
    np.testing.assert_allclose(np.linalg.norm(longer[..., index[-1], :] - longer[..., index[0], :], axis=-1),
                               1.2 * np.linalg.norm(windows[..., index[-1], :] - windows[..., index[0], :], axis=-1),
                               rtol=1e-5)


# --- recordings and the split -----------------------------------------------------------------

def npy_item(letter: str, frame: np.ndarray, i: int) -> Item:
    return Item(Path(f"{letter}/frame_{i}.npy"), letter, "npy", frame[None], np.zeros(1, np.float32), 1)


def test_webcam_frames_form_recordings_that_break_where_the_hand_jumps():
    frames = real_frames("A", 12)
    jumped = frames.copy()
    jumped[6:, :, 0] += 0.5  # the hand moves half the image between frames 5 and 6: another recording
    series = training.build_series([npy_item("A", f, i) for i, f in enumerate(jumped)] +
                                   [npy_item("B", f, i) for i, f in enumerate(real_frames("B", 4))])
    assert [(s.label, len(s.frames)) for s in series] == [("A", 6), ("A", 6), ("B", 4)]


def test_the_held_out_block_is_contiguous_and_its_neighbours_are_not_trained_on():
    found = [npy_item(letter, f, i) for letter in "AB" for i, f in enumerate(real_frames(letter, 48))]
    cfg = training.LettersConfig(val_fraction=0.25, val_gap=3)
    frames, blocks = training.split_frames(training.build_series(found), ["A", "B"], cfg)
    for c, label in enumerate("AB"):
        held = np.flatnonzero(frames.validation & (frames.labels == c))
        assert len(held) == 12 and np.all(np.diff(held) == 1)  # one contiguous block of a quarter
        start, end = blocks[label]["held_out"]
        offset = np.flatnonzero(frames.labels == c)[0]
        excluded = np.arange(max(0, start - 3), min(48, end + 3)) + offset
        assert not frames.training[excluded].any() and frames.training[frames.labels == c].sum() == 48 - len(excluded)
    with pytest.raises(training.LettersError, match="class 'A' has 48 frames"):
        training.split_frames(training.build_series(found), ["A", "B"], training.LettersConfig(val_gap=30))


# --- the commands ----------------------------------------------------------------------------

def class_tree(root: Path, with_images: bool = True) -> Path:
    """Class folders A, B, O: 48 real webcam frames (.npy) each, plus the other signer's photo of each letter."""
    for letter in "ABO":
        shutil.copytree(LETTERS / "landmarks" / letter, root / letter)
        if with_images:
            shutil.copy(LETTERS / "images" / f"{letter}.jpg", root / letter / "photo.jpg")
    return root


@pytest.fixture(scope="module")
def letters_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("letters")
    data = class_tree(root / "data")
    run = root / "run"
    assert cli.main(["letters", "train", str(data), "--out", str(run), "epochs=4", "hidden=32", "val_gap=4"]) == 0
    return run


@pytest.mark.video
@pytest.mark.slow
def test_train_writes_a_tflite_model_that_agrees_with_keras(letters_run, capsys):
    import keras

    summary = json.loads((letters_run / "summary.json").read_text())
    assert json.loads((letters_run / "labels.json").read_text()) == ["A", "B", "O"]
    assert summary["items"] == {"A": 49, "B": 49, "O": 49} and summary["frames"] == 147
    assert summary["held_out_frames"] == 3 * 10 and summary["problems"] == []
    assert training.LettersConfig.load(letters_run / "config.json").epochs == 4
    assert list((letters_run / "landmarks-cache").glob("*.npz"))  # the photos' landmarks, for the next run
    # Parity: the exported model (feature function inside) and the Keras model give the same probabilities.
    from fingerspell.letters.inference import LettersModel

    model = training.build_model(3, training.LettersConfig(hidden=32))
    model.load_weights(letters_run / "letters.weights.h5")
    windows = features.clip_windows(np.concatenate([real_frames(letter) for letter in "ABO"]))
    for handedness in (0.0, 1.0, -1.0):
        sides = np.full(len(windows), handedness, np.float32)
        expected = keras.ops.convert_to_numpy(model({"landmarks": windows, "handedness": sides}))
        np.testing.assert_allclose(LettersModel(letters_run).probabilities(windows, sides), expected, atol=1e-5)
    assert cli.main(["letters", "train", str(LETTERS), "--out", str(letters_run)]) == 2
    assert "already holds a letters model" in capsys.readouterr().err
    # It runs in Kaggle's 2023 runtime too (a child process: old runtimes crash rather than raise).
    if importlib.util.find_spec("tflite_runtime"):
        np.save(letters_run.parent / "windows.npy", windows[:7])
        runner = ("import sys, numpy as np; from tflite_runtime.interpreter import Interpreter; "
                  "run = Interpreter(model_path=sys.argv[1]).get_signature_runner('serving_default'); "
                  "w = np.load(sys.argv[2]); "
                  "p = run(landmarks=w, handedness=np.zeros(len(w), np.float32))['probabilities']; "
                  "z = run(landmarks=np.zeros((1, 5, 21, 3), np.float32), handedness=np.zeros(1, np.float32)); "
                  "np.save(sys.argv[3], p); assert np.isfinite(z['probabilities']).all()")
        done = subprocess.run([sys.executable, "-c", runner, str(letters_run / "letters.tflite"),
                               str(letters_run.parent / "windows.npy"), str(letters_run.parent / "old.npy")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        sides = np.zeros(7, np.float32)
        np.testing.assert_allclose(np.load(letters_run.parent / "old.npy"),
                                   LettersModel(letters_run).probabilities(windows[:7], sides), atol=1e-6)


@pytest.mark.video
@pytest.mark.slow
def test_evaluate_reports_items_classes_and_a_confusion_matrix(letters_run, tmp_path, capsys):
    data = tmp_path / "photos"
    for letter in "ABO":
        (data / letter).mkdir(parents=True)
        shutil.copy(LETTERS / "images" / f"{letter}.jpg", data / letter / "photo.jpg")
    (data / "A" / "clip.npy").write_bytes(b"")  # placeholder replaced below by a real clip of A
    np.save(data / "A" / "clip.npy", real_frames("A", 10).reshape(10, 63))
    report_path = tmp_path / "report.json"
    assert cli.main(["letters", "evaluate", str(letters_run), str(data), "--json", str(report_path),
                     "--confusion", str(tmp_path / "confusion.png")]) == 0
    report = json.loads(report_path.read_text())
    assert report["samples"] == 4 and 0.0 <= report["accuracy"] <= 1.0
    assert sum(map(sum, report["confusion"])) == 4 and set(report["per_class"]) == {"A", "B", "O"}
    assert report["accuracy"] == round(sum(r["correct"] for r in report["items"]) / 4, 4)
    clip = next(r for r in report["items"] if r["path"].endswith("clip.npy"))
    assert len(clip["top"]) == 3  # one answer for the whole clip
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (data / "Q").mkdir()
    shutil.copy(LETTERS / "images" / "A.jpg", data / "Q" / "photo.jpg")
    assert cli.main(["letters", "evaluate", str(letters_run), str(data)]) == 2
    assert "['Q'] are not classes of the model" in capsys.readouterr().err


@pytest.mark.video
@pytest.mark.slow
def test_predict_gives_top_three_for_each_input_kind_and_names_bad_ones(letters_run, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    clip = tmp_path / "clip.npy"
    np.save(clip, real_frames("O", 10))
    inputs = [LETTERS / "images" / "B.jpg", clip, VIDEO, broken]
    status = cli.main(["letters", "predict", str(letters_run), *map(str, inputs), "--render", str(tmp_path / "out")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert status == 1 and len(lines) == 4  # a bad input is reported, the others are answered
    for line in lines[:3]:
        path, answer = line.split("\t")
        assert len(answer.split(") ")) == 3 and all(label in "ABO" for label in answer.split()[::2])
    assert lines[3].startswith(str(broken)) and "unreadable" in lines[3]
    assert (tmp_path / "out" / "B.rendered.png").read_bytes()[:4] == b"\x89PNG"
    # Rendering next to the inputs, with two inputs of one name, overwrites none of them.
    photos = tmp_path / "photos"
    for sub in ("one", "two"):
        (photos / sub).mkdir(parents=True)
        shutil.copy(LETTERS / "images" / "B.jpg", photos / sub / "B.jpg")
    before = (photos / "one" / "B.jpg").read_bytes()
    assert cli.main(["letters", "predict", str(letters_run), str(photos / "one" / "B.jpg"),
                     str(photos / "two" / "B.jpg"), "--render", str(photos / "one")]) == 0
    assert (photos / "one" / "B.jpg").read_bytes() == before
    assert sorted(p.name for p in (photos / "one").iterdir()) == ["B-2.rendered.png", "B.jpg", "B.rendered.png"]
    capsys.readouterr()
    assert cli.main(["letters", "predict", str(letters_run), str(clip), "--json", "--per-frame"]) == 0
    [prediction] = json.loads(capsys.readouterr().out)
    assert len(prediction["frames"]) == 10 and len(prediction["top"]) == 3


def test_an_out_folder_of_something_else_is_refused_untouched(tmp_path, capsys):
    from fingerspell.config import Config

    other = tmp_path / "sequence-run"
    other.mkdir()
    Config().save(other / "config.json")
    saved = (other / "config.json").read_text()
    assert cli.main(["letters", "train", str(LETTERS / "landmarks"), "--out", str(other)]) == 2
    assert "is not a letters run's config" in capsys.readouterr().err
    assert (other / "config.json").read_text() == saved
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert cli.main(["letters", "train", str(LETTERS / "landmarks"), "--out", str(tmp_path / "notes")]) == 2
    assert "holds files a letters run does not write (['todo.txt'])" in capsys.readouterr().err


@pytest.mark.video
def test_a_class_of_unreadable_items_or_an_empty_one_is_refused_by_name(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(LETTERS / "landmarks" / "A", data / "A")
    (data / "broken").mkdir()
    (data / "broken" / "photo.jpg").write_bytes(b"not an image")
    assert cli.main(["letters", "train", str(data), "--out", str(tmp_path / "run"), "epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "no item of class(es) ['broken']" in err and "photo.jpg" in err
    assert not (tmp_path / "run" / "letters.tflite").exists()
    (data / "broken" / "photo.jpg").unlink()
    assert cli.main(["letters", "train", str(data), "--out", str(tmp_path / "run2")]) == 2
    assert "broken" in capsys.readouterr().err  # an empty class folder


@pytest.mark.video
@pytest.mark.slow
def test_a_nothing_class_is_learned_only_when_the_data_has_one(letters_run, tmp_path, capsys):
    import cv2

    data = class_tree(tmp_path / "data", with_images=False)
    (data / "nothing").mkdir()
    for i in range(3):  # empty scenes: no hand in any of them
        cv2.imwrite(str(data / "nothing" / f"room{i}.png"), np.full((240, 320, 3), 40 * i, np.uint8))
    run = tmp_path / "run"
    assert cli.main(["letters", "train", str(data), "--out", str(run), "epochs=2", "hidden=32", "val_gap=4"]) == 0
    capsys.readouterr()
    assert json.loads((run / "no_hand.json").read_text()) == {"label": "nothing"}
    assert json.loads((run / "labels.json").read_text()) == ["A", "B", "O"]  # the classifier's own classes
    empty_scene = data / "nothing" / "room1.png"
    assert cli.main(["letters", "predict", str(run), str(empty_scene)]) == 0
    assert capsys.readouterr().out.strip() == f"{empty_scene}\tnothing (1.00)"
    report = tmp_path / "report.json"
    assert cli.main(["letters", "evaluate", str(run), str(data), "--json", str(report)]) == 0
    nothing = json.loads(report.read_text())["per_class"]["nothing"]
    assert nothing == {"items": 3, "correct": 3, "accuracy": 1.0, "no_hand": 3}
    # A letter whose photos mostly show no hand is not taken for a "nothing" class: it is refused by name.
    (data / "nothing").rename(data / "Q")
    assert cli.main(["letters", "train", str(data), "--out", str(tmp_path / "run-q"), "epochs=1"]) == 2
    assert "no item of class(es) ['Q']" in capsys.readouterr().err
    empty_scene = data / "Q" / "room1.png"
    # A model trained without one reports the same scene as a problem, not as a class.
    assert json.loads((letters_run / "no_hand.json").read_text()) == {"label": None}
    assert cli.main(["letters", "predict", str(letters_run), str(empty_scene)]) == 1
    assert "(no hand found)" in capsys.readouterr().out
