"""The Kaggle landmark layout and the columns this toolkit selects from it.

This module is the one place that knows column names and positions. Preprocessing
reads `SELECTED_COLUMNS` from parquet, the exported `inference_args.json` lists the
same names, and the frame preprocessing finds points through the index
constants below, so the three can never disagree. Every other module takes column
positions (`landmark_positions`, `LANDMARK_INDEX`, `SELECTED_LEFT_HAND_COLUMNS`) and
part offsets (`PART_OFFSETS`, `part_columns`) from here instead of rebuilding them.
"""
from __future__ import annotations

import types
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

#: split -> (metadata CSV, folder of its parquet files), as in the Kaggle dataset.
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train.csv", "train_landmarks"),
    "supplemental": ("supplemental_metadata.csv", "supplemental_landmarks"),
}
#: Columns of `train.csv` / `supplemental_metadata.csv`; `path` is `<folder>/<file_id>.parquet`.
CSV_COLUMNS: tuple[str, ...] = ("path", "file_id", "sequence_id", "participant_id", "phrase")

COORDS: tuple[str, ...] = ("x", "y", "z")

# Landmark parts in Kaggle's column order, with their point counts.
PARTS: tuple[tuple[str, int], ...] = (
    ("face", 468),
    ("left_hand", 21),
    ("pose", 33),
    ("right_hand", 21),
)
N_HAND_POINTS = 21
N_POINTS = sum(n for _, n in PARTS)  # 543 landmarks per frame
PART_SIZES: Mapping[str, int] = types.MappingProxyType(dict(PARTS))
#: Where each part's points start among a frame's N_POINTS points (PARTS order).
PART_OFFSETS: Mapping[str, int] = types.MappingProxyType(
    {part: sum(n for _, n in PARTS[:k]) for k, (part, _) in enumerate(PARTS)}
)

#: Kaggle's 1629 landmark columns in file order: by coordinate, then part, then point.
LANDMARK_COLUMNS: tuple[str, ...] = tuple(
    f"{c}_{part}_{i}" for c in COORDS for part, n in PARTS for i in range(n)
)
INDEX_COLUMN = "sequence_id"
#: A row's frame number within its sequence (optional in files that are not Kaggle's).
FRAME_COLUMN = "frame"
#: Every column of a landmarks parquet file besides the `sequence_id` index.
PARQUET_COLUMNS: tuple[str, ...] = (FRAME_COLUMN,) + LANDMARK_COLUMNS

# Arm pose points: elbow, wrist and the three hand points MediaPipe's pose model
# puts on the palm. Index i of the left list mirrors index i of the right one.
LEFT_ARM_POSE: tuple[int, ...] = (13, 15, 17, 19, 21)
RIGHT_ARM_POSE: tuple[int, ...] = (14, 16, 18, 20, 22)
ARM_POSE: tuple[int, ...] = tuple(range(13, 23))

#: The selected points, in order: left hand 0-20, right hand 0-20, pose 13-22.
SELECTED_POINTS: tuple[tuple[str, int], ...] = (
    tuple(("left_hand", i) for i in range(N_HAND_POINTS))
    + tuple(("right_hand", i) for i in range(N_HAND_POINTS))
    + tuple(("pose", i) for i in ARM_POSE)
)
N_SELECTED_POINTS = len(SELECTED_POINTS)  # 52

#: The 156 selected columns, coordinate-major (all x, then all y, then all z), so a
#: [T, 156] frame tensor reshapes to [T, 3, 52].
SELECTED_COLUMNS: tuple[str, ...] = tuple(
    f"{c}_{part}_{i}" for c in COORDS for part, i in SELECTED_POINTS
)
N_SELECTED_COLUMNS = len(SELECTED_COLUMNS)  # 156

# Point indices into the 52 selected points.
LEFT_HAND_POINTS: tuple[int, ...] = tuple(range(0, 21))
RIGHT_HAND_POINTS: tuple[int, ...] = tuple(range(21, 42))


def selected_point_columns(points: Sequence[int]) -> np.ndarray:
    """Positions in the coordinate-major `SELECTED_COLUMNS` of the x, y and z columns of `points`."""
    return np.array([c * N_SELECTED_POINTS + p for c in range(len(COORDS)) for p in points], dtype=np.intp)


#: The 63 columns (x, y, z of 21 points) of each hand among the 156 selected columns.
SELECTED_LEFT_HAND_COLUMNS = selected_point_columns(LEFT_HAND_POINTS)
SELECTED_RIGHT_HAND_COLUMNS = selected_point_columns(RIGHT_HAND_POINTS)
LEFT_ARM_POINTS: tuple[int, ...] = tuple(42 + ARM_POSE.index(p) for p in LEFT_ARM_POSE)
RIGHT_ARM_POINTS: tuple[int, ...] = tuple(42 + ARM_POSE.index(p) for p in RIGHT_ARM_POSE)

#: Points the model sees per frame after choosing the dominant side: its hand, then its arm.
N_SIDE_POINTS = N_HAND_POINTS + len(LEFT_ARM_POSE)  # 26

# MediaPipe's 21-point hand skeleton, for drawing (wrist 0; thumb 1-4; index 5-8; ...).
HAND_CONNECTIONS: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4),
    (0, 5), (5, 6), (6, 7), (7, 8),
    (5, 9), (9, 10), (10, 11), (11, 12),
    (9, 13), (13, 14), (14, 15), (15, 16),
    (13, 17), (0, 17), (17, 18), (18, 19), (19, 20),
)
# Arm pose skeleton: shoulder-elbow-wrist and the wrist's hand points.
ARM_CONNECTIONS: tuple[tuple[int, int], ...] = (
    (11, 13), (13, 15), (15, 17), (15, 19), (15, 21), (17, 19),
    (12, 14), (14, 16), (16, 18), (16, 20), (16, 22), (18, 20),
    (11, 12),
)


#: Landmark column name -> its position among the 1629 `LANDMARK_COLUMNS` (read-only).
LANDMARK_INDEX: Mapping[str, int] = types.MappingProxyType({name: i for i, name in enumerate(LANDMARK_COLUMNS)})


def column_index(name: str) -> int:
    """Position of a landmark column among `LANDMARK_COLUMNS`."""
    return LANDMARK_INDEX[name]


def landmark_positions(names: Iterable[str]) -> np.ndarray:
    """Positions among `LANDMARK_COLUMNS` of `names`, in the order given.

    Raises ValueError listing (the first few) names that are not landmark columns, so a
    caller can say which file named them.
    """
    names = list(names)
    if unknown := [n for n in names if n not in LANDMARK_INDEX]:
        raise ValueError(f"unknown landmark column(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    return np.array([LANDMARK_INDEX[n] for n in names], dtype=np.intp)


def part_columns(part: str, coord: int) -> slice:
    """The columns of all of `part`'s points for coordinate `coord` (0 x, 1 y, 2 z) in `LANDMARK_COLUMNS`."""
    start = coord * N_POINTS + PART_OFFSETS[part]
    return slice(start, start + PART_SIZES[part])


#: Positions of the 156 `SELECTED_COLUMNS` among the 1629 `LANDMARK_COLUMNS`.
SELECTED_LANDMARK_POSITIONS = landmark_positions(SELECTED_COLUMNS)
