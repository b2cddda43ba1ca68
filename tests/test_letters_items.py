"""fingerspell.letters.items on real data: class folders and every input kind -> hand landmarks.

Fixtures (tests/fixtures/letters, see its README.md): three real webcam images (A: one hand; B and O: the
signing hand and a resting hand at the bottom edge; MediaPipe lists O's resting hand first) and six
consecutive real MediaPipe Hands frames (.npy) each of A and B; plus the selfie video and the two .pose
files of tests/fixtures. Tests that run MediaPipe (and those that read .pose, also the video extra) are
marked `video`.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fingerspell.data.schema import N_POINTS, PART_OFFSETS
from fingerspell.letters import items as it
from fingerspell.letters.items import (
    HandExtractor, LandmarkCache, LettersDataError, class_folders, read_item, read_items,
)

from tests.fixtures import fixture, require

LETTERS = fixture("letters")
IMAGE_A, IMAGE_B, IMAGE_O = (LETTERS / "images" / f"{c}.jpg" for c in "ABO")
NPY_A = [LETTERS / "landmarks" / "A" / f"frame_{i}.npy" for i in range(6)]
NPY_B = [LETTERS / "landmarks" / "B" / f"frame_{i}.npy" for i in range(6)]
VIDEO = fixture("signer_selfie.mp4")  # 58 frames, a hand in about 20
POSE_RIGHT = fixture("0ff215ef_right_hand.pose")  # 14 frames, right hand in the last 10
POSE_LEFT = fixture("7bd6dd48_left_hand.pose")  # 14 frames, left hand in 13

video = pytest.mark.video


class CountingExtractor(HandExtractor):
    """A HandExtractor that counts its MediaPipe calls."""

    def __init__(self) -> None:
        super().__init__()
        self.images = self.clips = 0

    def image(self, rgb):
        self.images += 1
        return super().image(rgb)

    def clip(self, frames):
        self.clips += 1
        return super().clip(frames)

    @property
    def calls(self) -> int:
        return self.images + self.clips


@pytest.fixture(scope="module")
def extractor():
    with CountingExtractor() as ex:
        yield ex


@pytest.fixture(scope="module")
def reference_hands():
    """MediaPipe Hands with the documented image settings, independent of the code under test."""
    import mediapipe as mp

    with mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=2, model_complexity=1,
                                  min_detection_confidence=0.5) as hands:
        yield hands


def npy_clip(paths: list[Path]) -> np.ndarray:
    return np.stack([np.load(p) for p in paths])  # [T, 63] float64


def link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src.resolve())
    return dst


def assert_no_landmarks(item, problem_start: str) -> None:
    assert item.landmarks.shape == (0, 21, 3) and item.handedness.shape == (0,)
    assert item.problem is not None and item.problem.startswith(problem_start), item.problem


# ---------------------------------------------------------------------------
# Class folders


def test_class_folders_lists_items_in_natural_order(tmp_path, caplog):
    require(IMAGE_A, *NPY_A)
    root = tmp_path / "data"
    for i in (10, 2, 1):
        link(NPY_A[i % 6], root / "A" / f"frame_{i}.npy")
    link(IMAGE_A, root / "A" / "photo.JPG")
    (root / "A" / "clip2").mkdir()
    (root / "A" / ".DS_Store").write_text("x")
    (root / "A" / "notes.txt").write_text("not an item")
    link(IMAGE_B, root / "10" / "b.jpg")
    link(IMAGE_B, root / "2" / "b.png")
    (root / ".cache").mkdir()
    (root / "README.md").write_text("loose files beside the class folders are fine")
    with caplog.at_level(logging.WARNING, logger=it.__name__):
        folders = class_folders(root)
    assert list(folders) == ["2", "10", "A"]
    assert [p.name for p in folders["A"]] == ["clip2", "frame_1.npy", "frame_2.npy", "frame_10.npy", "photo.JPG"]
    assert "notes.txt" in caplog.text and ".DS_Store" not in caplog.text


def test_missing_data_dir(tmp_path):
    with pytest.raises(LettersDataError, match="no such folder") as e:
        class_folders(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(LettersDataError, match="not a folder"):
        class_folders(tmp_path / "file.jpg")


def test_data_dir_without_class_folders(tmp_path):
    require(IMAGE_A)
    link(IMAGE_A, tmp_path / "a.jpg")
    with pytest.raises(LettersDataError, match="no class folders") as e:
        class_folders(tmp_path)
    assert str(tmp_path) in str(e.value) and "1 item file(s) must go into class folders" in str(e.value)


def test_empty_class_folders_are_named(tmp_path):
    require(IMAGE_A)
    link(IMAGE_A, tmp_path / "A" / "a.jpg")
    (tmp_path / "B").mkdir()
    (tmp_path / "C").mkdir()
    (tmp_path / "C" / "notes.txt").write_text("not an item")
    with pytest.raises(LettersDataError, match="without items") as e:
        class_folders(tmp_path)
    named = str(e.value).rsplit("): ", 1)[1].split(", ")
    assert named == [str(tmp_path / "B"), str(tmp_path / "C")]


# ---------------------------------------------------------------------------
# .npy: landmarks already (no MediaPipe)


@pytest.mark.parametrize("shape", [(63,), (21, 3), (6, 63), (6, 21, 3)])
def test_npy_accepted_shapes(tmp_path, shape):
    require(*NPY_A)
    clip = npy_clip(NPY_A)  # [6, 63]: x0 y0 z0 x1 ... per frame
    frames = 1 if np.prod(shape) == 63 else 6
    path = tmp_path / "a.npy"
    np.save(path, clip[:frames].reshape(shape))
    item = read_item(path, "A", extractor=None, cache=None)
    assert (item.kind, item.label, item.problem, item.frames_total) == ("npy", "A", None, frames)
    assert item.landmarks.dtype == np.float32 and item.landmarks.shape == (frames, 21, 3)
    np.testing.assert_allclose(item.landmarks, clip[:frames].reshape(frames, 21, 3), rtol=1e-6)
    assert item.landmarks[..., :2].min() >= 0 and item.landmarks[..., :2].max() <= 1  # x, y image-normalised
    np.testing.assert_array_equal(item.handedness, np.zeros(frames, np.float32))


def test_npy_real_frame_file():
    require(NPY_B[0])
    item = read_item(NPY_B[0], "B", extractor=None, cache=None)
    assert item.landmarks.shape == (1, 21, 3) and item.frames_total == 1 and item.problem is None


def test_npy_nan_frames_are_dropped(tmp_path):
    require(*NPY_B)
    clip = npy_clip(NPY_B)
    clip[[1, 4], 7] = np.nan
    np.save(tmp_path / "b.npy", clip)
    item = read_item(tmp_path / "b.npy", "B", extractor=None, cache=None)
    assert item.frames_total == 6 and item.problem is None
    np.testing.assert_allclose(item.landmarks, clip[[0, 2, 3, 5]].reshape(4, 21, 3), rtol=1e-6)
    np.save(tmp_path / "nan.npy", np.full(63, np.nan))
    assert_no_landmarks(read_item(tmp_path / "nan.npy", "B", None, None), "all of its 1 frames have NaN")


@pytest.mark.parametrize("data", [np.zeros(62), np.zeros((4, 21, 2)), np.zeros((2, 3, 21, 3)), np.zeros(())])
def test_npy_wrong_shape(tmp_path, data, caplog):
    path = tmp_path / "bad.npy"
    np.save(path, data)
    with caplog.at_level(logging.WARNING, logger=it.__name__):
        item = read_item(path, "A", extractor=None, cache=None)
    assert_no_landmarks(item, "expected 63 values (21 points x, y, z) per frame")
    assert f"got shape {data.shape}" in item.problem
    assert str(path) in caplog.text  # the warning names the file


def test_npy_not_numbers_or_not_npy(tmp_path):
    np.save(tmp_path / "text.npy", np.array(["a"] * 63))
    assert_no_landmarks(read_item(tmp_path / "text.npy", "A", None, None), "expected numbers")
    (tmp_path / "junk.npy").write_bytes(os.urandom(200))
    assert_no_landmarks(read_item(tmp_path / "junk.npy", "A", None, None), "not a readable .npy file")


def test_npy_is_not_cached(tmp_path):
    require(NPY_A[0])
    cache = LandmarkCache(tmp_path / "cache")
    read_item(NPY_A[0], "A", None, cache)
    assert not cache.folder.exists() or not any(cache.folder.iterdir())


def test_landmark_items_never_load_mediapipe(monkeypatch, capsys):
    """HandExtractor creates MediaPipe only for images and clips; progress goes to stderr."""
    require(*NPY_A, *NPY_B)

    def no_mediapipe(*args, **kwargs):
        raise AssertionError("MediaPipe created for .npy items")

    monkeypatch.setattr(it, "_hands", no_mediapipe)
    items = read_items({"A": NPY_A, "B": NPY_B[:2], None: [NPY_B[2]]}, cache=None, progress=True)
    assert [i.label for i in items] == ["A"] * 6 + ["B"] * 2 + [None]
    assert all(i.problem is None and i.landmarks.shape == (1, 21, 3) for i in items)
    assert "landmarks" in capsys.readouterr().err


def test_missing_and_unsupported_inputs(tmp_path):
    assert_no_landmarks(read_item(tmp_path / "gone.jpg", None, None, None), "no such file")
    (tmp_path / "notes.txt").write_text("hello")
    item = read_item(tmp_path / "notes.txt", None, None, None)
    assert item.kind == it.UNKNOWN_KIND
    assert_no_landmarks(item, "not one of")


# ---------------------------------------------------------------------------
# .pose (pose-format is part of the video extra; no MediaPipe run)


def hand_rows(left: np.ndarray | None, right: np.ndarray | None) -> np.ndarray:
    """One Kaggle-layout row [1, 1629] with the given [21, 3] hands (others NaN)."""
    row = np.full((1, 3 * N_POINTS), np.nan, np.float32)
    for part, hand in (("left_hand", left), ("right_hand", right)):
        if hand is not None:
            for c in range(3):
                start = c * N_POINTS + PART_OFFSETS[part]
                row[0, start:start + 21] = hand[:, c]
    return row


def test_signing_hands_picks_the_higher_hand():
    rng = np.random.default_rng(0)
    high, low = rng.random((21, 3)) * 0.3, rng.random((21, 3)) * 0.3 + 0.6
    partial = high.copy()
    partial[3, 1] = np.nan  # an incomplete hand does not count
    rows = np.concatenate([hand_rows(high, low), hand_rows(low, high), hand_rows(None, low),
                           hand_rows(None, None), hand_rows(partial, low)])
    got = it.signing_hands(rows)
    np.testing.assert_allclose(got, np.stack([high, high, low, low]).astype(np.float32))


@video
def test_pose_items():
    require(POSE_RIGHT, POSE_LEFT)
    for path, hands in ((POSE_RIGHT, 10), (POSE_LEFT, 13)):
        item = read_item(path, "X", extractor=None, cache=None)
        assert (item.kind, item.problem, item.frames_total) == ("pose", None, 14)
        assert item.landmarks.shape == (hands, 21, 3) and np.isfinite(item.landmarks).all()
        assert item.landmarks[..., :2].min() > -0.5 and item.landmarks[..., :2].max() < 1.5  # normalised
        np.testing.assert_array_equal(item.handedness, 0)


@video
def test_pose_without_hands_and_unreadable_pose(tmp_path):
    from tests.fixtures.make_fixtures import cut_pose

    require(POSE_RIGHT)
    (tmp_path / "empty.pose").write_bytes(cut_pose(POSE_RIGHT.read_bytes(), 0, 4))  # before the hand shows
    item = read_item(tmp_path / "empty.pose", "X", None, None)
    assert item.frames_total == 4
    assert_no_landmarks(item, "no hand found in any of its 4 frames")
    (tmp_path / "junk.pose").write_bytes(os.urandom(300))
    assert_no_landmarks(read_item(tmp_path / "junk.pose", "X", None, None), "not a readable .pose file")


# ---------------------------------------------------------------------------
# MediaPipe: images, videos, folders of frames


@video
def test_image_one_hand(extractor):
    require(IMAGE_A)
    item = read_item(IMAGE_A, "A", extractor, None)
    assert (item.kind, item.problem, item.frames_total) == ("image", None, 1)
    assert item.landmarks.shape == (1, 21, 3) and item.landmarks.dtype == np.float32
    assert item.handedness.tolist() == [1.0]  # MediaPipe labels her hand "Left"


@video
@pytest.mark.parametrize("image", [IMAGE_B, IMAGE_O], ids=["B", "O"])
def test_image_two_hands_keeps_the_higher(extractor, reference_hands, image):
    """B and O show the signing hand and a resting hand at the bottom edge; MediaPipe lists O's resting hand first."""
    import cv2

    require(image)
    result = reference_hands.process(cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB))
    hands = [np.array([(p.x, p.y, p.z) for p in lm.landmark], np.float32) for lm in result.multi_hand_landmarks]
    labels = [h.classification[0].label for h in result.multi_handedness]
    assert len(hands) == 2
    mean_y = [h[:, 1].mean() for h in hands]
    signing = int(np.argmin(mean_y))
    assert mean_y[signing] < 0.5 and mean_y[1 - signing] > 0.9  # chest height vs the bottom edge
    if image == IMAGE_O:
        assert signing == 1  # the rule, not MediaPipe's order, picks it

    item = read_item(image, image.stem, extractor, None)
    assert item.problem is None and item.landmarks.shape == (1, 21, 3)
    np.testing.assert_allclose(item.landmarks[0], hands[signing], atol=1e-6)
    assert item.handedness[0] == {"Left": 1.0, "Right": -1.0}[labels[signing]]


@video
def test_bad_images(extractor, tmp_path):
    import cv2

    (tmp_path / "junk.jpg").write_bytes(os.urandom(2000))
    item = read_item(tmp_path / "junk.jpg", "A", extractor, None)
    assert item.frames_total == 0
    assert_no_landmarks(item, "unreadable image")
    cv2.imwrite(str(tmp_path / "black.png"), np.zeros((480, 640, 3), np.uint8))
    item = read_item(tmp_path / "black.png", "A", extractor, None)
    assert item.frames_total == 1
    assert_no_landmarks(item, "no hand found")


@pytest.fixture(scope="module")
def video_item(extractor):
    require(VIDEO)
    return read_item(VIDEO, "V", extractor, None)


@video
def test_video(video_item, extractor):
    item = video_item
    assert (item.kind, item.problem, item.frames_total) == ("video", None, 58)
    assert 15 <= len(item.landmarks) <= 30 and item.landmarks.shape[1:] == (21, 3)
    assert set(item.handedness.tolist()) <= {1.0, -1.0}
    again = read_item(VIDEO, "V", extractor, None)  # a fresh tracker: the same result again
    np.testing.assert_array_equal(again.landmarks, item.landmarks)


@video
def test_frames_folder_matches_the_video(video_item, extractor, tmp_path, caplog):
    """The video's frames as PNGs named frame_0 ... frame_57 (natural order matters), plus one broken file."""
    import cv2

    from fingerspell.video.extract import _video_frames

    folder = tmp_path / "clip"
    folder.mkdir()
    frames, _ = _video_frames(VIDEO)
    for i, bgr in enumerate(frames):
        cv2.imwrite(str(folder / f"frame_{i}.png"), bgr)
    (folder / "frame_99.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING, logger=it.__name__):
        item = read_item(folder, "V", extractor, None)
    assert (item.kind, item.problem, item.frames_total) == ("frames", None, 58)
    assert "frame_99.png" in caplog.text
    np.testing.assert_array_equal(item.landmarks, video_item.landmarks)
    np.testing.assert_array_equal(item.handedness, video_item.handedness)


@video
def test_bad_clips(extractor, tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    assert_no_landmarks(read_item(tmp_path / "notes.mp4", "V", extractor, None), "not a readable video")
    (tmp_path / "empty").mkdir()
    assert_no_landmarks(read_item(tmp_path / "empty", "V", extractor, None), "no images")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "0.jpg").write_bytes(os.urandom(100))
    assert_no_landmarks(read_item(tmp_path / "broken", "V", extractor, None), "no frame could be read")


# ---------------------------------------------------------------------------
# A whole tree, and the cache


@video
def test_tree_and_cache(tmp_path, caplog):
    require(IMAGE_A, IMAGE_B, VIDEO, POSE_LEFT, *NPY_A, *NPY_B)
    root = tmp_path / "data"
    link(IMAGE_A, root / "A" / "a.jpg")
    for p in NPY_A:
        link(p, root / "A" / p.name)
    link(IMAGE_B, root / "B" / "b.jpg")
    link(NPY_B[0], root / "B" / "b.npy")
    link(VIDEO, root / "V" / "selfie.mp4")
    link(POSE_LEFT, root / "V" / "left.pose")
    (root / "V" / "junk.jpg").write_bytes(os.urandom(500))
    folders = class_folders(root)
    cache = LandmarkCache(tmp_path / "cache")

    with CountingExtractor() as first:
        items = read_items(folders, cache, extractor=first)
    assert [(i.label, i.path.name, i.kind) for i in items] == [
        ("A", "a.jpg", "image"), *[("A", p.name, "npy") for p in NPY_A],
        ("B", "b.jpg", "image"), ("B", "b.npy", "npy"),
        ("V", "junk.jpg", "image"), ("V", "left.pose", "pose"), ("V", "selfie.mp4", "video")]
    assert (first.images, first.clips) == (2, 1)  # the junk image never reaches MediaPipe
    assert [i.problem is None for i in items] == [True] * 9 + [False, True, True]
    entries = sorted(cache.folder.glob("*.npz"))
    assert len(entries) == 5  # 3 images (one unreadable), the pose, the video; no .npy

    with CountingExtractor() as second, caplog.at_level(logging.WARNING, logger=it.__name__):
        again = read_items(folders, cache, extractor=second)
    assert second.calls == 0
    assert "junk.jpg: unreadable image" in caplog.text  # still reported from the cache
    for a, b in zip(items, again):
        fields = ("path", "label", "kind", "frames_total", "problem")
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
        np.testing.assert_array_equal(a.handedness, b.handedness)

    video_entry = cache.entry(root / "V" / "selfie.mp4", "video")
    video_entry.write_bytes(b"corrupt")
    with CountingExtractor() as third:
        third_items = read_items(folders, cache, extractor=third)
    assert (third.images, third.clips) == (0, 1)
    np.testing.assert_array_equal(third_items[-1].landmarks, items[-1].landmarks)
    with np.load(video_entry) as z:  # rewritten
        assert z["landmarks"].shape == items[-1].landmarks.shape

    image_b = root / "B" / "b.jpg"
    image_b.unlink()
    shutil.copy(IMAGE_B, image_b)  # a changed file (new size/mtime) misses the cache
    with CountingExtractor() as fourth:
        read_items({"B": [image_b]}, cache, extractor=fourth)
    assert (fourth.images, fourth.clips) == (1, 0)
