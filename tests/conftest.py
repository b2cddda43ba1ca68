"""Shared test helpers: small Kaggle-format datasets whose every row's fate is known.

`SeqSpec` describes one sequence (frames, how many frames show each hand fully,
whether it is in the CSV and/or the parquet file); `write_kaggle_dataset`
writes train.csv + train_landmarks/<file_id>.parquet (and optionally the
supplemental split) from such specs, so tests can assert exact kept/dropped
counts. Files are written with `fingerspell.data.parquet.write_landmarks_parquet`, the
toolkit's writer of Kaggle's layout; `write_raw_parquet` writes deliberately
broken variants (other dtypes, missing or reordered columns, shuffled rows).
"""
from __future__ import annotations

import os

# Tests are an entry point: like the `fingerspell` command, pin Keras to TensorFlow before it is imported.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fingerspell.data.parquet import write_landmarks_parquet
from fingerspell.data.schema import (
    FRAME_COLUMN,
    INDEX_COLUMN,
    LANDMARK_COLUMNS,
    SELECTED_LANDMARK_POSITIONS,
    SELECTED_LEFT_HAND_COLUMNS,
    SELECTED_RIGHT_HAND_COLUMNS,
    column_index,
)

# Positions among the 1629 `LANDMARK_COLUMNS` of each hand's 63 selected columns.
LEFT_COLS = SELECTED_LANDMARK_POSITIONS[SELECTED_LEFT_HAND_COLUMNS]
RIGHT_COLS = SELECTED_LANDMARK_POSITIONS[SELECTED_RIGHT_HAND_COLUMNS]


@dataclass
class SeqSpec:
    """One sequence of a test dataset and what preprocessing must do with it."""

    sequence_id: int
    phrase: str
    n_frames: int = 20
    left_full: int = 0  # frames where all 63 left-hand values are present
    right_full: int = 0
    partial: int = 0  # extra frames with a hand that has exactly one NaN value (not full)
    participant_id: int = 1
    in_csv: bool = True
    in_parquet: bool = True


def make_frames(spec: SeqSpec, rng: np.random.Generator) -> np.ndarray:
    """[n_frames, 1629] float32: random values, hands NaN except where the spec says."""
    assert spec.left_full + spec.partial <= spec.n_frames and spec.right_full + spec.partial <= spec.n_frames
    frames = rng.random((spec.n_frames, len(LANDMARK_COLUMNS)), dtype=np.float32)
    frames[rng.random(frames.shape) < 0.05] = np.nan  # scattered NaN elsewhere (face, pose)
    for cols, full in ((LEFT_COLS, spec.left_full), (RIGHT_COLS, spec.right_full)):
        hand = rng.random((spec.n_frames, len(cols)), dtype=np.float32)
        hidden = rng.permutation(spec.n_frames)[full:]
        hand[hidden] = np.nan
        for t in hidden[:spec.partial]:  # nearly visible: one value missing
            hand[t] = rng.random(len(cols), dtype=np.float32)
            hand[t, rng.integers(len(cols))] = np.nan
        frames[:, cols] = hand
    return frames


def write_raw_parquet(path: Path, sequences: dict[int, np.ndarray], columns=LANDMARK_COLUMNS,
                      dtype=np.float32, shuffle_rows: bool = False, seed: int = 0) -> None:
    """Landmark rows with pyarrow directly: any column list/order/dtype, optionally shuffled rows."""
    ids = np.concatenate([np.full(len(f), sid, np.int64) for sid, f in sequences.items()])
    frame_no = np.concatenate([np.arange(len(f), dtype=np.int16) for f in sequences.values()])
    values = np.concatenate(list(sequences.values()), axis=0)
    if shuffle_rows:
        order = np.random.default_rng(seed).permutation(len(ids))
        ids, frame_no, values = ids[order], frame_no[order], values[order]
    arrays = {INDEX_COLUMN: ids, FRAME_COLUMN: frame_no}
    for name in columns:
        arrays[name] = values[:, column_index(name)].astype(dtype)
    pq.write_table(pa.table(arrays), path)


def write_csv(path: Path, rows: list[dict]) -> None:
    pd.DataFrame(rows, columns=["path", "file_id", "sequence_id", "participant_id", "phrase"]).to_csv(
        path, index=False)


def write_kaggle_dataset(root: Path, files: dict[int, list[SeqSpec]], split: str = "train",
                         seed: int = 0, raw: dict[int, dict] | None = None) -> dict[int, dict[int, np.ndarray]]:
    """Write one split of a dataset; return {file_id: {sequence_id: frames [T, 1629]}} as written.

    `raw` maps a file_id to keyword arguments of `write_raw_parquet` for files that
    must deviate from Kaggle's layout; other files use the toolkit's writer.
    """
    csv_name, folder = {"train": ("train.csv", "train_landmarks"),
                        "supplemental": ("supplemental_metadata.csv", "supplemental_landmarks")}[split]
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True, exist_ok=True)
    rows, written = [], {}
    for file_id, specs in files.items():
        seqs = {s.sequence_id: make_frames(s, rng) for s in specs if s.in_parquet}
        written[file_id] = seqs
        path = root / folder / f"{file_id}.parquet"
        if raw and file_id in raw:
            write_raw_parquet(path, seqs, **raw[file_id])
        else:
            write_landmarks_parquet(seqs, path)
        rows += [{"path": f"{folder}/{file_id}.parquet", "file_id": file_id, "sequence_id": s.sequence_id,
                  "participant_id": s.participant_id, "phrase": s.phrase} for s in specs if s.in_csv]
    write_csv(root / csv_name, rows)
    return written


def tree_digest(root: Path) -> dict[str, str]:
    """Path -> sha1 of every file under `root`, to prove inputs were left untouched."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for running `python -m ...` from the repository root in a subprocess."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@pytest.fixture(autouse=True)
def fixed_seeds():
    """Every test starts from the same random state, whatever ran before it.

    Python's, NumPy's global, TensorFlow's and Keras's seeds (initial weights of models
    built without a seed, unseeded `tf.random` ops) are reset to 0 before each test.
    """
    import random
    import sys

    random.seed(0)
    np.random.seed(0)
    if "tensorflow" in sys.modules:  # only when a test module uses it: no TensorFlow import otherwise
        import keras

        keras.utils.set_random_seed(0)


# --- session-wide synthetic data, preprocessed records and a trained, exported model -------------

@pytest.fixture(scope="session")
def synthetic_small(tmp_path_factory) -> Path:
    """A small Kaggle-layout synthetic dataset: 2 files x 40 sequences by 6 signers."""
    from fingerspell.synth.generator import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, files=2, sequences_per_file=40, participants=6, seed=7, supplemental_files=0)
    return root


@pytest.fixture(scope="session")
def preprocessed_small(synthetic_small, tmp_path_factory) -> Path:
    from fingerspell.data.convert import PreprocessConfig, preprocess

    out = tmp_path_factory.mktemp("preprocessed")
    manifest = preprocess(PreprocessConfig(data_dir=synthetic_small, out_dir=out, progress=False))
    assert manifest["kept"] >= 70 and not manifest["errors"]
    return out


def train_small_run(data_dir: str, run_dir: str) -> dict:
    """The `trained_run` training; run by `run_deterministic` in a child process."""
    from fingerspell.config import Config
    from fingerspell.training.trainer import train

    cfg = Config(num_hid=64, ff_dim=128, batch_size=16, epochs=12, eval_every=4, show_examples_every=0,
                 learning_rate=2e-3, seed=0)
    return train(Path(data_dir), Path(run_dir), cfg)


@pytest.fixture(scope="session")
def trained_run(preprocessed_small, tmp_path_factory) -> Path:
    """A small model trained briefly, the same weights on every run (fixed seeds, op determinism).

    Its quality is whatever 12 short epochs give: tests may compare it with its own
    exports, never assert how well it reads.
    """
    from tests.deterministic import run_deterministic

    run = tmp_path_factory.mktemp("run") / "run"
    run_deterministic("tests.conftest:train_small_run", str(preprocessed_small), str(run))
    return run


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory) -> Path:
    from fingerspell.export.tflite import export_run

    out = tmp_path_factory.mktemp("submission")
    export_run(trained_run, out)
    return out
