"""Run an exported submission on Kaggle-layout parquet files.

`fingerspell predict SUB_DIR --parquet FILE [--sequence-id ID ...]` prints one
line per sequence: its id and the predicted text. `TFLitePredictor` is the library API,
also used by the evaluator, `transcribe` and `render`. Models run on `ai_edge_litert`
(tf.lite.Interpreter is deprecated), exactly as Kaggle's grader feeds them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fingerspell.data import vocab

SIGNATURE = "serving_default"


class PredictorError(RuntimeError):
    """A submission directory that cannot be run; the message names the file."""


class TFLitePredictor:
    """An exported `model.tflite` + `inference_args.json`: frames [T, C] -> text."""

    def __init__(self, sub_dir: str | Path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        sub_dir = Path(sub_dir)
        model_path, args_path = sub_dir / "model.tflite", sub_dir / "inference_args.json"
        for path in (model_path, args_path):
            if not path.exists():
                raise PredictorError(f"{path}: not found (is {sub_dir} a directory written by `fingerspell export`?)")
        try:
            self.selected_columns: list[str] = json.loads(args_path.read_text())["selected_columns"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise PredictorError(f"{args_path}: expected {{\"selected_columns\": [...]}} ({err})") from None
        self.model_path = model_path
        self.interpreter = Interpreter(model_path=str(model_path), num_threads=num_threads)
        if SIGNATURE not in self.interpreter.get_signature_list():
            raise PredictorError(f"{model_path}: no {SIGNATURE!r} signature")
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)

    def one_hot(self, frames: np.ndarray) -> np.ndarray:
        """The raw `outputs` [L, 59] for frames [T, len(selected_columns)]."""
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim != 2 or frames.shape[1] != len(self.selected_columns):
            raise ValueError(f"expected frames [T, {len(self.selected_columns)}], got {frames.shape}")
        return self.runner(inputs=frames)["outputs"]

    def __call__(self, frames: np.ndarray) -> str:
        """Text for one sequence, decoded as the grader does (argmax over axis 1)."""
        lookup = vocab.index_to_char()
        return "".join(lookup.get(int(i), "") for i in np.argmax(self.one_hot(frames), axis=1))
