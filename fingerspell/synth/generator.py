"""A synthetic stand-in for the Kaggle ASL Fingerspelling data, in its exact layout.

Why: the real data is 180 GB behind a competition licence, yet the demo, the tests
and a first end-to-end training run need landmark files that look the same to every
stage (same CSVs, same parquet schema, same MediaPipe artefacts) and that a model
can learn from. This module writes such a dataset:

- every one of the 59 characters has its own hand configuration, drawn with a small
  kinematic hand (per-finger flexion, finger spread, thumb, wrist orientation); j and
  z also trace a path. The table is fixed (it never depends on the seed), so a model
  trained on one generated dataset reads another;
- letters blend into each other, signing speed varies, and a sequence starts and
  ends with the hand rising from and dropping to rest;
- participants differ in hand size, framing, camera angle, speed and handedness;
- MediaPipe-like artefacts: jitter, the signing hand undetected in some frames
  (runs included), the other hand mostly undetected, face and pose landmarks that
  move with the head and the arms, and a few sequences with too few hand frames.

Two difficulties, because models score ~0.99 on the easy data and far less on real
recordings, so training choices can only be told apart on the hard one:

- "easy" (the data of earlier versions, byte-for-byte): 5-12 frames a letter, each
  letter fully formed and held, doubled letters slide well apart, mild per-signer
  wrist orientation, the signing hand missing in a few short runs;
- "hard" (the default), closer to the real set: 2-6 frames a letter (30 fps, fluent
  signers), the hand often moving on after 60-100% of the way to a letter's
  configuration (less at speed), doubled letters told apart only by a small slide or
  bounce, each signer's own wrist pitch/yaw/roll plus per-recording variation, about
  half of the sequences losing the signing hand in bursts (10-35% of their frames),
  and the resting hand detected, low by the hip, in runs in some recordings. Every
  sequence not planned as too short still shows the signing hand in more than
  2 * len(phrase) frames, so preprocessing keeps exactly the planned ones.

Phrases (1-31 characters, addresses, URLs and phone numbers) are the same for both.
Run `fingerspell synth --out DIR [--difficulty hard|easy]`; the library entry point is
`generate_dataset`.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from fingerspell.data import schema, vocab
from fingerspell.files import atomic_path
from fingerspell.data.parquet import write_landmarks_parquet
from fingerspell.data.phrases import random_phrase

# ----------------------------------------------------------------------------- layout

DEFAULT_FILES = 4
DEFAULT_SEQUENCES_PER_FILE = 250
DEFAULT_PARTICIPANTS = 12
DEFAULT_SEED = 42
DEFAULT_SUPPLEMENTAL_FILES = 1
DIFFICULTIES = ("hard", "easy")
DEFAULT_DIFFICULTY = "hard"

TRAIN_CSV, TRAIN_DIR = schema.SPLIT_FILES["train"]
SUPPLEMENTAL_CSV, SUPPLEMENTAL_DIR = schema.SPLIT_FILES["supplemental"]
CHARACTER_MAP_NAME = vocab.CHARACTER_MAP_NAME
CSV_COLUMNS = schema.CSV_COLUMNS

#: Share of sequences whose hand is seen in fewer than 2 * len(phrase) frames, as
#: in the real data; preprocessing is expected to drop them.
SHORT_HAND_FRACTION = 0.03
ROW_GROUP_ROWS = 10_000  # about 64 sequences

# Hard data only (easy data keeps the numbers written in its functions).
#: Frames one letter takes: real recordings are ~30 fps and fluent signers are fast.
HARD_LETTER_FRAMES = (2.0, 6.0)
#: A participant's typical frames per letter, before per-recording and per-letter noise.
_HARD_PACE = (2.8, 4.8)
#: How much of the way to a letter's configuration the hand gets before moving on.
HARD_REACH = (0.6, 1.0)
#: Share of a burst sequence's frames in which the signing hand goes undetected.
HARD_BURST_SHARE = (0.10, 0.35)
#: Share of frames the resting hand is detected in, in the recordings where it is.
HARD_REST_SEEN_SHARE = (0.15, 0.45)
#: Spread (radians) of each signer's wrist pitch, yaw and roll offsets (easy data: 0.12).
_HARD_SIGNER_TURN = (0.25, 0.30, 0.25)
#: Spread (radians) of one recording's extra wrist turn, on top of the signer's.
_HARD_RECORDING_TURN = 0.08

_FACE, _LEFT_HAND, _POSE, _RIGHT_HAND = (name for name, _ in schema.PARTS)
_PART_OFFSETS = schema.PART_OFFSETS
N_POINTS = schema.N_POINTS  # 543 landmarks per frame

# ------------------------------------------------------------------------ hand model
# A hand is a vector of N_PARAMS numbers. Local frame, in palm lengths (wrist to
# middle knuckle): x towards the thumb, y along the fingers, z out of the palm (the
# side fingers curl to). Index layout of the vector:
FLEX = slice(0, 10)  # (proximal, distal) flexion of thumb, index, middle, ring, pinky
SPREAD = slice(10, 14)  # abduction of index..pinky, radians, + towards the thumb
THUMB_ABDUCTION = 14  # thumb swing away from the index in the palm plane
THUMB_OPPOSITION = 15  # thumb tilt across the palm
ORIENT = slice(16, 19)  # wrist pitch, yaw, roll
MOTION = slice(19, 22)  # path offset dx, dy (palm lengths) and extra roll, for j/z/rest
N_PARAMS = 22

_FINGER_BASES = np.array(
    [[0.30, 0.92, 0.0], [0.09, 1.00, 0.0], [-0.12, 0.95, 0.0], [-0.31, 0.84, 0.0]]
)
_FINGER_LENGTHS = np.array(
    [[0.44, 0.26, 0.21], [0.49, 0.30, 0.23], [0.46, 0.28, 0.22], [0.36, 0.21, 0.19]]
)
_THUMB_BASE = np.array([0.22, 0.22, 0.03])
_THUMB_LENGTHS = np.array([0.36, 0.30, 0.26])

# Finger states: (proximal, distal) flexion in radians.
_FINGER_STATES: dict[str, tuple[float, float]] = {
    "E": (0.0, 0.05),  # extended
    "C": (1.55, 1.65),  # curled into the fist
    "B": (1.45, 0.10),  # bent at the knuckle only
    "H": (0.20, 1.60),  # hooked
    "R": (0.75, 0.85),  # rounded (c)
    "O": (1.05, 1.05),  # rounded to meet the thumb (o)
    "K": (0.60, 0.15),  # half out (k's middle finger)
    "M": (1.20, 1.25),  # folded over the thumb (m, n)
    "T": (1.30, 1.45),  # index over the thumb (t)
}
# Thumb presets: (abduction, opposition, proximal flexion, distal flexion).
_THUMB_STATES: dict[str, tuple[float, float, float, float]] = {
    "side": (0.05, 0.10, 0.10, 0.10),
    "across": (0.10, 0.95, 0.75, 0.55),
    "low": (0.05, 1.20, 0.90, 0.60),
    "out": (1.15, 0.00, 0.00, 0.05),
    "up": (0.45, 0.35, 0.10, 0.10),
    "touch": (0.45, 0.95, 0.45, 0.35),
    "under": (0.15, 1.15, 0.35, 0.25),
    "round": (0.70, 0.55, 0.30, 0.30),
}
_SPREADS: dict[str, tuple[float, float, float, float]] = {
    "closed": (0.03, 0.0, -0.03, -0.07),
    "open": (0.28, 0.06, -0.14, -0.32),
    "v": (0.26, -0.18, -0.03, -0.07),
    "cross": (-0.22, 0.14, -0.03, -0.07),
}
# Wrist orientations: (pitch, yaw, roll) in radians.
_ORIENTATIONS: dict[str, tuple[float, float, float]] = {
    "front": (0.10, 0.25, 0.05),
    "side": (0.10, 1.25, 0.10),
    "point_side": (0.20, 1.10, 1.45),
    "down": (0.50, 0.40, 2.40),
    "down_side": (0.60, 1.00, 2.60),
    "in": (0.10, 2.70, 0.05),
    "in_side": (0.10, 1.90, 0.10),
    "tilt": (0.10, 0.25, 0.50),
    "lean": (0.40, 0.25, 0.05),
}
# ASL-like letters and digits: (index..pinky states, thumb, spread, orientation).
# Close pairs stay close on purpose, as in real fingerspelling: m/n, u/v, a/s, o/0.
_CHAR_SPECS: dict[str, tuple[str, str, str, str]] = {
    "a": ("CCCC", "side", "closed", "front"),
    "b": ("EEEE", "across", "closed", "front"),
    "c": ("RRRR", "round", "closed", "side"),
    "d": ("EOOO", "touch", "closed", "front"),
    "e": ("HHHH", "low", "closed", "front"),
    "f": ("OEEE", "touch", "open", "front"),
    "g": ("ECCC", "up", "closed", "point_side"),
    "h": ("EECC", "across", "closed", "point_side"),
    "i": ("CCCE", "across", "closed", "front"),
    "j": ("CCCE", "across", "closed", "tilt"),
    "k": ("EKCC", "up", "v", "front"),
    "l": ("ECCC", "out", "closed", "front"),
    "m": ("MMMC", "under", "closed", "front"),
    "n": ("MMCC", "under", "closed", "front"),
    "o": ("OOOO", "touch", "closed", "side"),
    "p": ("EKCC", "up", "v", "down"),
    "q": ("ECCC", "up", "closed", "down_side"),
    "r": ("EECC", "across", "cross", "front"),
    "s": ("CCCC", "across", "closed", "front"),
    "t": ("TCCC", "under", "closed", "front"),
    "u": ("EECC", "across", "closed", "front"),
    "v": ("EECC", "across", "v", "front"),
    "w": ("EEEC", "touch", "open", "front"),
    "x": ("HCCC", "across", "closed", "front"),
    "y": ("CCCE", "out", "open", "front"),
    "z": ("ECCC", "across", "closed", "lean"),
    "0": ("OOOO", "touch", "closed", "front"),
    "1": ("ECCC", "across", "closed", "in"),
    "2": ("EECC", "across", "v", "in"),
    "3": ("EECC", "out", "v", "in_side"),
    "4": ("EEEE", "across", "open", "in"),
    "5": ("EEEE", "out", "open", "in"),
    "6": ("EEEO", "touch", "open", "in"),
    "7": ("EEOE", "touch", "open", "in"),
    "8": ("EOEE", "touch", "open", "in"),
    "9": ("OEEE", "touch", "open", "side"),
}
#: Characters whose sign is a movement: (dx, dy) waypoints in palm lengths, plus a
#: wrist twist (radians) reached at the end. x is towards the signer's dominant side.
MOTION_PATHS: dict[str, tuple[tuple[tuple[float, float], ...], float]] = {
    "j": (((0, 0), (0, -0.5), (0, -1.0), (-0.15, -1.3), (-0.45, -1.35), (-0.65, -1.1)), -0.9),
    "z": (((0, 0), (0.9, 0), (0.1, -0.8), (1.0, -0.8)), 0.0),
}
#: The table's fixed seed: it never depends on the dataset seed.
_TABLE_SEED = 0x5F1A6E
#: Characters drawn at random from the fixed seed must be at least this far (RMS over
#: the 21 points, palm lengths) from every other character.
_MIN_DRAWN_DISTANCE = 0.22
_REST = "rest"


def _spec_params(fingers: str, thumb: str, spread: str, orient: str) -> np.ndarray:
    """The parameter vector of a hand spelled with the presets above."""
    p = np.zeros(N_PARAMS)
    abd, opp, t1, t2 = _THUMB_STATES[thumb]
    flex = [(t1, t2)] + [_FINGER_STATES[s] for s in fingers]
    p[FLEX] = np.asarray(flex).reshape(-1)
    p[SPREAD] = _SPREADS[spread]
    p[THUMB_ABDUCTION], p[THUMB_OPPOSITION] = abd, opp
    p[ORIENT] = _ORIENTATIONS[orient]
    return p


def _random_params(rng: np.random.Generator) -> np.ndarray:
    """A random but plausible hand, for the characters with no ASL letter shape."""
    states = list(_FINGER_STATES)
    fingers = "".join(states[i] for i in rng.integers(len(states), size=4))
    thumbs = list(_THUMB_STATES)
    p = _spec_params(fingers, thumbs[int(rng.integers(len(thumbs)))], "closed", "front")
    p[SPREAD] = rng.uniform(-0.15, 0.3, size=4) * np.array([1.0, 0.4, -0.6, -1.0])
    p[ORIENT] = rng.uniform([-0.6, -1.5, -1.3], [0.8, 2.8, 2.8])
    return p


@lru_cache(maxsize=None)
def _table() -> tuple[tuple[str, np.ndarray], ...]:
    """Build the character -> parameters table once, from specs and the fixed seed."""
    table: dict[str, np.ndarray] = {}
    for char, spec in _CHAR_SPECS.items():
        table[char] = _spec_params(*spec)
    rng = np.random.default_rng(_TABLE_SEED)
    ordered = sorted(vocab.char_to_index(), key=vocab.char_to_index().get)
    for char in (c for c in ordered if c not in table):
        table[char] = _draw_distinct(rng, list(table.values()))
    table[_REST] = _spec_params("KKKK", "side", "closed", "front")
    table[_REST][FLEX] = 0.35
    table[_REST][ORIENT] = (0.3, 0.7, 0.15)
    for p in table.values():
        p.setflags(write=False)
    return tuple(table.items())


def _draw_distinct(rng: np.random.Generator, taken: list[np.ndarray]) -> np.ndarray:
    """Draw random hands until one is far enough from all `taken` ones."""
    taken_shapes = np.stack([posed_hand(p) for p in taken])
    for _ in range(10_000):
        p = _random_params(rng)
        d = _shape_distance(posed_hand(p)[None], taken_shapes)
        if d.min() > _MIN_DRAWN_DISTANCE:
            return p
    raise RuntimeError("could not draw a distinct hand configuration")


def configuration_table() -> dict[str, np.ndarray]:
    """Every character of the map -> its hand parameter vector (read-only arrays).

    The same on every call and for every dataset seed: a model trained on one
    generated dataset must read another.
    """
    return {c: p for c, p in _table() if c != _REST}


@lru_cache(maxsize=None)
def _table_dict() -> dict[str, np.ndarray]:
    return dict(_table())


def _params_of(char: str) -> np.ndarray:
    """The fixed parameter vector of `char` (or of the rest pose)."""
    return _table_dict()[char]


def character_shape(char: str) -> np.ndarray:
    """The 21 posed hand points [21, 3] of `char` at rest (path start), palm lengths."""
    return posed_hand(_params_of(char))


def _shape_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS point distance between hand shapes [..., 21, 3]."""
    return np.sqrt(((a - b) ** 2).sum(-1).mean(-1))


def _chain(base: np.ndarray, directions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Joint positions of a chain: base then cumulative segments [..., k+1, 3]."""
    segments = directions * lengths[..., :, None]
    joints = base[..., None, :] + np.cumsum(segments, axis=-2)
    base_b = np.broadcast_to(base[..., None, :], joints[..., :1, :].shape)
    return np.concatenate([base_b, joints], axis=-2)


def _fingers(params: np.ndarray) -> np.ndarray:
    """Index..pinky joints [..., 4, 4, 3]: each finger bends in its own plane."""
    flex = params[..., FLEX].reshape(params.shape[:-1] + (5, 2))[..., 1:, :]
    a1 = flex[..., 0]
    a2 = a1 + flex[..., 1]
    angles = np.stack([a1, a2, a2 + 0.7 * flex[..., 1]], axis=-1)  # [..., 4, 3]
    spread = params[..., SPREAD]
    plane = np.stack([np.sin(spread), np.cos(spread), np.zeros_like(spread)], axis=-1)
    normal = np.array([0.0, 0.0, 1.0])
    dirs = (np.cos(angles)[..., None] * plane[..., None, :]
            + np.sin(angles)[..., None] * normal)
    bases = np.broadcast_to(_FINGER_BASES, params.shape[:-1] + (4, 3))
    return _chain(bases, dirs, _FINGER_LENGTHS)


def _thumb(params: np.ndarray) -> np.ndarray:
    """Thumb joints [..., 4, 3]: swung out, tilted across the palm, then curled."""
    phi = 0.45 + params[..., THUMB_ABDUCTION]
    opp = params[..., THUMB_OPPOSITION]
    d = np.stack([np.sin(phi) * np.cos(opp), np.cos(phi) * np.cos(opp), np.sin(opp)], -1)
    ref = np.array([-1.0, 0.0, 1.0]) / np.sqrt(2.0)
    curl = ref - (d @ ref)[..., None] * d
    curl /= np.linalg.norm(curl, axis=-1, keepdims=True)
    f = params[..., 0:2]
    beta = np.stack([np.zeros_like(phi), f[..., 0], f[..., 0] + f[..., 1]], axis=-1)
    dirs = np.cos(beta)[..., None] * d[..., None, :] + np.sin(beta)[..., None] * curl[..., None, :]
    base = np.broadcast_to(_THUMB_BASE, params.shape[:-1] + (3,))
    return _chain(base, dirs, _THUMB_LENGTHS)


def hand_points(params: np.ndarray) -> np.ndarray:
    """MediaPipe's 21 hand points [..., 21, 3] for parameters [..., N_PARAMS], unrotated."""
    params = np.asarray(params, dtype=np.float64)
    wrist = np.zeros(params.shape[:-1] + (1, 3))
    fingers = _fingers(params).reshape(params.shape[:-1] + (16, 3))
    return np.concatenate([wrist, _thumb(params), fingers], axis=-2)


def rotation(pitch: np.ndarray, yaw: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] = Rz(roll) @ Ry(yaw) @ Rx(pitch)."""
    pitch, yaw, roll = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (pitch, yaw, roll)))
    o, z = np.ones_like(pitch), np.zeros_like(pitch)
    cp, sp, cy, sy, cr, sr = (np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw),
                              np.cos(roll), np.sin(roll))
    rx = np.stack([o, z, z, z, cp, -sp, z, sp, cp], -1).reshape(pitch.shape + (3, 3))
    ry = np.stack([cy, z, sy, z, o, z, -sy, z, cy], -1).reshape(pitch.shape + (3, 3))
    rz = np.stack([cr, -sr, z, sr, cr, z, z, z, o], -1).reshape(pitch.shape + (3, 3))
    return rz @ ry @ rx


def posed_hand(params: np.ndarray) -> np.ndarray:
    """Hand points [..., 21, 3] turned by the wrist orientation (and the path's twist)."""
    params = np.asarray(params, dtype=np.float64)
    o = params[..., ORIENT]
    r = rotation(o[..., 0], o[..., 1], o[..., 2] + params[..., MOTION.stop - 1])
    return hand_points(params) @ np.swapaxes(r, -1, -2)


def _motion_offsets(char: str, phase: np.ndarray) -> np.ndarray:
    """Motion channels [len(phase), 3] of `char` along its path at phases in [0, 1]."""
    out = np.zeros((len(phase), 3))
    if char in MOTION_PATHS:
        waypoints, twist = MOTION_PATHS[char]
        pts = np.asarray(waypoints, dtype=np.float64)
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        s = phase * arc[-1]
        out[:, 0] = np.interp(s, arc, pts[:, 0])
        out[:, 1] = np.interp(s, arc, pts[:, 1])
        out[:, 2] = twist * phase
    return out


# ---------------------------------------------------------------------- participants


@dataclass(frozen=True)
class Participant:
    """How one signer and their camera differ from the others."""

    participant_id: int
    left_handed: bool
    palm_length: float  # metres, wrist to middle knuckle
    shoulder_width: float  # metres
    aspect: float  # image width / height
    view_width: float  # metres across the image at the body
    center: tuple[float, float]  # image position of the shoulder midpoint
    camera: tuple[float, float, float]  # camera pitch, yaw, roll (radians)
    hand_home: tuple[float, float, float]  # signing wrist position, metres from the neck
    frames_per_char: float
    missing_rate: float  # share of frames the signing hand goes undetected
    other_hand_rate: float  # share of frames the other hand is detected
    jitter: float  # landmark noise, normalized image units
    style: tuple[float, ...]  # personal offsets to flexion (10) and orientation (3)
    burst_chance: float = 0.0  # hard data: share of recordings losing the hand in bursts
    rest_seen_chance: float = 0.0  # hard data: share of recordings showing the resting hand


def _check_difficulty(difficulty: str, shown: str = "difficulty") -> None:
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"{shown} must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")


def left_handed_count(n_participants: int) -> int:
    """About 15% left-handers, at least one once there are four participants."""
    if n_participants < 4:
        return 0
    return max(1, int(round(0.15 * n_participants)))


def make_participants(n: int, rng: np.random.Generator,
                      difficulty: str = DEFAULT_DIFFICULTY) -> list[Participant]:
    """`n` participants with distinct int ids, ~15% of them left-handed.

    Hard participants are the easy ones of the same generator state (same ids, bodies
    and cameras), made faster, more individual and recorded in worse conditions.
    """
    _check_difficulty(difficulty)
    ids = np.sort(rng.choice(max(256, 4 * n), size=n, replace=False) + 1)
    lefties = set(rng.choice(n, size=left_handed_count(n), replace=False).tolist())
    people = [_draw_participant(int(pid), i in lefties, rng) for i, pid in enumerate(ids)]
    if difficulty == "hard":
        people = [_harden(p, rng) for p in people]
    return people


def _harden(participant: Participant, rng: np.random.Generator) -> Participant:
    """The same signer signing fast, with their own wrist orientation, in worse conditions."""
    turn = rng.normal(0, _HARD_SIGNER_TURN)
    return replace(
        participant,
        frames_per_char=float(rng.uniform(*_HARD_PACE)),
        style=participant.style[:10] + tuple(float(a) for a in turn),
        burst_chance=float(rng.uniform(0.3, 0.7)),
        rest_seen_chance=float(rng.uniform(0.1, 0.5)),
    )


def _draw_participant(pid: int, left_handed: bool, rng: np.random.Generator) -> Participant:
    """One participant; phones are mostly held upright, as in the real recordings."""
    kind = int(rng.choice(3, p=[0.7, 0.2, 0.1]))  # portrait, landscape, square
    aspect = (9 / 16, 16 / 9, 1.0)[kind]
    view = rng.uniform(*((0.75, 1.1), (1.4, 1.9), (0.95, 1.3))[kind])
    cy = rng.uniform(*((0.5, 0.62), (0.62, 0.75), (0.55, 0.68))[kind])
    camera = rng.normal(0, [0.1, 0.15, 0.06])
    style = np.concatenate([rng.normal(0, 0.05, 10), rng.normal(0, 0.12, 3)])
    return Participant(
        participant_id=pid,
        left_handed=left_handed,
        palm_length=0.085 * rng.uniform(0.85, 1.15),
        shoulder_width=rng.uniform(0.33, 0.43),
        aspect=aspect,
        view_width=float(view),
        center=(float(rng.uniform(0.4, 0.6)), float(cy)),
        camera=tuple(float(a) for a in camera),
        hand_home=(float(rng.uniform(0.1, 0.24)), float(rng.uniform(-0.04, 0.1)),
                   float(rng.uniform(0.15, 0.3))),
        frames_per_char=float(rng.uniform(6.0, 10.0)),
        missing_rate=float(rng.uniform(0.04, 0.18)),
        other_hand_rate=float(rng.uniform(0.02, 0.1)),
        jitter=float(rng.uniform(0.0012, 0.0035)),
        style=tuple(float(s) for s in style),
    )


# ------------------------------------------------------------------------ sequences


@dataclass
class SequenceArrays:
    """One rendered sequence: every landmark of every frame, plus where letters are held."""

    points: np.ndarray  # [T, 543, 3] float32, parts in schema.PARTS order, NaN = undetected
    hold_frames: np.ndarray  # [len(phrase)] frame at the middle of each character's hold
    dominant: str  # part name of the signing hand
    letter_frames: np.ndarray  # [len(phrase)] frames each character took (float)

    @property
    def n_frames(self) -> int:
        return int(self.points.shape[0])

    def part(self, name: str) -> np.ndarray:
        """The [T, n, 3] view of one part (e.g. the signing hand)."""
        start = _PART_OFFSETS[name]
        return self.points[:, start:start + schema.PART_SIZES[name]]


@dataclass
class _Timeline:
    """Keyframes of the hand parameters over one sequence."""

    times: np.ndarray  # [K] increasing frame times
    values: np.ndarray  # [K, N_PARAMS]
    eased: np.ndarray  # [K - 1] segment eases in and out (transitions) or is linear (paths)
    n_frames: int
    hold_frames: np.ndarray
    letter_frames: np.ndarray  # [len(phrase)] frames given to each character


def _char_durations(phrase: str, participant: Participant, rng: np.random.Generator) -> np.ndarray:
    """Frames per character: about 5-12, the participant's pace times per-letter noise."""
    pace = participant.frames_per_char * np.exp(rng.normal(0, 0.08))
    d = np.clip(pace * np.exp(rng.normal(0, 0.18, len(phrase))), 5.0, 12.0)
    return d * np.array([1.4 if c in MOTION_PATHS else 1.0 for c in phrase])


def _instance(char: str, participant: Participant, rng: np.random.Generator) -> np.ndarray:
    """The character's table entry with this signer's style and this instance's slop."""
    p = _params_of(char).copy()
    style = np.asarray(participant.style)
    p[FLEX] += style[:10] + rng.normal(0, 0.06, 10)
    p[SPREAD] += rng.normal(0, 0.03, 4)
    p[THUMB_ABDUCTION:THUMB_OPPOSITION + 1] += rng.normal(0, 0.05, 2)
    p[ORIENT] += style[10:] + rng.normal(0, 0.05, 3)
    return p


def _timeline(phrase: str, participant: Participant, rng: np.random.Generator) -> _Timeline:
    """Keyframes: rest, each character's hold (or path), rest; transitions in between."""
    dur = _char_durations(phrase, participant, rng)
    lead_in, lead_out = rng.integers(2, 9, size=2)
    starts = lead_in + np.cumsum(dur) - dur
    n_frames = int(np.ceil(lead_in + dur.sum() + lead_out))
    rest = _instance(_REST, participant, rng)
    rest[MOTION] = (0.6, -3.0, 0.0)  # lower and outside: the hand rises from the lap
    times, values, eased = [0.0], [rest], []
    holds = np.empty(len(phrase), dtype=np.int64)
    slide = 0.0
    for i, char in enumerate(phrase):
        moving = char in MOTION_PATHS
        h = 0.75 if moving else rng.uniform(0.35, 0.55)
        t0, t1 = starts[i] + (1 - h) / 2 * dur[i], starts[i] + (1 + h) / 2 * dur[i]
        slide = slide + 0.35 if i and char == phrase[i - 1] else 0.0  # doubled letters slide
        base = _instance(char, participant, rng)
        phases = np.linspace(0.0, 1.0, 7 if moving else 2)
        path = _motion_offsets(char, phases)
        for k, (t, m) in enumerate(zip(np.linspace(t0, t1, len(phases)), path)):
            v = base.copy()
            v[MOTION] = m + (slide, 0.0, 0.0)
            times.append(float(t))
            values.append(v)
            eased.append(k == 0)
        holds[i] = int(round((t0 + t1) / 2))
    times.append(float(n_frames - 1))
    values.append(rest)
    eased.append(True)
    return _Timeline(np.asarray(times), np.stack(values), np.asarray(eased), n_frames, holds, dur)


def min_visible_frames(n_chars: int) -> int:
    """Frames with the signing hand that a sequence not meant to be dropped keeps at least.

    Preprocessing keeps a sequence when more than 2 * len(phrase) frames show a hand;
    one frame of margin on top.
    """
    return 2 * n_chars + 2


def _hard_min_frames(n_chars: int) -> int:
    """Shortest hard sequence that can lose HARD_BURST_SHARE[0] of its frames and be kept."""
    return int(np.ceil((min_visible_frames(n_chars) + 1) / (1 - HARD_BURST_SHARE[0])))


def _hard_char_durations(phrase: str, participant: Participant,
                         rng: np.random.Generator) -> np.ndarray:
    """Frames per character, 2-6: the signer's pace times per-recording and per-letter noise."""
    pace = participant.frames_per_char * np.exp(rng.normal(0, 0.1))
    d = pace * np.exp(rng.normal(0, 0.22, len(phrase)))
    d *= np.array([1.3 if c in MOTION_PATHS else 1.0 for c in phrase])
    return np.clip(d, *HARD_LETTER_FRAMES)


def _reach(frames: float, rng: np.random.Generator) -> float:
    """Share of the way to a letter's configuration the hand gets: 60-100%, less when quick.

    The quickest letters get at most 85% of the way; the slowest reach it fully about
    a quarter of the time.
    """
    low, high = HARD_LETTER_FRAMES
    slowness = (frames - low) / (high - low)
    return float(min(HARD_REACH[1], rng.uniform(HARD_REACH[0], 0.85 + 0.3 * slowness)))


def _partial_pose(reached: np.ndarray, target: np.ndarray, reach: float) -> np.ndarray:
    """The hand configuration `reach` of the way from the pose reached last to `target`."""
    pose = target.copy()
    shape = slice(0, MOTION.start)
    pose[shape] = reached[shape] + reach * (target[shape] - reached[shape])
    return pose


@dataclass
class _Keyframes:
    """Keyframes laid down in time order; `eased[k]` belongs to the segment ending at k + 1."""

    times: list[float]
    values: list[np.ndarray]
    eased: list[bool]

    def add(self, time: float, value: np.ndarray, eased: bool) -> None:
        self.times.append(time)
        self.values.append(value)
        self.eased.append(eased)

    def timeline(self, n_frames: int, holds: np.ndarray, letter_frames: np.ndarray) -> _Timeline:
        return _Timeline(np.asarray(self.times), np.stack(self.values), np.asarray(self.eased),
                         n_frames, holds, letter_frames)


def _double_letter(keys: _Keyframes, reached: np.ndarray, rest: np.ndarray, slide: float,
                   time: float, rng: np.random.Generator) -> float:
    """A repeated letter, told apart only by a small slide sideways or a bounce.

    Returns the sideways slide of the letter; a bounce is laid down as a keyframe.
    """
    if rng.random() < 0.5:
        return slide + float(rng.uniform(0.15, 0.25))
    bounce = reached.copy()
    bounce[MOTION.start + 1] -= rng.uniform(0.15, 0.3)  # a small dip, palm lengths
    bounce[FLEX] += 0.2 * (rest[FLEX] - bounce[FLEX])  # the fingers relax a little
    keys.add(time, bounce, True)
    return slide


def _letter_keys(keys: _Keyframes, char: str, pose: np.ndarray, reach: float, slide: float,
                 start: float, frames: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """One letter's keyframes: a brief hold, or its path (shrunk by `reach`).

    Returns the last pose laid down and the frame at the middle of the letter.
    """
    moving = char in MOTION_PATHS
    h = 0.75 if moving else rng.uniform(0.1, 0.3)
    t0, t1 = start + (1 - h) / 2 * frames, start + (1 + h) / 2 * frames
    phases = np.linspace(0.0, 1.0, 7 if moving else 2)
    path = reach * _motion_offsets(char, phases)
    for k, (t, m) in enumerate(zip(np.linspace(t0, t1, len(phases)), path)):
        value = pose.copy()
        value[MOTION] = m + (slide, 0.0, 0.0)
        keys.add(float(t), value, k == 0)
    return value, int(round((t0 + t1) / 2))


def _hard_timeline(phrase: str, participant: Participant, rng: np.random.Generator) -> _Timeline:
    """Keyframes of fast, co-articulated signing: each letter is reached from the pose
    actually reached before it, often only part of the way."""
    dur = _hard_char_durations(phrase, participant, rng)
    lead_in, lead_out = rng.integers(3, 16, size=2)
    starts = lead_in + np.cumsum(dur) - dur
    n_frames = max(int(np.ceil(lead_in + dur.sum() + lead_out)), _hard_min_frames(len(phrase)))
    rest = _instance(_REST, participant, rng)
    rest[MOTION] = (0.6, -3.0, 0.0)  # lower and outside: the hand rises from the lap
    recording_turn = rng.normal(0, _HARD_RECORDING_TURN, 3)
    keys = _Keyframes([0.0], [rest], [])
    holds = np.empty(len(phrase), dtype=np.int64)
    reached, slide = rest, 0.0
    for i, char in enumerate(phrase):
        target = _instance(char, participant, rng)
        target[ORIENT] += recording_turn
        doubled = i > 0 and char == phrase[i - 1]
        if doubled:
            slide = _double_letter(keys, reached, rest, slide, float(starts[i]), rng)
        else:
            slide = 0.0
        reach = _reach(float(dur[i]), rng)
        pose = _partial_pose(reached, target, reach)
        reached, holds[i] = _letter_keys(keys, char, pose, reach, slide, float(starts[i]),
                                         float(dur[i]), rng)
    keys.add(float(n_frames - 1), rest, True)
    return keys.timeline(n_frames, holds, dur)


def _interpolate(tl: _Timeline) -> np.ndarray:
    """Per-frame parameters [T, N_PARAMS]: smoothstep across transitions, linear on paths."""
    t = np.arange(tl.n_frames, dtype=np.float64)
    k = np.clip(np.searchsorted(tl.times, t, side="right") - 1, 0, len(tl.times) - 2)
    w = np.clip((t - tl.times[k]) / (tl.times[k + 1] - tl.times[k]), 0.0, 1.0)
    w = np.where(tl.eased[k], w * w * (3 - 2 * w), w)
    return tl.values[k] * (1 - w[:, None]) + tl.values[k + 1] * w[:, None]


def _side_matrix(left: bool) -> np.ndarray:
    """Local hand frame -> world: palm to the camera, thumb towards the body midline."""
    return np.diag([1.0 if left else -1.0, 1.0, 1.0])


def _signing_hand(params: np.ndarray, participant: Participant, rng: np.random.Generator,
                  ) -> np.ndarray:
    """World points [T, 21, 3] of the signing hand, following its path and a slow drift."""
    n = len(params)
    side = -1.0 if participant.left_handed else 1.0
    home = np.asarray(participant.hand_home) * (side, 1.0, 1.0)
    t = np.arange(n) / max(n - 1, 1)
    drift = np.outer(t, rng.uniform([-0.02, -0.02, -0.02], [0.05, 0.02, 0.02]) * (side, 1, 1))
    sway = 0.008 * np.sin(2 * np.pi * (t[:, None] * rng.uniform(0.5, 2.0, 3) + rng.random(3)))
    offset = params[:, MOTION.start:MOTION.start + 2] * participant.palm_length
    wrist = home + drift + sway
    wrist[:, 0] += offset[:, 0] * side
    wrist[:, 1] += offset[:, 1]
    local = posed_hand(params) @ _side_matrix(participant.left_handed).T
    return wrist[:, None, :] + participant.palm_length * local


def _resting_hand(n: int, participant: Participant, rng: np.random.Generator,
                  shift: np.ndarray | None = None) -> np.ndarray:
    """World points [T, 21, 3] of the other hand, hanging by the hip (moved by `shift`, metres)."""
    side = 1.0 if participant.left_handed else -1.0  # the other hand's side of the body
    p = np.array(_params_of(_REST), dtype=np.float64)
    p[ORIENT] = (0.0, 1.4, np.pi)
    wrist = np.array([side * (participant.shoulder_width / 2 + 0.04), -0.45, 0.06])
    if shift is not None:
        wrist = wrist + shift
    sway = 0.01 * np.sin(2 * np.pi * (np.arange(n)[:, None] / 90.0 + rng.random(3)))
    local = posed_hand(p) @ _side_matrix(not participant.left_handed).T
    return (wrist + sway)[:, None, :] + participant.palm_length * local[None]


@lru_cache(maxsize=None)
def _face_template() -> np.ndarray:
    """468 face-mesh points [468, 3] on the front of an ellipsoid, metres from the head centre.

    Fixed (its own seed), so faces differ only by placement, pose and jitter.
    """
    rng = np.random.default_rng(_TABLE_SEED + 1)
    theta = rng.uniform(-1.35, 1.35, schema.PART_SIZES["face"])
    phi = rng.uniform(-1.1, 1.0, schema.PART_SIZES["face"])
    pts = np.stack([0.075 * np.sin(theta) * np.cos(phi), 0.105 * np.sin(phi),
                    0.08 * np.cos(theta) * np.cos(phi)], axis=-1)
    pts[1] = (0.0, -0.01, 0.1)  # MediaPipe's point 1 is the nose tip
    return pts


# Pose points 0-10 (nose, eyes, ears, mouth) relative to the head centre, x for +X side.
_POSE_FACE = np.array([
    [0.0, -0.01, 0.10],
    [-0.017, 0.035, 0.085], [-0.032, 0.037, 0.08], [-0.047, 0.035, 0.07],
    [0.017, 0.035, 0.085], [0.032, 0.037, 0.08], [0.047, 0.035, 0.07],
    [-0.075, 0.01, 0.0], [0.075, 0.01, 0.0],
    [-0.025, -0.045, 0.085], [0.025, -0.045, 0.085],
])
# Hips, knees, ankles, heels, foot tips (23-32): (|x|, y, z) with left at -X.
_POSE_LEGS = np.array([
    [0.14, -0.52, -0.02], [0.13, -0.98, 0.0], [0.13, -1.42, -0.02],
    [0.13, -1.46, -0.07], [0.13, -1.47, 0.08],
])
_HEAD_CENTRE = np.array([0.0, 0.24, 0.03])


def _head(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Head centre [T, 3] and rotation [T, 3, 3]: small sways, as a signer keeps still."""
    t = np.arange(n)[:, None] / 30.0
    wave = np.sin(2 * np.pi * (t * rng.uniform(0.2, 0.8, 3) + rng.random(3)))
    centre = _HEAD_CENTRE + 0.006 * wave
    angles = 0.05 * np.sin(2 * np.pi * (t * rng.uniform(0.1, 0.5, 3) + rng.random(3)))
    return centre, rotation(angles[:, 0], angles[:, 1], angles[:, 2])


def _pose(head_c: np.ndarray, head_r: np.ndarray, right: np.ndarray, left: np.ndarray,
          participant: Participant) -> np.ndarray:
    """World pose points [T, 33, 3]; arm points 13-22 hang off the hands' wrists."""
    n = len(head_c)
    pose = np.zeros((n, 33, 3))
    pose[:, 0:11] = head_c[:, None] + _POSE_FACE @ np.swapaxes(head_r, 1, 2)
    half = participant.shoulder_width / 2
    shoulders = {_LEFT_HAND: np.array([-half, 0.0, 0.0]), _RIGHT_HAND: np.array([half, 0.0, 0.0])}
    pose[:, 11], pose[:, 12] = shoulders[_LEFT_HAND], shoulders[_RIGHT_HAND]
    for part, hand, arm in ((_LEFT_HAND, left, schema.LEFT_ARM_POSE),
                            (_RIGHT_HAND, right, schema.RIGHT_ARM_POSE)):
        out = np.sign(shoulders[part][0])
        elbow_i, wrist_i, pinky_i, index_i, thumb_i = arm
        scale = participant.shoulder_width / 0.38
        pose[:, elbow_i] = _elbow(shoulders[part], hand[:, 0], 0.28 * scale, 0.26 * scale,
                                  np.array([0.35 * out, -1.0, -0.2]))
        pose[:, wrist_i] = hand[:, 0]
        pose[:, pinky_i] = hand[:, 17:19].mean(axis=1)
        pose[:, index_i] = hand[:, 5:7].mean(axis=1)
        pose[:, thumb_i] = hand[:, 3]
    legs = np.repeat(_POSE_LEGS, 2, axis=0) * np.tile([[-1, 1, 1], [1, 1, 1]], (5, 1))
    pose[:, 23:33] = legs * (participant.shoulder_width / 0.38, 1, 1)
    return pose


def _elbow(shoulder: np.ndarray, wrist: np.ndarray, upper: float, fore: float,
           pole: np.ndarray) -> np.ndarray:
    """Elbow positions [T, 3] by two-bone inverse kinematics, bending towards `pole`."""
    axis = wrist - shoulder
    dist = np.clip(np.linalg.norm(axis, axis=-1, keepdims=True), 1e-6, 0.999 * (upper + fore))
    u = axis / dist
    along = (upper**2 - fore**2 + dist**2) / (2 * dist)
    radius = np.sqrt(np.clip(upper**2 - along**2, 0.0, None))
    bend = pole - (u @ pole)[:, None] * u
    bend /= np.clip(np.linalg.norm(bend, axis=-1, keepdims=True), 1e-6, None)
    return shoulder + along * u + radius * bend


def _camera(participant: Participant, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """This recording's camera rotation and image centre: the participant's plus a wobble."""
    angles = np.asarray(participant.camera) + rng.normal(0, 0.02, 3)
    centre = np.asarray(participant.center) + rng.normal(0, 0.01, 2)
    return rotation(*angles), centre


def _project(world: np.ndarray, cam_r: np.ndarray, centre: np.ndarray,
             participant: Participant) -> np.ndarray:
    """World metres -> MediaPipe normalized image x, y and depth (smaller z = closer)."""
    kx = 1.0 / participant.view_width
    ky = kx * participant.aspect
    affine = np.diag([kx, -ky, -kx]) @ cam_r  # image y grows downwards, z away from camera
    return world @ affine.T + (centre[0], centre[1], 0.0)


def _runs_mask(n: int, rate: float, mean_run: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean [n]: about `rate` of the frames set, in runs (detectors fail in bursts)."""
    n_runs = rng.poisson(rate * n / mean_run)
    starts = rng.integers(0, n, size=n_runs)
    ends = np.minimum(starts + rng.geometric(1.0 / mean_run, size=n_runs), n)
    edges = np.zeros(n + 1, dtype=np.int64)
    np.add.at(edges, starts, 1)
    np.add.at(edges, ends, -1)
    return np.cumsum(edges[:n]) > 0


def _signing_hand_missing(n: int, n_chars: int, participant: Participant, short_hand: bool,
                          rng: np.random.Generator) -> np.ndarray:
    """Frames where the signing hand goes undetected (True = missing)."""
    if short_hand:  # seen in fewer than 2 * len(phrase) frames: preprocessing drops it
        seen = int(rng.integers(0, min(2 * n_chars, n)))
        start = int(rng.integers(0, n - seen + 1))
        missing = np.ones(n, dtype=bool)
        missing[start:start + seen] = False
        return missing
    missing = _runs_mask(n, participant.missing_rate, 2.5, rng)
    missing[: int(rng.integers(0, 4))] = True  # the hand comes into view late
    missing[n - int(rng.integers(0, 4)):] = True
    return missing


def _placed_runs(n: int, count: int, n_runs: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean [n] with exactly `count` frames set, in at most `n_runs` runs at random places."""
    mask = np.zeros(n, dtype=bool)
    n_runs = min(n_runs, count)
    if n_runs < 1:
        return mask
    cuts = np.sort(rng.choice(np.arange(1, count), size=n_runs - 1, replace=False))
    lengths = np.diff(np.concatenate([[0], cuts, [count]]))
    gaps_before = np.sort(rng.integers(0, n - count + 1, size=n_runs))
    starts = gaps_before + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for start, length in zip(starts, lengths):
        mask[start:start + length] = True
    return mask


def _missing_bursts(lost: np.ndarray, max_missing: int, rng: np.random.Generator) -> np.ndarray:
    """Frames [T] without the signing hand in a burst sequence: HARD_BURST_SHARE of them, in runs.

    Frames already `lost` (hand out of frame) count towards the share; no more than
    `max_missing` frames go missing, so the sequence keeps enough hand frames.
    """
    n = len(lost)
    low, high = int(np.ceil(HARD_BURST_SHARE[0] * n)), int(HARD_BURST_SHARE[1] * n)
    total = min(int(np.clip(round(rng.uniform(*HARD_BURST_SHARE) * n), low, high)), max_missing)
    count = max(total - int(lost.sum()), 0)
    n_runs = max(1, int(round(count / rng.uniform(4.0, 9.0))))
    free = np.flatnonzero(~lost)
    missing = lost.copy()
    missing[free[_placed_runs(len(free), count, n_runs, rng)]] = True
    return missing


def _restore_frames(missing: np.ndarray, lost: np.ndarray, max_missing: int,
                    rng: np.random.Generator) -> np.ndarray:
    """`missing` with random frames (not `lost` ones) detected again, down to `max_missing`."""
    excess = int(missing.sum()) - max_missing
    restorable = np.flatnonzero(missing & ~lost)
    if excess > 0 and len(restorable):
        missing = missing.copy()
        missing[rng.choice(restorable, size=min(excess, len(restorable)), replace=False)] = False
    return missing


def _hard_signing_hand_missing(n_chars: int, participant: Participant, short_hand: bool,
                               burst: bool, lost: np.ndarray,
                               rng: np.random.Generator) -> np.ndarray:
    """Frames [T] without the signing hand in hard data, `lost` (out of frame) ones included.

    Sequences not planned `short_hand` keep min_visible_frames(n_chars) hand frames.
    """
    n = len(lost)
    if short_hand:
        return _signing_hand_missing(n, n_chars, participant, True, rng) | lost
    max_missing = n - min_visible_frames(n_chars)
    if burst:
        return _missing_bursts(lost, max_missing, rng)
    missing = _signing_hand_missing(n, n_chars, participant, False, rng) | lost
    return _restore_frames(missing, lost, max_missing, rng)


def _hard_resting_hand_seen(n: int, participant: Participant,
                            rng: np.random.Generator) -> np.ndarray:
    """Frames [T] where the resting hand is detected: in some recordings, long runs of them."""
    if rng.random() < participant.rest_seen_chance:
        count = int(round(rng.uniform(*HARD_REST_SEEN_SHARE) * n))
        return _placed_runs(n, count, max(1, int(round(count / rng.uniform(6.0, 14.0)))), rng)
    return _runs_mask(n, participant.other_hand_rate, 4.0, rng)


def _out_of_frame(hand: np.ndarray) -> np.ndarray:
    """Frames [T] where most of a hand lies outside the image: MediaPipe cannot see it."""
    xy = hand[..., :2]
    outside = ((xy < 0.0) | (xy > 1.0)).any(axis=-1)
    return outside.mean(axis=-1) > 0.5


def _add_jitter(points: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Per-point noise plus a per-frame shift of the whole part, as MediaPipe wobbles."""
    scale = np.array([1.0, 1.0, 1.5], dtype=np.float32) * sigma
    noise = rng.standard_normal(points.shape, dtype=np.float32) * scale
    shift = rng.standard_normal((points.shape[0], 1, 3), dtype=np.float32) * scale
    return points + noise + shift


def render_sequence(phrase: str, participant: Participant, rng: np.random.Generator,
                    short_hand: bool = False, difficulty: str = DEFAULT_DIFFICULTY,
                    missing_burst: bool = False) -> SequenceArrays:
    """Every landmark of one fingerspelled `phrase` by `participant`, as MediaPipe saw it.

    `short_hand` makes the signing hand visible in fewer than 2 * len(phrase) frames,
    which the real data has and preprocessing must drop. `difficulty` picks the
    signing and detection model (module docstring); draw `participant` with the same
    one. `missing_burst` (hard only) loses the signing hand in runs covering
    HARD_BURST_SHARE of the frames.
    """
    if not phrase:
        raise ValueError("cannot render an empty phrase")
    if bad := vocab.unknown_chars(phrase):
        raise ValueError(f"phrase {phrase!r} has characters outside the map: {sorted(bad)}")
    _check_difficulty(difficulty)
    if difficulty == "hard":
        return _render_hard(phrase, participant, rng, short_hand, missing_burst)
    if missing_burst:
        raise ValueError("missing_burst needs difficulty='hard'")
    return _render_easy(phrase, participant, rng, short_hand)


def _hand_parts(participant: Participant) -> tuple[str, str]:
    """Part names of the signing and the resting hand."""
    return (_LEFT_HAND, _RIGHT_HAND) if participant.left_handed else (_RIGHT_HAND, _LEFT_HAND)


def _render_easy(phrase: str, participant: Participant, rng: np.random.Generator,
                 short_hand: bool) -> SequenceArrays:
    """The easy data: the draws of earlier versions, in their order, for identical output."""
    tl = _timeline(phrase, participant, rng)
    dominant, other = _hand_parts(participant)
    world = _world(_interpolate(tl), dominant, other, participant, rng)
    image = _image(world, dominant, other, participant, rng)
    missing = _signing_hand_missing(tl.n_frames, len(phrase), participant, short_hand, rng)
    other_seen = _runs_mask(tl.n_frames, participant.other_hand_rate, 4.0, rng)
    return _detected(tl, image, dominant, other, missing | _out_of_frame(image[dominant]),
                     other_seen & (not short_hand))


def _render_hard(phrase: str, participant: Participant, rng: np.random.Generator,
                 short_hand: bool, missing_burst: bool) -> SequenceArrays:
    """The hard data: fast co-articulated signing, missing-hand bursts, a resting hand seen."""
    tl = _hard_timeline(phrase, participant, rng)
    dominant, other = _hand_parts(participant)
    rest_shift = rng.normal(0, [0.03, 0.04, 0.03])  # where the other hand rests this time
    world = _world(_interpolate(tl), dominant, other, participant, rng, rest_shift)
    image = _image(world, dominant, other, participant, rng)
    missing = _hard_signing_hand_missing(len(phrase), participant, short_hand, missing_burst,
                                         _out_of_frame(image[dominant]), rng)
    other_seen = _hard_resting_hand_seen(tl.n_frames, participant, rng)
    return _detected(tl, image, dominant, other, missing, other_seen & (not short_hand))


def _detected(tl: _Timeline, image: dict[str, np.ndarray], dominant: str, other: str,
              missing: np.ndarray, other_seen: np.ndarray) -> SequenceArrays:
    """Blank the undetected hands (and the other hand out of frame) and pack every part."""
    image[dominant][missing] = np.nan
    image[other][~other_seen | _out_of_frame(image[other])] = np.nan
    points = np.concatenate([image[name] for name, _ in schema.PARTS], axis=1)
    return SequenceArrays(points=points, hold_frames=tl.hold_frames, dominant=dominant,
                          letter_frames=tl.letter_frames)


def _world(params: np.ndarray, dominant: str, other: str, participant: Participant,
           rng: np.random.Generator, rest_shift: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every part's points in metres around the neck, plus the head centre ("head")."""
    n = len(params)
    hands = {dominant: _signing_hand(params, participant, rng),
             other: _resting_hand(n, participant, rng, rest_shift)}
    head_c, head_r = _head(n, rng)
    face = head_c[:, None] + _face_template() @ np.swapaxes(head_r, 1, 2)
    pose = _pose(head_c, head_r, hands[_RIGHT_HAND], hands[_LEFT_HAND], participant)
    return {_FACE: face, _POSE: pose, **hands, "head": head_c[:, None]}


def _image(world: dict[str, np.ndarray], dominant: str, other: str, participant: Participant,
           rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Project to normalized image space with MediaPipe's depth origins, then add jitter.

    Depth is relative to the head centre for the face, the hips for the pose and
    the wrist for a hand, as each MediaPipe model reports it.
    """
    cam_r, centre = _camera(participant, rng)
    img = {name: _project(w, cam_r, centre, participant).astype(np.float32)
           for name, w in world.items()}
    img[_FACE][..., 2] -= img.pop("head")[..., 2]
    img[_POSE][..., 2] -= img[_POSE][:, 23:25, 2].mean(axis=1, keepdims=True)
    img[_FACE] = _add_jitter(img[_FACE], 0.0007, rng)
    img[_POSE] = _add_jitter(img[_POSE], 0.003, rng)
    for name in (dominant, other):
        img[name] = _add_jitter(img[name], participant.jitter, rng)
        img[name][..., 2] -= img[name][:, :1, 2].copy()
    return img


# --------------------------------------------------------------------------- writing


def write_landmark_file(path: Path, sequences: Iterable[tuple[int, SequenceArrays]]) -> int:
    """Write (sequence_id, arrays) pairs to one parquet file with the toolkit's writer; returns the rows.

    Sequences are rendered lazily, so memory stays at about one row group whatever the file size.
    """
    def flat():
        for sid, seq in sequences:
            # [T, 543, 3] -> [T, 3, 543]: coordinate-major, then part, then point, as the columns.
            yield sid, seq.points.transpose(0, 2, 1).reshape(seq.n_frames, -1)
    return write_landmarks_parquet(flat(), path, rows_per_group=ROW_GROUP_ROWS)


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class _Row:
    """One sequence of the plan: its CSV row and how to render it."""

    file_id: int
    sequence_id: int
    participant: Participant
    phrase: str
    short_hand: bool
    missing_burst: bool = False  # hard data: the signing hand is lost in bursts


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


_MINIMUMS = {"files": 1, "sequences_per_file": 1, "participants": 1, "seed": 0,
             "supplemental_files": 0}


def check_settings(settings: dict[str, int | str], cli: bool = False) -> None:
    """Reject impossible settings before anything is written.

    With `cli`, errors name the command-line flags (`--sequences-per-file`). A missing
    "difficulty" means the default.
    """
    for name, minimum in _MINIMUMS.items():
        shown = "--" + name.replace("_", "-") if cli else name
        _check_int(shown, settings[name], minimum)
    if settings["sequences_per_file"] > 100_000:
        shown = "--sequences-per-file" if cli else "sequences_per_file"
        raise ValueError(f"{shown} must be <= 100000, got {settings['sequences_per_file']}")
    _check_difficulty(settings.get("difficulty", DEFAULT_DIFFICULTY),
                      "--difficulty" if cli else "difficulty")


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Create `out`; refuse a non-empty one unless `overwrite`, then clear only our files."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace it")
        for name in (TRAIN_CSV, SUPPLEMENTAL_CSV, CHARACTER_MAP_NAME):
            (out / name).unlink(missing_ok=True)
        for sub in (TRAIN_DIR, SUPPLEMENTAL_DIR):
            for f in (out / sub).glob("*.parquet"):
                f.unlink()
    for sub in (TRAIN_DIR, SUPPLEMENTAL_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)


def _plan(files: int, supplemental_files: int, per_file: int, people: list[Participant],
          rng: np.random.Generator, difficulty: str) -> list[list[_Row]]:
    """Rows of every file: unique ids, participants spread evenly over all files.

    Easy plans draw exactly what earlier versions drew; hard ones then pick the
    sequences that lose the signing hand in bursts.
    """
    n_files = files + supplemental_files
    file_ids = np.sort(rng.choice(2**31 - 10**6, size=n_files, replace=False) + 10**6)
    seq_ids = rng.choice(2**31 - 10**6, size=n_files * per_file, replace=False) + 10**6
    order = rng.permutation(len(people))
    n_short = int(round(SHORT_HAND_FRACTION * per_file))
    plan = []
    for f in range(n_files):
        who = order[(f * per_file + np.arange(per_file)) % len(people)]
        rng.shuffle(who)
        short = set(rng.choice(per_file, size=n_short, replace=False).tolist())
        rows = [
            _Row(int(file_ids[f]), int(seq_ids[f * per_file + k]), people[int(who[k])],
                 random_phrase(rng), k in short)
            for k in range(per_file)
        ]
        plan.append(_with_bursts(rows, rng) if difficulty == "hard" else rows)
    return plan


def _with_bursts(rows: list[_Row], rng: np.random.Generator) -> list[_Row]:
    """Mark rows for missing-hand bursts, each by its signer's chance (never the short ones)."""
    draws = rng.random(len(rows))
    return [replace(r, missing_burst=bool(u < r.participant.burst_chance) and not r.short_hand)
            for r, u in zip(rows, draws)]


def _render_file(rows: list[_Row], seed: int, file_no: int,
                 difficulty: str) -> Iterable[tuple[int, SequenceArrays]]:
    """Render a file's sequences lazily, each from its own seed-derived generator."""
    for k, row in enumerate(rows):
        rng = np.random.default_rng([seed, file_no, k, 7])
        yield row.sequence_id, render_sequence(row.phrase, row.participant, rng, row.short_hand,
                                               difficulty, row.missing_burst)


def _write_csv(path: Path, rows: Iterable[tuple[str, _Row]]) -> None:
    """The metadata CSV, byte-for-byte reproducible (fixed line endings, no index)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for rel, r in rows:
            w.writerow([rel, r.file_id, r.sequence_id, r.participant.participant_id, r.phrase])


def generate_dataset(
    out_dir: str | Path,
    files: int = DEFAULT_FILES,
    sequences_per_file: int = DEFAULT_SEQUENCES_PER_FILE,
    participants: int = DEFAULT_PARTICIPANTS,
    seed: int = DEFAULT_SEED,
    supplemental_files: int = DEFAULT_SUPPLEMENTAL_FILES,
    overwrite: bool = False,
    difficulty: str = DEFAULT_DIFFICULTY,
) -> dict:
    """Write a Kaggle-layout synthetic dataset to `out_dir` and return a summary.

    `files` train parquet files and `supplemental_files` supplemental ones, each of
    `sequences_per_file` sequences by `participants` signers, at `difficulty` "hard"
    (real-data-like) or "easy" (the data of earlier versions, unchanged). The same
    arguments give byte-identical CSVs and identical landmark arrays.
    """
    check_settings(dict(files=files, sequences_per_file=sequences_per_file,
                   participants=participants, seed=seed, supplemental_files=supplemental_files,
                   difficulty=difficulty))
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    people = make_participants(participants, np.random.default_rng([seed, 1]), difficulty)
    plan = _plan(files, supplemental_files, sequences_per_file, people,
                 np.random.default_rng([seed, 2]), difficulty)
    written: dict[str, list[tuple[str, _Row]]] = {TRAIN_DIR: [], SUPPLEMENTAL_DIR: []}
    paths: dict[str, list[str]] = {TRAIN_DIR: [], SUPPLEMENTAL_DIR: []}
    n_frames = 0
    for file_no, rows in enumerate(plan):
        sub = TRAIN_DIR if file_no < files else SUPPLEMENTAL_DIR
        rel = f"{sub}/{rows[0].file_id}.parquet"
        n_frames += write_landmark_file(out / rel, _render_file(rows, seed, file_no, difficulty))
        written[sub].extend((rel, r) for r in rows)
        paths[sub].append(str(out / rel))
    _write_csv(out / TRAIN_CSV, written[TRAIN_DIR])
    _write_csv(out / SUPPLEMENTAL_CSV, written[SUPPLEMENTAL_DIR])
    vocab.write_character_map(out)
    all_rows = [r for rows in plan for r in rows]
    return {
        "out_dir": str(out),
        "train_csv": str(out / TRAIN_CSV),
        "supplemental_csv": str(out / SUPPLEMENTAL_CSV),
        "character_map": str(out / CHARACTER_MAP_NAME),
        "train_files": paths[TRAIN_DIR],
        "supplemental_files": paths[SUPPLEMENTAL_DIR],
        "n_train_sequences": len(written[TRAIN_DIR]),
        "n_supplemental_sequences": len(written[SUPPLEMENTAL_DIR]),
        "n_sequences": len(all_rows),
        "n_frames": n_frames,
        "mean_frames": n_frames / len(all_rows),
        "n_participants": len(people),
        "left_handed_participants": [p.participant_id for p in people if p.left_handed],
        "short_hand_sequences": sorted(r.sequence_id for r in all_rows if r.short_hand),
        "missing_burst_sequences": sorted(r.sequence_id for r in all_rows if r.missing_burst),
        "difficulty": difficulty,
        "seed": seed,
        "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
    }
