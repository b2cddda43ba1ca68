"""Training-time changes of hand windows that another signer or camera could show.

Applied in NumPy to raw windows `[N, WINDOW, 21, 3]` before the feature function, the same
change to every frame of a window: a rotation in 3-D about the wrist (small enough that a
hand pointing sideways still points sideways: G/H vs P/Q), another camera aspect ratio (x and
y are normalised by the image's width and height separately), other finger lengths (each
finger's joints moved along the finger from its knuckle), and landmark jitter.
"""
from __future__ import annotations

import numpy as np

from fingerspell.letters.features import FINGERS, KNUCKLES, WRIST


def rotation_matrices(rng: np.random.Generator, n: int, roll: float, yaw: float, pitch: float) -> np.ndarray:
    """[n, 3, 3] rotations: uniform angles up to the given degrees about z (image plane), y and x."""
    def about(axis: int, degrees: float) -> np.ndarray:
        angle = np.radians(rng.uniform(-degrees, degrees, n))
        c, s = np.cos(angle), np.sin(angle)
        m = np.zeros((n, 3, 3))
        i, j = [a for a in range(3) if a != axis]
        m[:, axis, axis] = 1.0
        m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = c, -s, s, c
        return m
    return about(2, roll) @ about(1, yaw) @ about(0, pitch)


def scale_fingers(windows: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Each finger's joints moved along it from its base: factors [N, 5], one per finger (thumb first)."""
    out = windows.copy()
    for f, finger in enumerate(FINGERS):
        base = windows[:, :, finger[0]:finger[0] + 1, :]
        joints = list(finger[1:])
        out[:, :, joints, :] = base + factors[:, f, None, None, None] * (windows[:, :, joints, :] - base)
    return out


def augment(windows: np.ndarray, rng: np.random.Generator, roll: float, yaw: float, pitch: float,
            aspect: float, finger_scale: float, jitter: float) -> np.ndarray:
    """Augmented copies of windows [N, W, 21, 3] (float32)."""
    windows = np.asarray(windows, np.float64)
    n = len(windows)
    wrist = windows[:, -1:, WRIST:WRIST + 1, :]
    centred = windows - wrist
    centred = scale_fingers(centred, rng.uniform(1 - finger_scale, 1 + finger_scale, (n, len(FINGERS))))
    centred = np.einsum("nij,nwpj->nwpi", rotation_matrices(rng, n, roll, yaw, pitch), centred)
    centred[..., 1] *= np.exp(rng.uniform(-np.log(aspect), np.log(aspect), n))[:, None, None]
    last = centred[:, -1]
    palm = np.linalg.norm(last[:, list(KNUCKLES)], axis=-1).mean(axis=1)
    centred += rng.normal(0.0, 1.0, centred.shape) * (jitter * palm)[:, None, None, None]
    return (centred + wrist).astype(np.float32)
