"""Benchmark: `python -m preprocess` against the seed notebook's preprocessing loop.

Both run on the same generated Kaggle-format files (fingerspell.synth) and the script prints sequences per
second for each and the ratio. Usage:

    python bench/bench_preprocess.py [--sequences N] [--workdir DIR] [--workers W] [--beam-workers B]

Ours is timed end to end as a user runs it: a `python -m preprocess` subprocess,
interpreter start and imports included, with the default worker count (all
cores) unless --workers is given; the median of --repeats runs is reported. The
Beam row runs the same command with `--engine beam` (Beam's FnApiRunner, --beam-workers
worker processes, default 2), when apache-beam is installed. The
seed loop is timed once, after TensorFlow is imported (its notebook imports it
once at the top), so the comparison, if anything, favours the seed.

The seed re-implementation (notebook cell "In [16]") keeps everything that
costs time: the whole table read with pandas (all 1630 columns), the full-table
boolean scan `parquet_numpy[parquet_df.index == seq_id]` per sequence, the NaN
filter `2 * len(phrase) < max(full right-hand frames, full left-hand frames)`,
one FloatList feature per column and `tf.io.TFRecordWriter`. It writes our 156
selected columns (the notebook's own 126-column list indexes the wrong columns,
see shared/seeds/README.md), so both write the same values.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from fingerspell.data.schema import INDEX_COLUMN, SELECTED_COLUMNS  # noqa: E402
from fingerspell.data.schema import SELECTED_LEFT_HAND_COLUMNS as LEFT_HAND_COLUMNS  # noqa: E402
from fingerspell.data.schema import SELECTED_RIGHT_HAND_COLUMNS as RIGHT_HAND_COLUMNS  # noqa: E402

N_FILES = 4


# --- data -------------------------------------------------------------------------------------

def generate(data_dir: Path, sequences: int) -> str:
    """Write the benchmark dataset with fingerspell.synth; return which generator made it."""
    from fingerspell.synth.generator import generate_dataset

    generate_dataset(data_dir, files=N_FILES, sequences_per_file=math.ceil(sequences / N_FILES), seed=0,
                     supplemental_files=0)
    return "fingerspell.synth.generate_dataset"


# --- the seed notebook's loop -------------------------------------------------------------------

def seed_preprocess(data_dir: Path, out_dir: Path) -> int:
    """The notebook's cell In [16], over our 156 columns; returns the records written."""
    import tensorflow as tf

    dataset_df = pd.read_csv(data_dir / "train.csv")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for file_id in dataset_df.file_id.unique():
        file_df = dataset_df.loc[dataset_df["file_id"] == file_id]
        parquet_df = pq.read_table(data_dir / file_df.path.iloc[0]).to_pandas()
        if parquet_df.index.name != INDEX_COLUMN:  # files without pandas index metadata
            parquet_df = parquet_df.set_index(INDEX_COLUMN)
        columns = list(parquet_df.columns)
        feature_idx = [columns.index(c) for c in SELECTED_COLUMNS]
        rhand_idx = [feature_idx[j] for j in RIGHT_HAND_COLUMNS]
        lhand_idx = [feature_idx[j] for j in LEFT_HAND_COLUMNS]
        parquet_numpy = parquet_df.to_numpy()
        with tf.io.TFRecordWriter(str(out_dir / f"{file_id}.tfrecord")) as file_writer:
            for seq_id, phrase in zip(file_df.sequence_id, file_df.phrase):
                frames = parquet_numpy[parquet_df.index == seq_id]
                r_nonan = np.sum(np.sum(np.isnan(frames[:, rhand_idx]), axis=1) == 0)
                l_nonan = np.sum(np.sum(np.isnan(frames[:, lhand_idx]), axis=1) == 0)
                no_nan = max(r_nonan, l_nonan)
                if 2 * len(phrase) < no_nan:
                    features = {SELECTED_COLUMNS[i]: tf.train.Feature(
                        float_list=tf.train.FloatList(value=frames[:, feature_idx[i]]))
                        for i in range(len(SELECTED_COLUMNS))}
                    features["phrase"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[phrase.encode()]))
                    record_bytes = tf.train.Example(features=tf.train.Features(feature=features))
                    file_writer.write(record_bytes.SerializeToString())
                    written += 1
    return written


# --- ours -----------------------------------------------------------------------------------------

def ours_preprocess(data_dir: Path, out_dir: Path, workers: int | None, engine: str = "local") -> dict:
    cmd = [sys.executable, "-m", "preprocess", "--data-dir", str(data_dir), "--out", str(out_dir),
           "--overwrite", "--no-progress", "--engine", engine]
    if workers:
        cmd += ["--workers", str(workers)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run(cmd, check=True, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    return json.loads((out_dir / "manifest.json").read_text())


def timed(repeats: int, data_dir: Path, out_dir: Path, workers: int | None, engine: str) -> tuple[list[float], dict]:
    """Seconds of each of `repeats` runs (at least one) and the last run's manifest."""
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        manifest = ours_preprocess(data_dir, out_dir, workers, engine)
        times.append(time.perf_counter() - t)
    return times, manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=1000, help="sequences to generate (default 1000)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where data and outputs go (default: a temporary folder, removed afterwards); "
                        "existing data there is reused")
    p.add_argument("--workers", type=int, default=None, help="our worker processes (default: all cores)")
    p.add_argument("--beam-workers", type=int, default=2, help="worker processes of the Beam row (default 2)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of ours, reporting the median (default 3): a one-second run on a shared "
                        "machine is noisy, while the seed's long run averages the noise out by itself")
    args = p.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    data_dir = workdir / "data"
    try:
        if not (data_dir / "train.csv").exists():
            t = time.perf_counter()
            source = generate(data_dir, args.sequences)
            print(f"generated data with {source} in {time.perf_counter() - t:.1f}s")
        n = len(pd.read_csv(data_dir / "train.csv"))
        size = sum(f.stat().st_size for f in (data_dir / "train_landmarks").glob("*.parquet"))
        print(f"{n} sequences in {N_FILES} files, {size / 1e6:.0f} MB of parquet; {os.cpu_count()} cores")

        times, manifest = timed(args.repeats, data_dir, workdir / "ours", args.workers, "local")
        ours_s = statistics.median(times)
        beam = None
        if importlib.util.find_spec("apache_beam"):
            beam = timed(args.repeats, data_dir, workdir / "beam", args.beam_workers, "beam")

        import tensorflow  # noqa: F401  (the notebook imports it once; not timed)
        t = time.perf_counter()
        seed_kept = seed_preprocess(data_dir, workdir / "seed")
        seed_s = time.perf_counter() - t

        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"ours (python -m preprocess, workers={manifest['settings']['workers']}): "
              f"{ours_s:.2f}s (median of {runs}), {n / ours_s:.0f} sequences/s, kept {manifest['kept']}")
        if beam:
            beam_s = statistics.median(beam[0])
            print(f"ours, Beam engine (FnApiRunner, {beam[1]['settings']['workers']} worker processes): {beam_s:.2f}s "
                  f"(median of {', '.join(f'{t:.2f}' for t in beam[0])}), {n / beam_s:.0f} sequences/s, "
                  f"kept {beam[1]['kept']}")
        else:
            print("Beam engine: skipped (apache-beam is not installed: pip install \".[beam]\")")
        print(f"seed notebook loop: {seed_s:.2f}s, {n / seed_s:.1f} sequences/s, kept {seed_kept}")
        print(f"speed-up: {seed_s / ours_s:.1f}x")
        if seed_kept != manifest["kept"] or (beam and beam[1]["kept"] != manifest["kept"]):
            print("WARNING: the two kept different numbers of sequences", file=sys.stderr)
            return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
