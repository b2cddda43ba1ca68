"""fingerspell.video.render on landmarks extracted from the real recordings in tests/fixtures."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fingerspell import cli
from fingerspell.video import extract as ex
from fingerspell.video import render as rd
from fingerspell.data.parquet import read_sequences, write_landmarks_parquet
from fingerspell.data.schema import LANDMARK_COLUMNS, SELECTED_COLUMNS

from tests.fixtures import fixture, require

VIDEO = fixture("signer_selfie.mp4")  # 58 frames
POSE_A = fixture("0ff215ef_right_hand.pose")  # 14 frames

BG = np.array([255, 255, 255], np.uint8)


pytestmark = [pytest.mark.slow, pytest.mark.video]  # every test renders landmarks that MediaPipe extracts from the video


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    require(VIDEO, POSE_A)
    out = tmp_path_factory.mktemp("render") / "real.parquet"
    summary = ex.extract([VIDEO, POSE_A], out, phrase="signer test", progress=False)
    assert not summary.failed
    return out, ex.sequence_id_for(VIDEO.name), ex.sequence_id_for(POSE_A.name)


def plot_area(img: np.ndarray) -> np.ndarray:
    """The drawing below the header and above the frame counter."""
    return img[rd._HEADER_H: img.shape[0] - 24]


def drawn_pixels(img: np.ndarray) -> int:
    return int((plot_area(img) != BG).any(axis=-1).sum())


def hand_pixels(img_rgb: np.ndarray, part: str) -> int:
    """Pixels close to a hand's colour (RGB image)."""
    b, g, r = rd._HAND_COLOURS[part]
    diff = np.abs(plot_area(img_rgb).astype(int) - np.array([r, g, b])).sum(axis=-1)
    return int((diff < 60).sum())


def gif_frames(path: Path) -> list[np.ndarray]:
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return [np.array(f.convert("RGB")) for f in ImageSequence.Iterator(im)]


def mp4_frames(path: Path) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def test_gif_of_video_sequence(parquet, tmp_path, capsys):
    path, video_sid, _ = parquet
    out = tmp_path / "anim.gif"
    assert cli.main(["render", str(path), "--sequence-id", str(video_sid), "--out", str(out), "--fps", "15"]) == 0
    assert 'phrase "signer test"' in capsys.readouterr().err  # phrase found in real.csv beside it
    frames = gif_frames(out)
    assert len(frames) == 58
    from PIL import Image

    with Image.open(out) as im:
        assert im.info["duration"] == rd.gif_frame_ms(15) == 70  # GIF keeps centiseconds
    # Every frame draws the arms (pose is in all frames); frames with the right hand show it.
    seq = read_sequences(path, ["x_right_hand_0"], [video_sid])[video_sid]
    right = ~np.isnan(seq[:, 0])
    assert right.sum() >= 10
    for t, img in enumerate(frames):
        assert drawn_pixels(img) > 500
        if right[t]:
            assert hand_pixels(img, "right_hand") > 100
        else:
            assert hand_pixels(img, "right_hand") < 30  # NaN hand hidden
        assert hand_pixels(img, "left_hand") < 30  # never detected in this clip
    assert not np.array_equal(plot_area(frames[0]), plot_area(frames[-1]))  # it moves
    # The header carries text.
    assert (frames[0][: rd._HEADER_H - 6] != BG).any(axis=-1).sum() > 200


def test_mp4_of_pose_sequence(parquet, tmp_path):
    path, _, pose_sid = parquet
    out = tmp_path / "anim.mp4"
    info = rd.render_from_parquet(path, pose_sid, out, fps=30)
    assert info["frames"] == 14 and info["phrase"] == "signer test"
    frames = mp4_frames(out)
    assert len(frames) == 14
    h, w = frames[0].shape[:2]
    assert h % 2 == 0 and w % 2 == 0
    # mp4v is lossy: count clearly non-white pixels.
    for img in frames[::3]:
        assert int((plot_area(img) < 200).any(axis=-1).sum()) > 300
    assert [p.name for p in tmp_path.iterdir()] == ["anim.mp4"]  # no temporary left


def test_unknown_sequence_id_lists_ids(parquet, tmp_path, capsys):
    path, video_sid, _ = parquet
    out = tmp_path / "x.gif"
    assert cli.main(["render", str(path), "--sequence-id", "12345", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "12345" in err and str(video_sid) in err
    assert not out.exists()


def test_model_prediction_is_shown(parquet, tmp_path, monkeypatch, capsys):
    """--model goes through fingerspell.export.predictor.TFLitePredictor with its selected columns."""
    path, video_sid, _ = parquet
    calls = []

    class FakePredictor:
        def __init__(self, sub_dir):
            self.sub_dir = sub_dir
            self.selected_columns = list(SELECTED_COLUMNS)

        def __call__(self, frames):
            calls.append(frames)
            return "predicted text"

    module = types.ModuleType("fingerspell.export.predictor")
    module.TFLitePredictor = FakePredictor
    monkeypatch.setitem(sys.modules, "fingerspell.export.predictor", module)
    out = tmp_path / "pred.gif"
    info = rd.render_from_parquet(path, video_sid, out, model_dir=tmp_path, phrase="given phrase")
    assert info["prediction"] == "predicted text" and info["phrase"] == "given phrase"
    assert len(calls) == 1 and calls[0].shape == (58, len(SELECTED_COLUMNS))
    assert calls[0].dtype == np.float32
    full = read_sequences(path, list(SELECTED_COLUMNS), [video_sid])[video_sid]
    np.testing.assert_array_equal(calls[0], full)
    # A second header line is drawn for the prediction.
    with_pred = gif_frames(out)[0]
    rd.render_from_parquet(path, video_sid, tmp_path / "nopred.gif", phrase="given phrase")
    without = gif_frames(tmp_path / "nopred.gif")[0]
    band = slice(30, rd._HEADER_H - 6)
    assert (with_pred[band] != BG).any(axis=-1).sum() > (without[band] != BG).any(axis=-1).sum() + 100
    # A model folder the predictor rejects is a clear error, not a traceback.

    class BrokenPredictor:
        def __init__(self, sub_dir):
            raise RuntimeError(f"{sub_dir}/model.tflite: not found")

    module.TFLitePredictor = BrokenPredictor
    out2 = tmp_path / "broken.gif"
    assert cli.main(["render", str(path), "--sequence-id", str(video_sid), "--out", str(out2),
                     "--model", str(tmp_path / "nomodel")]) == 2
    assert "model.tflite: not found" in capsys.readouterr().err
    assert not out2.exists()


def test_render_sequence_inputs_and_nan(parquet, tmp_path):
    path, video_sid, _ = parquet
    frames = read_sequences(path, sequence_ids=[video_sid])[video_sid]
    # Array, dict of columns and DataFrame give the same drawing.
    assert rd.render_sequence(frames, tmp_path / "a.gif", title="t") == 58
    as_dict = {c: frames[:, i] for i, c in enumerate(LANDMARK_COLUMNS)}
    assert rd.render_sequence(as_dict, tmp_path / "b.gif", title="t") == 58
    assert rd.render_sequence(pd.DataFrame(as_dict), tmp_path / "c.gif", title="t") == 58
    a, b, c = (gif_frames(tmp_path / f"{n}.gif") for n in "abc")
    assert np.array_equal(a[20], b[20]) and np.array_equal(a[20], c[20])
    # All NaN: frames are written, with nothing drawn.
    empty = np.full((5, len(LANDMARK_COLUMNS)), np.nan, np.float32)
    assert rd.render_sequence(empty, tmp_path / "empty.gif") == 5
    assert all(drawn_pixels(img) == 0 for img in gif_frames(tmp_path / "empty.gif"))
    with pytest.raises(rd.RenderError):
        rd.render_sequence(frames, tmp_path / "x.avi")
    with pytest.raises(rd.RenderError):
        rd.render_sequence(frames[:, :10], tmp_path / "x.gif")


def test_phrase_from_kaggle_train_csv(parquet, tmp_path):
    """Kaggle layout: train_landmarks/<file_id>.parquet with train.csv one folder up."""
    path, _, pose_sid = parquet
    seq = read_sequences(path, sequence_ids=[pose_sid])[pose_sid]
    (tmp_path / "train_landmarks").mkdir()
    pq_path = tmp_path / "train_landmarks" / "5414471.parquet"
    write_landmarks_parquet({1816796431: seq}, pq_path)
    pd.DataFrame({"path": ["train_landmarks/5414471.parquet"], "file_id": [5414471],
                  "sequence_id": [1816796431], "participant_id": [217],
                  "phrase": ["3 creekhouse"]}).to_csv(tmp_path / "train.csv", index=False)
    assert rd.find_phrase(pq_path, 1816796431) == "3 creekhouse"
    assert rd.find_phrase(pq_path, 1) is None
    info = rd.render_from_parquet(pq_path, None, tmp_path / "k.gif")  # default: first sequence
    assert info["sequence_id"] == 1816796431 and info["phrase"] == "3 creekhouse"
