"""Draw a landmark sequence (hands and arms) as an animated GIF or an MP4.

    fingerspell render FILE.parquet --sequence-id ID --out anim.gif|anim.mp4
                       [--model SUB_DIR] [--fps 15] [--phrase TEXT]

Each frame shows both hands (MediaPipe's 21-point skeleton, left hand orange,
right hand blue, as MediaPipe labels them) and the arm pose (shoulders 11/12,
elbows, wrists and the pose hand points 17-22, grey), with NaN points hidden and
the view fitted to the extent of all drawn points over the whole sequence.
A header shows the phrase and, with `--model`, the model's prediction.

The phrase comes from `--phrase`, or else from the first CSV that lists the
sequence among FILE.csv, train.csv and supplemental_metadata.csv in the parquet's
folder and its parent (Kaggle keeps the CSVs one level above `train_landmarks/`).

x and y are normalized by the video's width and height, which the file does not
record, so by default one unit of x is drawn as long as one unit of y
(`--aspect W/H` restores the source video's proportions when known).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fingerspell.data.parquet import list_sequence_ids, read_sequences
from fingerspell.data.schema import (ARM_CONNECTIONS, HAND_CONNECTIONS, LANDMARK_COLUMNS, LANDMARK_INDEX,
                                     N_HAND_POINTS, PART_SIZES, SPLIT_FILES)
from fingerspell.files import atomic_path

#: Pose points drawn: shoulders 11/12, elbows, wrists and the hand points 17-22.
ARM_DRAW_POINTS: tuple[int, ...] = tuple(range(11, 23))

#: The landmark columns the drawing needs (x and y of both hands and the arm pose points).
RENDER_COLUMNS: tuple[str, ...] = tuple(
    f"{c}_{part}_{i}"
    for c in ("x", "y")
    for part, idx in (
        ("left_hand", range(N_HAND_POINTS)),
        ("right_hand", range(N_HAND_POINTS)),
        ("pose", ARM_DRAW_POINTS),
    )
    for i in idx
)

# BGR colours.
_BG = (255, 255, 255)
_TEXT = (20, 20, 20)
_MUTED = (110, 110, 110)
_ARM = (150, 150, 150)
_PRED = (30, 120, 30)
_RULE = (220, 220, 220)
_HAND_COLOURS = {"left_hand": (0, 140, 255), "right_hand": (200, 90, 20)}
_HEADER_H = 56
_MARGIN = 16

_COLUMN_INDEX = LANDMARK_INDEX


class RenderError(Exception):
    """A sequence that cannot be rendered (message says why)."""


# ---------------------------------------------------------------------------
# Points


def _column(frames, name: str, n_frames: int, index: Mapping[str, int] | None) -> np.ndarray:
    if index is not None:  # array with named columns
        j = index.get(name)
        return frames[:, j].astype(np.float32) if j is not None else np.full(n_frames, np.nan, np.float32)
    if name in frames:  # mapping / DataFrame of columns
        return np.asarray(frames[name], dtype=np.float32)
    return np.full(n_frames, np.nan, np.float32)


def sequence_points(frames, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """x, y of the drawn points: {"left_hand": [T,21,2], "right_hand": [T,21,2], "pose": [T,33,2]}.

    `frames` is a float array [T, 1629] in `LANDMARK_COLUMNS` order, an array
    [T, len(columns)] whose columns are named by `columns`, or a mapping (dict,
    DataFrame) of column name -> [T] values. Missing columns are NaN; pose points
    other than 11-22 are NaN.
    """
    if isinstance(frames, np.ndarray) or (columns is not None and not isinstance(frames, Mapping)):
        frames = np.asarray(frames)
        if frames.ndim != 2:
            raise RenderError(f"expected frames [T, columns], got shape {frames.shape}")
        if columns is None:
            if frames.shape[1] != len(LANDMARK_COLUMNS):
                raise RenderError(
                    f"an array of {frames.shape[1]} columns needs `columns` naming them "
                    f"(or pass all {len(LANDMARK_COLUMNS)} landmark columns)"
                )
            index: Mapping[str, int] | None = _COLUMN_INDEX
        else:
            if len(columns) != frames.shape[1]:
                raise RenderError(f"{len(columns)} column names for {frames.shape[1]} columns")
            index = {name: i for i, name in enumerate(columns)}
        n_frames = frames.shape[0]
    elif isinstance(frames, Mapping) or hasattr(frames, "columns"):
        index = None
        first = next(iter(frames[c] for c in RENDER_COLUMNS if c in frames), None)
        if first is None:
            raise RenderError("none of the hand or arm landmark columns is present")
        n_frames = len(first)
    else:
        raise RenderError(f"cannot render frames of type {type(frames).__name__}")
    out = {}
    for part, n, wanted in (
        ("left_hand", N_HAND_POINTS, range(N_HAND_POINTS)),
        ("right_hand", N_HAND_POINTS, range(N_HAND_POINTS)),
        ("pose", PART_SIZES["pose"], ARM_DRAW_POINTS),
    ):
        pts = np.full((n_frames, n, 2), np.nan, np.float32)
        for i in wanted:
            pts[:, i, 0] = _column(frames, f"x_{part}_{i}", n_frames, index)
            pts[:, i, 1] = _column(frames, f"y_{part}_{i}", n_frames, index)
        out[part] = pts
    return out


def _extent(points: dict[str, np.ndarray]) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 of every drawn point over the sequence (unit box if there are none)."""
    xy = np.concatenate([p.reshape(-1, 2) for p in points.values()])
    xy = xy[np.isfinite(xy).all(axis=1)]
    if len(xy) == 0:
        return 0.0, 0.0, 1.0, 1.0
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


class _View:
    """Maps normalized coordinates to pixels with equal scale on both axes."""

    def __init__(self, extent, size: int, aspect: float):
        x0, y0, x1, y1 = extent
        w = max((x1 - x0) * aspect, 1e-3)
        h = max(y1 - y0, 1e-3)
        pad = 0.08 * max(w, h)
        w, h = w + 2 * pad, h + 2 * pad
        plot_h = size
        plot_w = int(np.clip(size * w / h, size * 0.6, size * 1.8))
        scale = min(plot_w / w, plot_h / h)  # pixels per (aspect-corrected) unit
        self.aspect = aspect
        self.scale = scale
        # Centre the data in the plot area.
        self.cx, self.cy = (x0 + x1) / 2 * aspect, (y0 + y1) / 2
        self.width = (plot_w + 2 * _MARGIN + 1) // 2 * 2
        self.height = (plot_h + _HEADER_H + _MARGIN + 1) // 2 * 2
        self.px0 = self.width / 2
        self.py0 = _HEADER_H + (self.height - _HEADER_H) / 2

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        px = (xy[..., 0] * self.aspect - self.cx) * self.scale + self.px0
        py = (xy[..., 1] - self.cy) * self.scale + self.py0
        return np.stack([px, py], axis=-1)


# ---------------------------------------------------------------------------
# Drawing


def _ascii(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


def _put_text_fit(img, text: str, org, max_width: int, colour, scale: float = 0.55) -> None:
    import cv2

    text = _ascii(text)
    font = cv2.FONT_HERSHEY_SIMPLEX
    while scale > 0.38 and cv2.getTextSize(text, font, scale, 1)[0][0] > max_width:
        scale -= 0.03
    while len(text) > 4 and cv2.getTextSize(text, font, scale, 1)[0][0] > max_width:
        text = text[:-4] + "..."
    cv2.putText(img, text, org, font, scale, colour, 1, cv2.LINE_AA)


def _draw_skeleton(img, pts_px: np.ndarray, connections, colour, radius: int, which=None) -> None:
    import cv2

    ok = np.isfinite(pts_px).all(axis=-1)
    for a, b in connections:
        if ok[a] and ok[b]:
            pa = tuple(int(round(v)) for v in pts_px[a])
            pb = tuple(int(round(v)) for v in pts_px[b])
            cv2.line(img, pa, pb, colour, 2, cv2.LINE_AA)
    for i in which if which is not None else range(len(pts_px)):
        if ok[i]:
            cv2.circle(img, tuple(int(round(v)) for v in pts_px[i]), radius, colour, -1, cv2.LINE_AA)


def draw_frames(
    points: dict[str, np.ndarray],
    title: str = "",
    prediction: str | None = None,
    size: int = 480,
    aspect: float = 1.0,
) -> list[np.ndarray]:
    """Draw every frame of `points` (from `sequence_points`); return BGR uint8 images."""
    import cv2

    view = _View(_extent(points), size, aspect)
    n_frames = len(points["pose"])
    base = np.full((view.height, view.width, 3), _BG, np.uint8)
    text_w = view.width - 2 * 10
    if title:
        _put_text_fit(base, title, (10, 22), text_w, _TEXT)
    if prediction is not None:
        _put_text_fit(base, f"prediction: {prediction}", (10, 46), text_w, _PRED)
    cv2.line(base, (0, _HEADER_H - 4), (view.width, _HEADER_H - 4), _RULE, 1)
    pose_px = view(points["pose"])
    hands_px = {part: view(points[part]) for part in _HAND_COLOURS}
    images = []
    for t in range(n_frames):
        img = base.copy()
        _draw_skeleton(img, pose_px[t], ARM_CONNECTIONS, _ARM, 4, which=ARM_DRAW_POINTS)
        for part, colour in _HAND_COLOURS.items():
            pts = hands_px[part][t]
            _draw_skeleton(img, pts, HAND_CONNECTIONS, colour, 3)
            if np.isfinite(pts[0]).all():
                x, y = (int(round(v)) for v in pts[0])
                cv2.putText(img, "L" if part == "left_hand" else "R", (x + 6, y + 16),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        cv2.putText(img, f"frame {t + 1}/{n_frames}", (10, view.height - 8),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, _MUTED, 1, cv2.LINE_AA)
        images.append(img)
    return images


def _gif_palette() -> np.ndarray:
    """A fixed palette (RGB, [256, 3]): each drawing colour blended with the background.

    Anti-aliased pixels are such blends, so mapping onto this palette is nearly exact
    (pure colours are exact) and much faster than quantizing every frame adaptively.
    """
    base = [_TEXT, _MUTED, _ARM, _PRED, _RULE, *_HAND_COLOURS.values()]
    levels = (256 - 1) // len(base)
    bg = np.array(_BG[::-1], float)
    colours = [bg]
    for bgr in base:
        rgb = np.array(bgr[::-1], float)
        for a in np.linspace(1.0, 0.1, levels):
            colours.append(a * rgb + (1 - a) * bg)
    colours += [bg] * (256 - len(colours))
    return np.round(np.array(colours)).astype(np.uint8)


def _palette_indices(images_bgr: Sequence[np.ndarray], palette: np.ndarray) -> list[np.ndarray]:
    """Map BGR images onto `palette` (nearest colour at 6 bits per channel)."""
    keys = [
        ((im[..., 2] >> 2).astype(np.int32) << 12) | ((im[..., 1] >> 2).astype(np.int32) << 6)
        | (im[..., 0] >> 2).astype(np.int32)
        for im in images_bgr
    ]
    seen = np.zeros(1 << 18, bool)
    for k in keys:
        seen[k.ravel()] = True
    codes = np.flatnonzero(seen)
    centres = np.stack([(codes >> 12) & 63, (codes >> 6) & 63, codes & 63], axis=1) * 4 + 1.5
    dist = ((centres[:, None, :] - palette[None].astype(float)) ** 2).sum(axis=-1)
    lut = np.zeros(1 << 18, np.uint8)
    lut[codes] = dist.argmin(axis=1)
    return [lut[k] for k in keys]


def gif_frame_ms(fps: float) -> int:
    """GIF frame time: GIF stores centiseconds, so 1000/fps rounded to 10 ms (at least 20)."""
    return max(int(round(100 / fps)) * 10, 20)


def write_animation(images: Sequence[np.ndarray], out_path: str | os.PathLike, fps: float = 15) -> None:
    """Write BGR images as a GIF (Pillow) or MP4 (OpenCV, mp4v), atomically."""
    import cv2

    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise RenderError(f"{out_path}: output must end in .gif or .mp4")
    if not images:
        raise RenderError("no frames to write")
    if fps <= 0:
        raise RenderError(f"fps must be positive, got {fps}")
    with atomic_path(out_path, suffix=suffix) as tmp:
        if suffix == ".gif":
            from PIL import Image

            palette = _gif_palette()
            frames = []
            for idx in _palette_indices(images, palette):
                frame = Image.fromarray(idx)  # mode L; putpalette makes it P
                frame.putpalette(palette.ravel().tolist())
                frames.append(frame)
            frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                           duration=gif_frame_ms(fps), loop=0)
        else:
            h, w = images[0].shape[:2]
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
            if not writer.isOpened():
                raise RenderError(f"{out_path}: OpenCV cannot open an mp4v writer")
            try:
                for im in images:
                    writer.write(im)
            finally:
                writer.release()


def render_sequence(
    frames,
    out_path: str | os.PathLike,
    title: str = "",
    prediction: str | None = None,
    fps: float = 15,
    columns: Sequence[str] | None = None,
    size: int = 480,
    aspect: float = 1.0,
) -> int:
    """Render a landmark sequence to `out_path` (.gif or .mp4); return the number of frames.

    `frames`: float array [T, 1629] in `LANDMARK_COLUMNS` order, an array whose
    columns are named by `columns`, or a mapping/DataFrame of column name -> [T].
    `title` and `prediction` are printed in the header; `size` is the plot height
    in pixels; `aspect` is the source video's width / height (1: equal units).
    """
    points = sequence_points(frames, columns)
    if len(points["pose"]) == 0:
        raise RenderError("the sequence has no frames")
    images = draw_frames(points, title=title, prediction=prediction, size=size, aspect=aspect)
    write_animation(images, out_path, fps=fps)
    return len(images)


# ---------------------------------------------------------------------------
# Phrases and predictions


def find_phrase(parquet_path: str | os.PathLike, sequence_id: int) -> str | None:
    """The phrase of `sequence_id` from a CSV beside the parquet file (or one folder up)."""
    import pandas as pd

    parquet_path = Path(parquet_path)
    candidates = [parquet_path.with_suffix(".csv")]
    for folder in (parquet_path.parent, parquet_path.parent.parent):
        candidates += [folder / csv_name for csv_name, _ in SPLIT_FILES.values()]
    seen = set()
    for csv_path in candidates:
        if csv_path in seen or not csv_path.is_file():
            continue
        seen.add(csv_path)
        try:
            df = pd.read_csv(csv_path, usecols=["sequence_id", "phrase"], dtype={"phrase": str},
                             keep_default_na=False)
        except (ValueError, OSError, pd.errors.ParserError):
            continue  # not a metadata CSV
        hit = df.loc[df["sequence_id"] == sequence_id, "phrase"]
        if len(hit):
            return str(hit.iloc[0])
    return None


def predict_sequence(model_dir: str | os.PathLike, parquet_path, sequence_id: int) -> str:
    """The prediction of the TFLite model in `model_dir` for one sequence of a file."""
    try:
        from fingerspell.export.predictor import TFLitePredictor
    except ImportError as e:
        raise RenderError(f"--model needs fingerspell.export.predictor.TFLitePredictor ({e})") from e
    try:
        predictor = TFLitePredictor(model_dir)
        cols = list(predictor.selected_columns)
        seq = read_sequences(parquet_path, cols, [sequence_id])[sequence_id]
        return predictor(seq)
    except Exception as e:  # a broken model folder, columns missing from the file, ...
        raise RenderError(f"--model {model_dir}: {type(e).__name__}: {e}") from e


def render_from_parquet(
    parquet_path: str | os.PathLike,
    sequence_id: int | None,
    out_path: str | os.PathLike,
    model_dir: str | os.PathLike | None = None,
    fps: float = 15,
    phrase: str | None = None,
    size: int = 480,
    aspect: float = 1.0,
) -> dict:
    """Render one sequence of a landmarks file; return {"sequence_id", "frames", "phrase", "prediction"}."""
    parquet_path = Path(parquet_path)
    if not parquet_path.is_file():
        raise RenderError(f"{parquet_path}: no such file")
    ids = list_sequence_ids(parquet_path)
    if len(ids) == 0:
        raise RenderError(f"{parquet_path}: the file holds no sequences")
    if sequence_id is None:
        sequence_id = int(ids[0])
    elif int(sequence_id) not in set(ids.tolist()):
        some = ", ".join(str(i) for i in ids[:8])
        more = f", ... ({len(ids)} in all)" if len(ids) > 8 else ""
        raise RenderError(f"{parquet_path}: no sequence_id {sequence_id}; the file has {some}{more}")
    sequence_id = int(sequence_id)
    frames = read_sequences(parquet_path, RENDER_COLUMNS, [sequence_id])[sequence_id]
    if phrase is None:
        phrase = find_phrase(parquet_path, sequence_id)
    title = f"#{sequence_id}" + (f'  phrase: "{phrase}"' if phrase else "")
    prediction = predict_sequence(model_dir, parquet_path, sequence_id) if model_dir else None
    if prediction is not None:
        prediction = f'"{prediction}"'
    n = render_sequence(frames, out_path, title=title, prediction=prediction, fps=fps,
                        columns=RENDER_COLUMNS, size=size, aspect=aspect)
    return {"sequence_id": sequence_id, "frames": n, "phrase": phrase,
            "prediction": None if prediction is None else prediction[1:-1]}
