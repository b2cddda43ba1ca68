"""Video (or image folder, or .pose file) -> landmarks -> exported TFLite model -> text.

`python -m fingerspell.transcribe VIDEO --model SUB_DIR` prints the transcription on stdout
(progress and diagnostics go to stderr, so the output can be piped).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fingerspell.schema import LANDMARK_COLUMNS


def select_columns(landmarks: np.ndarray, columns: list[str]) -> np.ndarray:
    """[T, 1629] Kaggle-order landmarks -> [T, len(columns)] in the model's column order."""
    index = {name: i for i, name in enumerate(LANDMARK_COLUMNS)}
    unknown = [c for c in columns if c not in index]
    if unknown:
        raise ValueError(f"inference_args.json names unknown columns {unknown[:5]}")
    return np.ascontiguousarray(landmarks[:, [index[c] for c in columns]], dtype=np.float32)


def transcribe(path: str | Path, model_dir: str | Path, progress: bool = True) -> str:
    """The model's text for one recording."""
    from fingerspell.extract import landmarks_from_input
    from fingerspell.predict import TFLitePredictor

    predictor = TFLitePredictor(model_dir)
    landmarks = landmarks_from_input(path, progress=progress)
    return predictor(select_columns(landmarks, predictor.selected_columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fingerspell.transcribe", description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path, help="a video file, a folder of images, or a .pose file")
    parser.add_argument("--model", required=True, type=Path, help="submission directory written by `python -m export`")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from fingerspell.extract import ExtractError
    from fingerspell.predict import PredictorError

    try:
        text = transcribe(args.video, args.model, progress=not args.quiet)
    except (ExtractError, PredictorError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
