"""fingerspell.video.extract and fingerspell.data.parquet on real recordings.

The real data (a selfie video and two short pose-format files of MediaPipe
Holistic landmarks) lives in tests/fixtures (see its README.md).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fingerspell import cli
from fingerspell.video import extract as ex
from fingerspell.data.parquet import list_sequence_ids, read_sequences, write_landmarks_parquet
from fingerspell.data.schema import LANDMARK_COLUMNS, PARQUET_COLUMNS, PARTS

from tests.fixtures import fixture, require

VIDEO = fixture("signer_selfie.mp4")  # 58 frames
POSE_A = fixture("0ff215ef_right_hand.pose")  # right hand only: 14 frames, the hand in 10
POSE_B = fixture("7bd6dd48_left_hand.pose")  # left hand only: 14 frames, the hand in 13

_N = sum(n for _, n in PARTS)
_OFF = {}
_o = 0
for _p, _n in PARTS:
    _OFF[_p] = _o
    _o += _n


def part_block(frames: np.ndarray, part: str) -> np.ndarray:
    """[T, n, 3] values of one part from [T, 1629] rows (coordinate-major layout)."""
    n = dict(PARTS)[part]
    return np.stack([frames[:, c * _N + _OFF[part]: c * _N + _OFF[part] + n] for c in range(3)], axis=-1)


def present(frames: np.ndarray, part: str) -> np.ndarray:
    return ~np.isnan(part_block(frames, part)).all(axis=(1, 2))


def pose_component(path: Path, name: str):
    """(xyz [T, n, 3], confidence [T, n], width, height) of one component, read directly."""
    from pose_format import Pose

    pose = Pose.read(path.read_bytes())
    offset = 0
    for comp in pose.header.components:
        n = len(comp.points)
        if comp.name == name:
            data = np.ma.getdata(pose.body.data)[:, 0, offset:offset + n]
            conf = np.ma.getdata(pose.body.confidence)[:, 0, offset:offset + n]
            return data, conf, pose.header.dimensions.width, pose.header.dimensions.height
        offset += n
    raise KeyError(name)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """One extraction of the video and both pose files (the expensive part, done once)."""
    require(VIDEO, POSE_A, POSE_B)
    out = tmp_path_factory.mktemp("extract") / "real.parquet"
    summary = ex.extract([VIDEO, POSE_A, POSE_B], out, phrase="real test", progress=False)
    assert not summary.failed, summary.failed
    by_input = {Path(v["input"]).name: sid for sid, v in summary.sequences.items()}
    return out, summary, by_input


@pytest.mark.slow
@pytest.mark.video
def test_parquet_layout_is_kaggles(extracted):
    out, summary, _ = extracted
    df = pd.read_parquet(out)
    assert df.index.name == "sequence_id"
    assert df.index.dtype == np.int64
    assert tuple(df.columns) == PARQUET_COLUMNS  # frame, then the 1629 in exact order
    assert df["frame"].dtype == np.int16
    assert (df.dtypes.iloc[1:] == np.float32).all()
    assert len(df) == 58 + 14 + 14
    # The index column is stored first, and projection by name works.
    schema = pq.read_schema(out)
    assert schema.names[:3] == ["sequence_id", "frame", "x_face_0"]
    t = pq.read_table(out, columns=["sequence_id", "x_right_hand_8", "z_pose_16"])
    assert t.num_rows == len(df) and t.column_names == ["sequence_id", "x_right_hand_8", "z_pose_16"]
    # Each sequence's rows are contiguous and numbered 0..T-1.
    ids = df.index.to_numpy()
    assert len(list_sequence_ids(out)) == 3 == (np.diff(ids) != 0).sum() + 1
    for sid in summary.sequences:
        assert (df.loc[sid, "frame"].to_numpy() == np.arange(summary.sequences[sid]["frames"])).all()


@pytest.mark.slow
@pytest.mark.video
def test_video_landmarks(extracted):
    out, summary, by_input = extracted
    sid = by_input[VIDEO.name]
    assert sid == ex.sequence_id_for(VIDEO.name)  # deterministic id from the name
    frames = read_sequences(out)[sid]
    assert frames.shape == (58, 1629) and frames.dtype == np.float32
    assert present(frames, "pose").all()
    assert present(frames, "face").all()
    right = present(frames, "right_hand")
    assert right.sum() >= 10
    assert not right.all()  # the hand leaves the frame: detection really varies
    for hand in ("left_hand", "right_hand"):
        block = part_block(frames, hand)
        nan_per_frame = np.isnan(block).reshape(len(block), -1).sum(axis=1)
        assert set(np.unique(nan_per_frame)) <= {0, 63}, "a hand must be NaN as a whole block"
    # Pose and face points are never NaN; x, y are normalized image coordinates.
    assert not np.isnan(part_block(frames, "pose")).any()
    hand_xy = part_block(frames, "right_hand")[right][..., :2]
    assert -0.1 < np.min(hand_xy) and np.max(hand_xy) < 1.1
    face_xy = part_block(frames, "face")[..., :2]
    assert 0.0 < np.min(face_xy) and np.max(face_xy) < 1.0
    # z is MediaPipe's relative depth: small numbers around 0, not pixels.
    assert np.nanmax(np.abs(part_block(frames, "right_hand")[..., 2])) < 1.0
    assert summary.sequences[sid]["right_hand"] == right.sum()


@pytest.mark.slow
@pytest.mark.video
@pytest.mark.parametrize("pose_path, hand, other", [(POSE_A, "right_hand", "left_hand"),
                                                    (POSE_B, "left_hand", "right_hand")])
def test_pose_import(extracted, pose_path, hand, other):
    out, _, by_input = extracted
    frames = read_sequences(out, sequence_ids=[by_input[pose_path.name]])[by_input[pose_path.name]]
    comp = {"right_hand": "RIGHT_HAND_LANDMARKS", "left_hand": "LEFT_HAND_LANDMARKS"}
    data, conf, width, height = pose_component(pose_path, comp[hand])
    expected_present = (conf > 0).any(axis=1)
    assert frames.shape == (len(conf), 1629)
    assert (present(frames, hand) == expected_present).all()
    assert not present(frames, other).any()
    if pose_path == POSE_A:
        assert frames.shape[0] == 14 and expected_present.sum() == 10
    else:
        assert frames.shape[0] == 14 and expected_present.sum() == 13
    # x / width, y / height, z as stored.
    block = part_block(frames, hand)[expected_present]
    np.testing.assert_allclose(block[..., 0], data[expected_present][..., 0] / width, rtol=1e-6)
    np.testing.assert_allclose(block[..., 1], data[expected_present][..., 1] / height, rtol=1e-6)
    np.testing.assert_allclose(block[..., 2], data[expected_present][..., 2], rtol=1e-6)
    # Normalized: in [0, 1] up to fingertips slightly past the frame edge (never pixels).
    assert -0.1 < block[..., :2].min() and block[..., :2].max() < 1.1
    assert 0.0 < np.median(block[..., :2]) < 1.0
    assert present(frames, "pose").all() and present(frames, "face").all()
    face = part_block(frames, "face")[..., :2]
    assert 0.0 < face.min() and face.max() < 1.0


@pytest.mark.slow
@pytest.mark.video
def test_csv_beside_parquet(extracted):
    out, summary, _ = extracted
    csv_path = out.with_suffix(".csv")
    assert summary.csv == csv_path
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "file_id", "sequence_id", "participant_id", "phrase"]
    assert [int(r["sequence_id"]) for r in rows] == list_sequence_ids(out).tolist()
    for r in rows:
        assert (csv_path.parent / r["path"]).resolve() == out.resolve()
        assert r["phrase"] == "real test"
        assert int(r["file_id"]) == ex.file_id_for(out) and int(r["participant_id"]) == -1


@pytest.mark.slow
@pytest.mark.video
def test_bad_inputs_are_reported_and_the_rest_written(tmp_path, capsys):
    import cv2

    require(VIDEO, POSE_A)
    folder = tmp_path / "frames"
    folder.mkdir()
    cap = cv2.VideoCapture(str(VIDEO))
    for i in range(6):
        ok, image = cap.read()
        assert ok
        cv2.imwrite(str(folder / f"f{i}.png"), image)  # f0..f5: natural order == write order
    cap.release()
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n")
    corrupt_pose = tmp_path / "broken.pose"
    corrupt_pose.write_bytes(POSE_A.read_bytes()[:300])
    missing = tmp_path / "missing.avi"
    bad_folder = tmp_path / "bad_frames"
    bad_folder.mkdir()
    (bad_folder / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out" / "mixed.parquet"

    rc = cli.main(["extract", str(not_video), str(missing), str(folder), str(corrupt_pose), str(bad_folder),
                   "--out", str(out), "--no-progress", "--phrase", "abc"])
    err = capsys.readouterr().err
    assert rc == 1
    for bad in (not_video, missing, corrupt_pose, bad_folder / "0.png"):
        assert str(bad) in err
    assert "not a readable video" in err and "not a readable .pose" in err
    assert "not a readable image" in err
    assert "4 of 5 input(s) failed" in err
    # The folder of images was still extracted, as one sequence of 6 frames.
    seqs = read_sequences(out)
    assert list(seqs) == [ex.sequence_id_for("frames")]
    frames = seqs[ex.sequence_id_for("frames")]
    assert frames.shape == (6, 1629)
    assert present(frames, "pose").all() and present(frames, "face").all()
    assert out.with_suffix(".csv").is_file()
    # No temporary files are left behind.
    assert sorted(p.name for p in out.parent.iterdir()) == ["mixed.csv", "mixed.parquet"]


@pytest.mark.video
def test_nothing_written_when_every_input_fails(tmp_path, capsys):
    out = tmp_path / "none.parquet"
    rc = cli.main(["extract", str(tmp_path / "nope.mp4"), "--out", str(out), "--no-progress"])
    assert rc == 1
    assert "nope.mp4" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "x.parquet"
    good = {1: np.zeros((2, 1629), np.float32)}
    write_landmarks_parquet(good, path)
    before = path.read_bytes()

    def failing():
        yield 2, np.ones((3, 1629), np.float32)
        raise RuntimeError("generator broke")

    with pytest.raises(RuntimeError):
        write_landmarks_parquet(failing(), path, rows_per_group=1)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]
    with pytest.raises(ValueError):
        write_landmarks_parquet({3: np.zeros((2, 10))}, tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()


def test_read_sequences_groups_and_orders_by_frame(tmp_path):
    """Rows interleaved and out of frame order (as a foreign writer might leave them)."""
    rng = np.random.default_rng(0)
    cols = ["x_right_hand_0", "y_pose_15"]
    sids = np.array([7] * 4 + [3] * 5, np.int64)
    frame = np.array(list(range(4)) + list(range(5)), np.int16)
    values = np.full((len(sids), len(LANDMARK_COLUMNS)), np.nan, np.float32)
    values[:, LANDMARK_COLUMNS.index("x_right_hand_0")] = sids * 100 + frame
    values[:, LANDMARK_COLUMNS.index("y_pose_15")] = -(sids * 100 + frame)
    df = pd.concat([pd.DataFrame({"sequence_id": sids, "frame": frame}),
                    pd.DataFrame(values, columns=list(LANDMARK_COLUMNS))], axis=1)
    df = df.iloc[rng.permutation(len(df))].set_index("sequence_id")
    path = tmp_path / "shuffled.parquet"
    df.to_parquet(path)
    seqs = read_sequences(path, cols)
    assert sorted(seqs) == [3, 7]
    np.testing.assert_array_equal(seqs[7][:, 0], 700 + np.arange(4))
    np.testing.assert_array_equal(seqs[3][:, 1], -(300 + np.arange(5)))
    assert read_sequences(path, cols, sequence_ids=[3, 99]).keys() == {3}
    with pytest.raises(KeyError):
        read_sequences(path, ["x_no_such_column"])
    # Without a frame column (preprocess accepts such files too) a sequence's rows stay in file order.
    df.sort_index(kind="stable").drop(columns="frame").to_parquet(tmp_path / "no_frame.parquet")
    seqs = read_sequences(tmp_path / "no_frame.parquet", cols)
    expected = df.sort_index(kind="stable").loc[7, "x_right_hand_0"].to_numpy()
    np.testing.assert_array_equal(seqs[7][:, 0], expected)


def test_sequence_ids_are_deterministic_and_unique(tmp_path):
    require(POSE_B)
    assert ex.sequence_id_for("signer_selfie.mp4") == ex.sequence_id_for("signer_selfie.mp4")
    assert 0 <= ex.sequence_id_for("a") < 2**31
    assert ex.file_id_for("train_landmarks/1019715464.parquet") == 1019715464
    # Same file name in two folders: the second takes the next free id.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "clip.pose").write_bytes(POSE_B.read_bytes())
    summary = ex.extract([tmp_path / "a" / "clip.pose", tmp_path / "b" / "clip.pose"],
                         tmp_path / "two.parquet", progress=False)
    first = ex.sequence_id_for("clip.pose")
    assert list(summary.sequences) == [first, first + 1]
    seqs = read_sequences(tmp_path / "two.parquet")
    np.testing.assert_array_equal(seqs[first], seqs[first + 1])
    with open(tmp_path / "two.csv", newline="") as f:
        assert [r["phrase"] for r in csv.DictReader(f)] == ["", ""]
