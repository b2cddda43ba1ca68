"""Video (or image folder, or .pose file) -> landmarks -> exported TFLite model -> text.

`fingerspell transcribe VIDEO --model SUB_DIR` prints the transcription on stdout
(progress and diagnostics go to stderr, so the output can be piped).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fingerspell.data.schema import landmark_positions


def select_columns(landmarks: np.ndarray, columns: list[str]) -> np.ndarray:
    """[T, 1629] Kaggle-order landmarks -> [T, len(columns)] in the model's column order."""
    try:
        positions = landmark_positions(columns)
    except ValueError as e:
        raise ValueError(f"inference_args.json names {e}") from None
    return np.ascontiguousarray(landmarks[:, positions], dtype=np.float32)


def transcribe(path: str | Path, model_dir: str | Path, progress: bool = True) -> str:
    """The model's text for one recording."""
    from fingerspell.video.extract import landmarks_from_input
    from fingerspell.export.predictor import TFLitePredictor

    predictor = TFLitePredictor(model_dir)
    landmarks = landmarks_from_input(path, progress=progress)
    return predictor(select_columns(landmarks, predictor.selected_columns))
