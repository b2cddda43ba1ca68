"""The Kaggle landmark layout, the landmark sets this toolkit can select from it, and their columns.

This module is the one place that knows column names and positions. Preprocessing
reads a landmark set's `columns` from parquet, the exported `inference_args.json` lists the
same names, and the frame preprocessing finds points through the set's index
properties, so the three can never disagree. Every other module takes column
positions (`landmark_positions`, `LANDMARK_INDEX`, a `LandmarkSet`'s hand columns) and
part offsets (`PART_OFFSETS`, `part_columns`) from here instead of rebuilding them.

`LANDMARK_SETS` names the sets (`hands_arms`, the default and the only one before landmark
sets existed; `hands_arms_face`, 130 points with lips, nose and eyes; `all` 543). The module
constants `SELECTED_COLUMNS`, `N_SELECTED_COLUMNS`, ... describe the default set.
"""
from __future__ import annotations

import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fingerspell.data import face_mesh

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


# --- landmark sets ---------------------------------------------------------------------------

Point = tuple[str, int]  # (part, index within the part), e.g. ("pose", 14)


def mirror_point(point: Point) -> Point:
    """The point that `point` becomes in a left-right mirror image: the hands swap (same point
    numbers), pose and face points go to their partner through MediaPipe's symmetry maps."""
    part, i = point
    if part in ("left_hand", "right_hand"):
        return ("right_hand" if part == "left_hand" else "left_hand", i)
    if part == "pose":
        return ("pose", face_mesh.POSE_SYMMETRY[i])
    if part == "face":
        return ("face", face_mesh.FACE_SYMMETRY[i])
    raise ValueError(f"unknown landmark part {part!r}")


def _part(part: str, indices: Iterable[int]) -> tuple[Point, ...]:
    return tuple((part, i) for i in indices)


@dataclass(frozen=True)
class LandmarkSet:
    """The landmarks preprocessing keeps and the model reads, and what the model sees of them.

    points: the selected points in column order (the columns are coordinate-major: all x, then
        all y, then all z, so [T, n_columns] reshapes to [T, 3, n_points]); closed under mirroring.
    context: named groups of the points the model sees after the dominant hand, as they are for a
        right-handed signer (a left-handed one is mirrored first, so its left hand and the mirror
        images of these points take their places). The groups are what part-drop augmentation blanks.
    """

    name: str
    points: tuple[Point, ...]
    context: tuple[tuple[str, tuple[Point, ...]], ...]
    description: str

    def __post_init__(self) -> None:
        if len(set(self.points)) != len(self.points):
            raise ValueError(f"landmark set {self.name}: a point is listed twice")
        if unknown := [p for p in self.points if p[0] not in PART_SIZES or not 0 <= p[1] < PART_SIZES[p[0]]]:
            raise ValueError(f"landmark set {self.name}: unknown points {unknown[:5]}")
        members = set(self.points)
        if open_ := [p for p in self.points if mirror_point(p) not in members]:
            raise ValueError(f"landmark set {self.name}: the mirror images of {open_[:5]} are not in the set")
        hands = set(_part("left_hand", range(N_HAND_POINTS)) + _part("right_hand", range(N_HAND_POINTS)))
        if not hands <= members:
            raise ValueError(f"landmark set {self.name}: both hands must be selected")
        seen = [p for _, group in self.context for p in group]
        if len(set(seen)) != len(seen) or not set(seen) <= members or any(p[0] == "right_hand" for p in seen):
            raise ValueError(f"landmark set {self.name}: context groups must be distinct selected points, "
                             f"without the dominant (right) hand")

    @cached_property
    def columns(self) -> tuple[str, ...]:
        """The selected columns, coordinate-major: what `inference_args.json` lists."""
        return tuple(f"{c}_{part}_{i}" for c in COORDS for part, i in self.points)

    @property
    def n_points(self) -> int:
        return len(self.points)

    @property
    def n_columns(self) -> int:
        return len(self.points) * len(COORDS)

    @cached_property
    def index(self) -> Mapping[Point, int]:
        return types.MappingProxyType({p: k for k, p in enumerate(self.points)})

    def positions(self, points: Iterable[Point]) -> tuple[int, ...]:
        """Indices among this set's points."""
        return tuple(self.index[p] for p in points)

    @cached_property
    def symmetry(self) -> tuple[int, ...]:
        """symmetry[k]: the index of point k's mirror image among this set's points."""
        return self.positions(mirror_point(p) for p in self.points)

    @cached_property
    def left_hand(self) -> tuple[int, ...]:
        return self.positions(_part("left_hand", range(N_HAND_POINTS)))

    @cached_property
    def right_hand(self) -> tuple[int, ...]:
        return self.positions(_part("right_hand", range(N_HAND_POINTS)))

    @cached_property
    def side(self) -> tuple[int, ...]:
        """The points the model sees of a right-handed signer: the right hand, then the context."""
        return self.right_hand + self.positions(p for _, group in self.context for p in group)

    @property
    def n_side_points(self) -> int:
        return len(self.side)

    def point_columns(self, points: Sequence[int]) -> np.ndarray:
        """Positions among `columns` of the x, y and z columns of the points at indices `points`."""
        return np.array([c * self.n_points + k for c in range(len(COORDS)) for k in points], dtype=np.intp)

    @cached_property
    def left_hand_columns(self) -> np.ndarray:
        return self.point_columns(self.left_hand)

    @cached_property
    def right_hand_columns(self) -> np.ndarray:
        return self.point_columns(self.right_hand)

    @cached_property
    def landmark_positions(self) -> np.ndarray:
        """Positions of `columns` among the 1629 `LANDMARK_COLUMNS`."""
        return landmark_positions(self.columns)


_HANDS = _part("left_hand", range(N_HAND_POINTS)) + _part("right_hand", range(N_HAND_POINTS))
_FACE_PARTS = (("lips", face_mesh.LIPS), ("nose", face_mesh.NOSE),
               ("eyes", face_mesh.LEFT_EYE + face_mesh.RIGHT_EYE))

HANDS_ARMS = LandmarkSet(
    name="hands_arms",
    points=SELECTED_POINTS,
    context=(("arm", _part("pose", RIGHT_ARM_POSE)),),
    description="both hands and the arm pose points (elbows, wrists, palm points): 52 points; the model sees "
                "the dominant hand and its arm (26)",
)
HANDS_ARMS_FACE = LandmarkSet(
    name="hands_arms_face",
    points=_HANDS + _part("pose", range(11, 23)) + tuple(
        ("face", i) for _, group in _FACE_PARTS for i in group),
    context=(("arms", _part("pose", range(11, 23))),
             *((name, _part("face", group)) for name, group in _FACE_PARTS)),
    description="both hands, shoulders and arms (pose 11-22), 40 lip, 4 nose and 32 eye points: 130 points "
                "(the 1st-place solution's kind of set); the model sees the dominant hand and the rest (109)",
)
ALL_LANDMARKS = LandmarkSet(
    name="all",
    points=tuple((part, i) for part, n in PARTS for i in range(n)),
    context=(("other_hand", _part("left_hand", range(N_HAND_POINTS))), ("pose", _part("pose", range(PART_SIZES["pose"]))),
             ("face", _part("face", range(PART_SIZES["face"])))),
    description="all 543 landmarks (Kaggle's 1629 columns, in their order); the model sees the dominant hand "
                "first, then the other hand, the pose and the face",
)

#: Landmark set name -> set; `Config.landmarks` and `preprocess --landmarks` take these names.
LANDMARK_SETS: Mapping[str, LandmarkSet] = types.MappingProxyType(
    {s.name: s for s in (HANDS_ARMS, HANDS_ARMS_FACE, ALL_LANDMARKS)})
DEFAULT_LANDMARKS = HANDS_ARMS.name


def landmark_set(name: str) -> LandmarkSet:
    """The landmark set called `name`; ValueError naming the choices otherwise."""
    if name not in LANDMARK_SETS:
        raise ValueError(f"landmarks={name!r}: expected one of {tuple(LANDMARK_SETS)}")
    return LANDMARK_SETS[name]


def landmark_set_of_width(n_columns: int) -> LandmarkSet | None:
    """The set whose records hold `n_columns` values per frame (the sets' widths differ), or None."""
    return next((s for s in LANDMARK_SETS.values() if s.n_columns == n_columns), None)

