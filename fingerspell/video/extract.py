"""Videos, image folders and .pose files -> landmarks in Kaggle's parquet layout.

    fingerspell extract INPUT ... --out FILE.parquet [--phrase TEXT] [--csv FILE.csv]

Each input becomes one sequence:

* a video file (anything OpenCV reads: mp4, avi, webm, mov, ...) or a folder of
  images (png, jpg, jpeg, bmp, webp, tif, tiff; taken in natural name order, so
  `frame2.png` comes before `frame10.png`) runs through MediaPipe Holistic
  (`static_image_mode=False, model_complexity=1`, a fresh tracker per input);
* a `.pose` file (pose-format, MediaPipe Holistic components) is converted
  without re-running MediaPipe.

The output is one parquet file in Kaggle's layout (see `fingerspell.data.parquet`)
and a CSV like Kaggle's `train.csv` (`path,file_id,sequence_id,participant_id,phrase`),
by default next to the parquet with the same stem. In the CSV, `path` is the parquet
path relative to the CSV's folder, `file_id` is the parquet stem if it is an integer
(as in Kaggle) and otherwise `crc32(stem) & 0x7fffffff`, `participant_id` is -1
(unknown), and `phrase` is empty or the `--phrase` text (one phrase for all inputs,
or one `--phrase` per input, in order).

Sequence ids are deterministic: `crc32(name) & 0x7fffffff` where `name` is the
input's file or folder name (not its full path), so the same recording gets the
same id wherever it lies; if two inputs collide, the later one takes the next free
id. Failed inputs are reported and skipped; the command exits 1 if any failed.
Both output files are written under temporary names and renamed when complete.

Coordinates: x, y are MediaPipe's normalized image coordinates. For `.pose` files,
x is divided by the header width and y by the header height. z is kept exactly as
stored: pose-format's MediaPipe loader stores `landmark.z` unscaled (it multiplies
only x and y by the frame size), so the stored z already is MediaPipe's z, on the
same scale as in Kaggle's data. Points with confidence 0 (not detected) are NaN;
a refined 478-point face is cut to its first 468 points; POSE_WORLD_LANDMARKS is
ignored; only the first person is taken.
"""
from __future__ import annotations

import csv
import logging
import os
import re
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fingerspell.data.parquet import N_LANDMARK_COLUMNS, write_landmarks_parquet
from fingerspell.data.schema import CSV_COLUMNS, PART_SIZES, PARTS, part_columns
from fingerspell.files import atomic_path

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
POSE_SUFFIX = ".pose"

UNKNOWN_PARTICIPANT = -1


class ExtractError(Exception):
    """An input that cannot be turned into landmarks (the message names it)."""


# ---------------------------------------------------------------------------
# Layout helpers


def _empty_frames(n_frames: int) -> np.ndarray:
    return np.full((n_frames, N_LANDMARK_COLUMNS), np.nan, dtype=np.float32)


def _put_part(row_or_rows: np.ndarray, part: str, xyz: np.ndarray) -> None:
    """Write points [..., n, 3] of `part` into rows [..., 1629] (coordinate-major)."""
    n = PART_SIZES[part]
    for c in range(3):
        row_or_rows[..., part_columns(part, c)] = xyz[..., :n, c]


def sequence_id_for(name: str) -> int:
    """The deterministic sequence id of an input named `name` (its base name)."""
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


def file_id_for(parquet_path: str | os.PathLike) -> int:
    stem = Path(parquet_path).stem
    if stem.isdigit():
        return int(stem)
    return zlib.crc32(stem.encode("utf-8")) & 0x7FFFFFFF


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


# ---------------------------------------------------------------------------
# MediaPipe Holistic on frames


def _holistic():
    try:
        import mediapipe as mp  # a few seconds: it loads TensorFlow Lite and its models
    except ImportError as e:  # pragma: no cover - environment problem
        raise ExtractError(f'mediapipe is not installed ({e}): pip install "fingerspell[video]"') from e
    return mp.solutions.holistic.Holistic(
        static_image_mode=False,
        model_complexity=1,
        smooth_landmarks=True,
        refine_face_landmarks=False,
        min_detection_confidence=0.5,
        min_tracking_confidence=0.5,
    )


def _landmark_array(landmark_list, n: int) -> np.ndarray:
    pts = np.array([(p.x, p.y, p.z) for p in landmark_list.landmark[:n]], dtype=np.float32)
    if len(pts) < n:
        pts = np.concatenate([pts, np.full((n - len(pts), 3), np.nan, np.float32)])
    return pts


def landmarks_from_frames(
    frames_bgr: Iterable[np.ndarray], total: int | None = None, desc: str = "", progress: bool = True
) -> np.ndarray:
    """Run MediaPipe Holistic over BGR frames (in order); return float32 [T, 1629]."""
    from tqdm import tqdm

    rows: list[np.ndarray] = []
    import cv2

    with _holistic() as holistic:
        bar = tqdm(total=total, desc=desc, unit="frame", disable=not progress, leave=False)
        try:
            for image in frames_bgr:
                rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
                rgb.flags.writeable = False
                res = holistic.process(rgb)
                row = np.full(N_LANDMARK_COLUMNS, np.nan, dtype=np.float32)
                for part, lms in (
                    ("face", res.face_landmarks),
                    ("left_hand", res.left_hand_landmarks),
                    ("pose", res.pose_landmarks),
                    ("right_hand", res.right_hand_landmarks),
                ):
                    if lms is not None:
                        _put_part(row, part, _landmark_array(lms, PART_SIZES[part]))
                rows.append(row)
                bar.update(1)
        finally:
            bar.close()
    if not rows:
        return _empty_frames(0)
    return np.stack(rows)


def _video_frames(path: Path) -> tuple[Iterator[np.ndarray], int | None]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise ExtractError(f"{path}: not a readable video (OpenCV cannot open it)")
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise ExtractError(f"{path}: not a readable video (no frame could be decoded)")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))

    def gen():
        try:
            yield first
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield frame
        finally:
            cap.release()

    return gen(), (count if count > 0 else None)


def landmarks_from_video(path: str | os.PathLike, progress: bool = True) -> np.ndarray:
    """MediaPipe Holistic landmarks of every frame of a video: float32 [T, 1629]."""
    path = Path(path)
    if not path.exists():
        raise ExtractError(f"{path}: no such file")
    if path.is_dir():
        raise ExtractError(f"{path}: is a folder, not a video")
    frames, total = _video_frames(path)
    return landmarks_from_frames(frames, total=total, desc=path.name, progress=progress)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a folder in natural name order."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: _natural_key(p.name))


def landmarks_from_images(folder: str | os.PathLike, progress: bool = True) -> np.ndarray:
    """MediaPipe Holistic landmarks of a folder of images (one frame each): float32 [T, 1629]."""
    import cv2

    folder = Path(folder)
    if not folder.is_dir():
        raise ExtractError(f"{folder}: no such folder")
    files = image_files(folder)
    if not files:
        raise ExtractError(
            f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder"
        )

    def gen():
        for f in files:
            image = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if image is None:
                raise ExtractError(f"{f}: not a readable image")
            yield image

    return landmarks_from_frames(gen(), total=len(files), desc=folder.name, progress=progress)


# ---------------------------------------------------------------------------
# pose-format files

_POSE_COMPONENTS = {
    "POSE_LANDMARKS": "pose",
    "FACE_LANDMARKS": "face",
    "LEFT_HAND_LANDMARKS": "left_hand",
    "RIGHT_HAND_LANDMARKS": "right_hand",
}


def landmarks_from_pose(path: str | os.PathLike, progress: bool = True) -> np.ndarray:
    """Convert a pose-format file of MediaPipe Holistic landmarks: float32 [T, 1629].

    x / header width, y / header height, z as stored; confidence 0 -> NaN; a face
    of more than 468 points (refined, 478) keeps its first 468; first person only.
    """
    path = Path(path)
    if not path.is_file():
        raise ExtractError(f"{path}: no such file")
    try:
        from pose_format import Pose
    except ImportError as e:  # pragma: no cover - environment problem
        raise ExtractError(f"{path}: the pose-format package is not installed ({e})") from e
    try:
        pose = Pose.read(path.read_bytes())
        header, body = pose.header, pose.body
        data = np.asarray(np.ma.getdata(body.data), dtype=np.float32)
        conf = np.asarray(np.ma.getdata(body.confidence), dtype=np.float32)
    except ExtractError:
        raise
    except Exception as e:  # the reader raises all sorts on a corrupt file
        raise ExtractError(f"{path}: not a readable .pose file ({type(e).__name__}: {e})") from e
    if data.ndim != 4 or conf.ndim != 3 or data.shape[:3] != conf.shape:
        raise ExtractError(f"{path}: unexpected pose body shape {data.shape}")
    n_frames, n_people = data.shape[:2]
    width, height = header.dimensions.width, header.dimensions.height
    if not width or not height:
        raise ExtractError(f"{path}: header has no frame size ({width}x{height}); cannot normalize")
    out = _empty_frames(n_frames)
    if n_people == 0:
        return out
    data, conf = data[:, 0], conf[:, 0]  # first person
    found = []
    offset = 0
    for comp in header.components:
        n = len(comp.points)
        part = _POSE_COMPONENTS.get(comp.name)
        if part is not None:
            found.append(comp.name)
            want = PART_SIZES[part]
            if n < want:
                raise ExtractError(
                    f"{path}: component {comp.name} has {n} points, expected {want}"
                )
            dims = comp.format.upper().replace("C", "")
            xyz = np.full((n_frames, want, 3), np.nan, dtype=np.float32)
            xyz[..., 0] = data[:, offset:offset + want, 0] / width
            xyz[..., 1] = data[:, offset:offset + want, 1] / height
            # Without a stored z (2-D formats) use 0, so a detected point stays non-NaN.
            xyz[..., 2] = data[:, offset:offset + want, 2] if "Z" in dims and data.shape[-1] > 2 else 0.0
            xyz[conf[:, offset:offset + want] <= 0] = np.nan
            _put_part(out, part, xyz)
        offset += n
    if not found:
        names = [c.name for c in header.components]
        raise ExtractError(
            f"{path}: no MediaPipe Holistic components (expected {sorted(_POSE_COMPONENTS)}, found {names})"
        )
    return out


# ---------------------------------------------------------------------------
# Dispatch and the command


def landmarks_from_input(path: str | os.PathLike, progress: bool = True) -> np.ndarray:
    """Landmarks of one input: a .pose file, a folder of images, or a video."""
    path = Path(path)
    if not path.exists():
        raise ExtractError(f"{path}: no such file or folder")
    if path.is_dir():
        return landmarks_from_images(path, progress=progress)
    if path.suffix.lower() == POSE_SUFFIX:
        return landmarks_from_pose(path, progress=progress)
    return landmarks_from_video(path, progress=progress)


@dataclass
class ExtractSummary:
    out: Path | None
    csv: Path | None
    #: sequence_id -> {"input", "frames", "seconds", plus per-part frame counts}
    sequences: dict[int, dict] = field(default_factory=dict)
    #: input -> error message
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and bool(self.sequences)


def part_presence(frames: np.ndarray) -> dict[str, int]:
    """How many frames have each part (any x non-NaN)."""
    out = {}
    for part, _ in PARTS:
        out[part] = int((~np.isnan(frames[:, part_columns(part, 0)])).any(axis=1).sum())
    return out


def _write_csv(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def _phrases(phrase: str | Sequence[str] | None, n: int) -> list[str]:
    if phrase is None:
        return [""] * n
    if isinstance(phrase, str):
        return [phrase] * n
    phrase = list(phrase)
    if len(phrase) == 1:
        return phrase * n
    if len(phrase) != n:
        raise ValueError(f"got {len(phrase)} phrases for {n} inputs: give one, or one per input")
    return phrase


def extract(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    phrase: str | Sequence[str] | None = None,
    csv_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> ExtractSummary:
    """Extract every input into one Kaggle-layout parquet file plus its CSV.

    Inputs that fail are recorded in `summary.failed` (message naming the input)
    and skipped. If none succeeds, nothing is written (`summary.out` is None).
    Progress and each failure are logged (`fingerspell.video.extract`).
    """
    out = Path(out)
    csv_path = Path(csv_path) if csv_path is not None else out.with_suffix(".csv")
    phrases = _phrases(phrase, len(inputs))
    summary = ExtractSummary(out=None, csv=None)
    for text in dict.fromkeys(phrases):
        if text:
            from fingerspell.data.vocab import unknown_chars

            if bad := unknown_chars(text):
                logger.warning("phrase %r has characters outside the model's map: %s", text, sorted(bad))
    sequences: dict[int, np.ndarray] = {}
    rows = []
    if any(not str(i).lower().endswith(POSE_SUFFIX) and Path(i).exists() for i in inputs):
        t0 = time.perf_counter()
        try:
            import mediapipe  # noqa: F401  (once, outside the per-input timings)
            logger.info("loaded mediapipe in %.1f s", time.perf_counter() - t0)
        except ImportError:
            pass  # reported per input
    for inp, text in zip(inputs, phrases):
        p = Path(inp)
        t0 = time.perf_counter()
        try:
            frames = landmarks_from_input(p, progress=progress)
        except ExtractError as e:
            summary.failed[str(inp)] = str(e)
            logger.error("%s", e)
            continue
        except Exception as e:  # anything else unexpected: still name the input
            summary.failed[str(inp)] = f"{inp}: {type(e).__name__}: {e}"
            logger.error("%s: %s: %s", inp, type(e).__name__, e)
            continue
        seconds = time.perf_counter() - t0
        if len(frames) == 0:
            msg = f"{inp}: no frames"
            summary.failed[str(inp)] = msg
            logger.error("%s", msg)
            continue
        sid = sequence_id_for(os.path.basename(os.path.abspath(p)))
        while sid in sequences:
            sid = (sid + 1) & 0x7FFFFFFF
        sequences[sid] = frames
        presence = part_presence(frames)
        summary.sequences[sid] = {"input": str(inp), "frames": len(frames), "seconds": seconds, **presence}
        rows.append({"sequence_id": sid, "phrase": text})
        logger.info("%s: sequence_id %d, %d frames in %.1f s (face %d, pose %d, left hand %d, right hand %d)",
                    inp, sid, len(frames), seconds, presence["face"], presence["pose"], presence["left_hand"],
                    presence["right_hand"])
    if not sequences:
        logger.error("no input could be extracted; nothing written")
        return summary
    try:
        write_landmarks_parquet(sequences, out)
    except (ValueError, OSError) as e:
        raise ExtractError(f"{out}: cannot write ({e})") from None
    try:
        rel = os.path.relpath(out.resolve(), csv_path.resolve().parent)
    except ValueError:  # different drives
        rel = str(out.resolve())
    file_id = file_id_for(out)
    csv_rows = [
        {"path": Path(rel).as_posix(), "file_id": file_id, "sequence_id": r["sequence_id"],
         "participant_id": UNKNOWN_PARTICIPANT, "phrase": r["phrase"]}
        for r in rows
    ]
    _write_csv(csv_rows, csv_path)
    summary.out, summary.csv = out, csv_path
    logger.info("wrote %s (%d sequences) and %s", out, len(sequences), csv_path)
    return summary
