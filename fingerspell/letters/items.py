"""Class folders and inputs -> hand landmarks: the input side of `fingerspell letters`.

An item is one example: a class folder's entry when training or evaluating, an input when predicting.

* image (png, jpg, ...): MediaPipe Hands in static-image mode, one frame;
* video (mp4, avi, mov, mkv, webm, m4v) or a folder of frames (images in natural name order): MediaPipe
  Hands in tracking mode, a fresh tracker per clip, so one clip's tracking never carries into the next;
* `.pose` (pose-format, MediaPipe Holistic components): its hand components, no MediaPipe run;
* `.npy`: landmarks already, 63 values (21 points x, y, z in MediaPipe's order) per frame.

The signing hand: where a frame shows two hands, the one highest in the image (smallest mean y) is kept.
Fingerspelling is held at chest or face height while the other hand rests lower (in the SILFA webcam
images it lies at the bottom edge), and MediaPipe's order of the hands says nothing about which signs.

Handedness per frame: +1 where MediaPipe Hands labelled the kept hand "Left", -1 "Right" (its labels
assume a mirrored, selfie camera); 0 where unknown: `.npy`, and `.pose`, whose Holistic left/right is the
body's side, not the Hands label.

A bad item never stops a run: it comes back with no frames and `problem` saying why (the item's `path`
names it), and a warning is logged. Extracted items are cached (`LandmarkCache`) so a second run over
the same files does not run MediaPipe again.
"""
from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fingerspell.data.schema import part_columns
from fingerspell.files import atomic_path
from fingerspell.video.extract import (  # _natural_key, _video_frames: private, shared on purpose
    IMAGE_SUFFIXES,
    POSE_SUFFIX,
    ExtractError,
    _natural_key,
    _video_frames,
    image_files,
    landmarks_from_pose,
)

logger = logging.getLogger(__name__)

HAND_POINTS = 21
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
NPY_SUFFIX = ".npy"
KINDS = ("image", "video", "frames", "pose", "npy")
#: The kind of an item that is none of KINDS (a missing path or an unsupported file); it always has a problem.
UNKNOWN_KIND = "unknown"
#: Part of every cache key: bump it when extraction changes (settings, hand choice) so old entries miss.
EXTRACTOR_VERSION = 1

_CACHED_KINDS = frozenset({"image", "video", "frames", "pose"})
_HANDEDNESS = {"Left": 1.0, "Right": -1.0}
_ITEMS_WANTED = "images, videos, folders of frames, .pose or .npy files"


#: The problem of a readable item in which MediaPipe found no hand (a clip's adds "in any of its N frames").
NO_HAND = "no hand found"


def found_no_hand(item: "Item") -> bool:
    """Readable, but without a hand: what a "nothing" class is made of (not an unreadable file)."""
    return bool(item.problem) and item.problem.startswith(NO_HAND)


class LettersDataError(ValueError):
    """Input that stops the command (a missing data folder, an empty class folder); the message names it."""


@dataclass
class Item:
    path: Path  # the file or folder the item came from
    label: str | None  # class folder name; None for predict inputs
    kind: str  # one of KINDS, or UNKNOWN_KIND
    landmarks: np.ndarray  # [T, 21, 3] float32: only the frames where a hand was found (T may be 0)
    handedness: np.ndarray  # [T] float32: +1 "Left", -1 "Right", 0 unknown
    frames_total: int  # frames read from the input (an image: 1)
    problem: str | None = None  # why it has no landmarks, else None


def _no_frames() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, HAND_POINTS, 3), np.float32), np.zeros(0, np.float32)


def _failed(path: Path, label: str | None, kind: str, problem: str, frames_total: int = 0) -> Item:
    landmarks, handedness = _no_frames()
    return Item(path, label, kind, landmarks, handedness, frames_total, problem)


def _reason(error: Exception, path: Path) -> str:
    """An ExtractError's message without its leading "<path>: " (the item carries the path)."""
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


# ---------------------------------------------------------------------------
# Class folders


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def item_kind(path: Path) -> str | None:
    """The kind of item `path` is (a folder: "frames"), or None for anything else."""
    path = Path(path)
    if path.is_dir():
        return "frames"
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix == POSE_SUFFIX:
        return "pose"
    if suffix == NPY_SUFFIX:
        return "npy"
    return None


def _natural(paths: Iterable[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: _natural_key(p.name))


def class_folders(data_dir: Path) -> dict[str, list[Path]]:
    """label -> item paths in natural name order, from DATA_DIR/<label>/<item>.

    Items are the entries directly inside a class folder: image, video, .pose and .npy files, and
    sub-folders (a folder of frames is one clip). Hidden entries are skipped; other files are skipped
    with one warning per class folder. Raises LettersDataError when data_dir is missing or not a
    folder, has no class folders, or a class folder has no items (all such folders are named).
    """
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise LettersDataError(f"{data_dir}: no such folder")
    if not data_dir.is_dir():
        raise LettersDataError(f"{data_dir}: not a folder (expected a folder with one sub-folder per class)")
    folders = _natural(p for p in data_dir.iterdir() if p.is_dir() and not _hidden(p))
    if not folders:
        loose = sum(1 for p in data_dir.iterdir() if not _hidden(p) and item_kind(p))
        hint = f"; its {loose} item file(s) must go into class folders" if loose else ""
        raise LettersDataError(
            f"{data_dir}: no class folders (expected one sub-folder per class, named by its label{hint})")
    out: dict[str, list[Path]] = {}
    empty: list[Path] = []
    for folder in folders:
        entries = [p for p in folder.iterdir() if not _hidden(p)]
        items = _natural(p for p in entries if item_kind(p))
        if ignored := _natural(p for p in entries if not item_kind(p)):
            names = ", ".join(p.name for p in ignored[:5]) + (" ..." if len(ignored) > 5 else "")
            logger.warning("%s: ignored %d file(s) that are not %s: %s", folder, len(ignored), _ITEMS_WANTED, names)
        if not items:
            empty.append(folder)
        out[folder.name] = items
    if empty:
        raise LettersDataError(
            f"class folder(s) without items ({_ITEMS_WANTED}): {', '.join(str(p) for p in empty)}")
    return out


# ---------------------------------------------------------------------------
# MediaPipe Hands


def _hands(static_image_mode: bool):
    try:
        import mediapipe as mp  # a few seconds: it loads TensorFlow Lite and its models
    except ImportError as e:  # an environment problem, not a bad item: it stops the run
        raise ImportError(f'mediapipe is not installed ({e}): pip install "fingerspell[video]"') from e
    return mp.solutions.hands.Hands(
        static_image_mode=static_image_mode,
        max_num_hands=2,
        model_complexity=1,
        min_detection_confidence=0.5,
        min_tracking_confidence=0.5,
    )


def highest(hands: list[np.ndarray]) -> int:
    """Index of the signing hand among [21, 3] candidates: the highest in the image (smallest mean y)."""
    return int(np.argmin([h[:, 1].mean() for h in hands]))


def _signing_hand(result) -> tuple[np.ndarray, float] | None:
    """([21, 3], handedness) of the signing hand in one MediaPipe Hands result, None if no hand."""
    if not result.multi_hand_landmarks:
        return None
    hands = [np.array([(p.x, p.y, p.z) for p in lm.landmark], np.float32) for lm in result.multi_hand_landmarks]
    i = highest(hands)
    labels = result.multi_handedness or []
    label = labels[i].classification[0].label if i < len(labels) else ""
    return hands[i], _HANDEDNESS.get(label, 0.0)


class HandExtractor:
    """MediaPipe Hands on RGB frames, created on first use so a run of .npy/.pose items never loads it.

    `image` uses one static-image-mode Hands for all images; `clip` makes a fresh tracking Hands per
    clip. Use as a context manager (or call `close`) to free MediaPipe's graphs.
    """

    def __init__(self) -> None:
        self._static = None

    def __enter__(self) -> HandExtractor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._static is not None:
            self._static.close()
            self._static = None

    def image(self, rgb: np.ndarray) -> tuple[np.ndarray, float] | None:
        """([21, 3], handedness) of the signing hand in one RGB image, None if no hand is found."""
        if self._static is None:
            self._static = _hands(static_image_mode=True)
        return _signing_hand(self._static.process(rgb))

    def clip(self, frames: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
        """Landmarks [T, 21, 3] and handedness [T] of the frames with a hand, and how many RGB frames were read."""
        points: list[np.ndarray] = []
        handedness: list[float] = []
        read = 0
        with _hands(static_image_mode=False) as tracker:
            for rgb in frames:
                read += 1
                if (found := _signing_hand(tracker.process(rgb))) is not None:
                    points.append(found[0])
                    handedness.append(found[1])
        if not points:
            return (*_no_frames(), read)
        return np.stack(points), np.array(handedness, np.float32), read


# ---------------------------------------------------------------------------
# Readers, one per kind


def _read_image(path: Path, label: str | None, extractor: HandExtractor) -> Item:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return _failed(path, label, "image", "unreadable image (OpenCV cannot decode it)")
    found = extractor.image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if found is None:
        return _failed(path, label, "image", NO_HAND, frames_total=1)
    points, hand = found
    return Item(path, label, "image", points[None], np.array([hand], np.float32), 1)


def _clip_item(path: Path, label: str | None, kind: str, extractor: HandExtractor,
               frames: Iterable[np.ndarray]) -> Item:
    landmarks, handedness, read = extractor.clip(frames)
    if read == 0:
        return _failed(path, label, kind, "no frame could be read")
    if len(landmarks) == 0:
        return _failed(path, label, kind, f"{NO_HAND} in any of its {read} frames", frames_total=read)
    return Item(path, label, kind, landmarks, handedness, read)


def _rgb(frames_bgr: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    import cv2

    for bgr in frames_bgr:
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_video(path: Path, label: str | None, extractor: HandExtractor) -> Item:
    try:
        frames, _ = _video_frames(path)
    except ExtractError as e:
        return _failed(path, label, "video", _reason(e, path))
    return _clip_item(path, label, "video", extractor, _rgb(frames))


def _read_frames(path: Path, label: str | None, extractor: HandExtractor) -> Item:
    """A folder of frames is one clip; unreadable frames are skipped with a warning."""
    import cv2

    files = image_files(path)
    if not files:
        return _failed(path, label, "frames", f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    unreadable: list[str] = []

    def frames() -> Iterator[np.ndarray]:
        for f in files:
            bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if bgr is None:
                unreadable.append(f.name)
            else:
                yield bgr

    item = _clip_item(path, label, "frames", extractor, _rgb(frames()))
    if unreadable and item.frames_total:  # (none readable: the problem says so)
        logger.warning("%s: skipped %d unreadable image(s): %s", path, len(unreadable), ", ".join(unreadable[:5]))
    return item


def _part_points(rows: np.ndarray, part: str) -> np.ndarray:
    """[T, 21, 3] points of one hand part of Kaggle-layout rows [T, 1629]."""
    return np.stack([rows[:, part_columns(part, c)] for c in range(3)], axis=-1)


def signing_hands(rows: np.ndarray) -> np.ndarray:
    """The signing hand of each Kaggle-layout row [T, 1629] that has a complete hand: [T', 21, 3].

    A hand counts where all its 63 values are present; where both are, the higher one (see module doc).
    """
    hands = np.stack([_part_points(rows, "left_hand"), _part_points(rows, "right_hand")], axis=1)  # [T, 2, 21, 3]
    present = np.isfinite(hands).all(axis=(2, 3))
    mean_y = np.where(present, hands[..., 1].mean(axis=-1), np.inf)
    pick = np.argmin(mean_y, axis=1)
    chosen = hands[np.arange(len(hands)), pick]
    return chosen[present.any(axis=1)].astype(np.float32)


def _read_pose(path: Path, label: str | None) -> Item:
    try:
        rows = landmarks_from_pose(path, progress=False)
    except ExtractError as e:
        return _failed(path, label, "pose", _reason(e, path))
    landmarks = signing_hands(rows)
    if len(landmarks) == 0:
        return _failed(path, label, "pose", f"{NO_HAND} in any of its {len(rows)} frames", frames_total=len(rows))
    return Item(path, label, "pose", landmarks, np.zeros(len(landmarks), np.float32), len(rows))


def _npy_frames(array: np.ndarray) -> np.ndarray | None:
    """[T, 21, 3] from (63,), (21, 3), (T, 63) or (T, 21, 3); None for any other shape."""
    per_frame = HAND_POINTS * 3
    if array.shape in ((per_frame,), (HAND_POINTS, 3)):
        return array.reshape(1, HAND_POINTS, 3)
    if (array.ndim == 2 and array.shape[1] == per_frame) or (array.ndim == 3 and array.shape[1:] == (HAND_POINTS, 3)):
        return array.reshape(len(array), HAND_POINTS, 3)
    return None


def _read_npy(path: Path, label: str | None) -> Item:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises OSError, ValueError, EOFError, ... on a file that is not .npy
        return _failed(path, label, "npy", f"not a readable .npy file ({type(e).__name__}: {e})")
    if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
        return _failed(path, label, "npy", "not a .npy array (an .npz archive?)")
    if array.dtype.kind not in "fiu":
        return _failed(path, label, "npy", f"expected numbers, got dtype {array.dtype}")
    frames = _npy_frames(array)
    if frames is None:
        return _failed(path, label, "npy",
                       f"expected 63 values (21 points x, y, z) per frame, got shape {array.shape}")
    frames = frames.astype(np.float32)
    landmarks = frames[np.isfinite(frames).all(axis=(1, 2))]
    if len(landmarks) == 0:
        problem = "no frames" if len(frames) == 0 else f"all of its {len(frames)} frames have NaN or infinite values"
        return _failed(path, label, "npy", problem, frames_total=len(frames))
    return Item(path, label, "npy", landmarks, np.zeros(len(landmarks), np.float32), len(frames))


# ---------------------------------------------------------------------------
# Cache


class LandmarkCache:
    """Extracted items on disk, one `<sha1>.npz` per input, so a second run does not run MediaPipe again.

    The key hashes the input's resolved path, size and modification time (for a folder of frames: those
    of each frame), its kind and EXTRACTOR_VERSION: a changed input or extractor simply misses. Items
    without landmarks are cached too ("no hand found" costs a MediaPipe run). A corrupt entry is ignored
    and rewritten; a failed write only loses the caching.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def entry(self, path: Path, kind: str) -> Path:
        """The cache file of `path` read as `kind` (the input must exist)."""
        path = Path(path).resolve()
        stats = [(f.name, *_size_mtime(f)) for f in image_files(path)] if kind == "frames" else [_size_mtime(path)]
        key = repr((str(path), stats, kind, EXTRACTOR_VERSION))
        return self.folder / f"{hashlib.sha1(key.encode('utf-8')).hexdigest()}.npz"

    def load(self, path: Path, kind: str, label: str | None) -> Item | None:
        """The cached item, or None on a miss or an unreadable entry."""
        entry = self.entry(path, kind)
        if not entry.is_file():
            return None
        try:
            with np.load(entry, allow_pickle=False) as z:
                landmarks = z["landmarks"].astype(np.float32)
                handedness = z["handedness"].astype(np.float32)
                frames_total = int(z["frames_total"])
                problem = str(z["problem"])
            if landmarks.shape[1:] != (HAND_POINTS, 3) or handedness.shape != landmarks.shape[:1]:
                raise ValueError(f"shapes {landmarks.shape} and {handedness.shape}")
        except Exception as e:  # our own file: whatever is wrong with it, extract again
            logger.warning("%s: ignoring a corrupt cache entry (%s: %s)", entry, type(e).__name__, e)
            return None
        return Item(Path(path), label, kind, landmarks, handedness, frames_total, problem or None)

    def save(self, item: Item) -> None:
        entry = self.entry(item.path, item.kind)
        try:
            with atomic_path(entry, suffix=".npz") as tmp:
                np.savez(tmp, landmarks=item.landmarks.astype(np.float32),
                         handedness=item.handedness.astype(np.float32),
                         frames_total=np.int64(item.frames_total), problem=np.str_(item.problem or ""))
        except OSError as e:
            logger.warning("%s: cannot write the landmark cache (%s)", entry, e)


def _size_mtime(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


# ---------------------------------------------------------------------------
# Reading items


def _extract(path: Path, label: str | None, kind: str, extractor: HandExtractor) -> tuple[Item, bool]:
    """(item, whether it may be cached): an unexpected error becomes a problem that is not cached."""
    try:
        if kind == "image":
            return _read_image(path, label, extractor), True
        if kind == "video":
            return _read_video(path, label, extractor), True
        if kind == "frames":
            return _read_frames(path, label, extractor), True
        if kind == "pose":
            return _read_pose(path, label), True
        return _read_npy(path, label), False
    except ImportError:
        raise
    except Exception as e:  # a bad item must not stop the run; say what happened
        logger.debug("%s", path, exc_info=True)
        return _failed(path, label, kind, f"unexpected error: {type(e).__name__}: {e}"), False


def read_item(path: Path, label: str | None, extractor: HandExtractor, cache: LandmarkCache | None = None) -> Item:
    """One item's landmarks. Never raises for a bad item: it comes back with T=0 and `problem` set.

    Image, video, frames and pose items go through the cache; .npy files are landmarks already.
    """
    path = Path(path)
    kind = item_kind(path)
    if not path.exists():
        item = _failed(path, label, kind or UNKNOWN_KIND, "no such file or folder")
    elif kind is None:
        item = _failed(path, label, UNKNOWN_KIND, f"not one of: {_ITEMS_WANTED}")
    else:
        cacheable = cache is not None and kind in _CACHED_KINDS
        item = cache.load(path, kind, label) if cacheable else None
        if item is None:
            item, ok = _extract(path, label, kind, extractor)
            if cacheable and ok:
                cache.save(item)
    if item.problem:
        logger.warning("%s: %s", path, item.problem)
    return item


def read_items(paths_by_label: dict[str | None, list[Path]], cache: LandmarkCache | None = None,
               progress: bool = False, extractor: HandExtractor | None = None) -> list[Item]:
    """Every item, in order, with one HandExtractor (`extractor`, or a new one closed at the end).

    A label of None marks predict inputs. Logs how many items had no landmarks, by problem.
    """
    from tqdm import tqdm

    jobs = [(Path(p), label) for label, paths in paths_by_label.items() for p in paths]
    owned = extractor is None
    extractor = extractor or HandExtractor()
    items: list[Item] = []
    try:
        for path, label in tqdm(jobs, desc="landmarks", unit="item", file=sys.stderr, disable=not progress):
            items.append(read_item(path, label, extractor, cache))
    finally:
        if owned:
            extractor.close()
    problems = Counter(_problem_kind(i.problem) for i in items if i.problem)
    logger.info("read %d items (%d frames with a hand); %d without landmarks%s", len(items),
                sum(len(i.landmarks) for i in items), sum(problems.values()),
                f": {dict(problems)}" if problems else "")
    return items


def _problem_kind(problem: str) -> str:
    """A problem without its numbers, for counting ("no hand found in any of its N frames")."""
    return re.sub(r"\d+", "N", problem)
