"""Training throughput of `distribute=multi_worker` with two workers on localhost against one process.

Both configurations run the real command (`python -m fingerspell train ...`) on the same generated data
with the same global batch and recipe:

    one process   distribute=none, one process, no TF_CONFIG
    two workers   distribute=multi_worker, two processes on this machine (TF_CONFIG with two free ports,
                  a separate TMPDIR each), writing one RUN_DIR (the chief's metrics)

Usage:

    python bench/bench_multiworker.py [--sequences 1280] [--shards 4] [--batch-size 64] [--epochs 3]
                                      [--workdir DIR] [--timeout 1800]

Data: `fingerspell synth` (--shards parquet files, no supplemental) + `fingerspell preprocess`; the
preprocessing may drop a few sequences and the held-out signers' sequences (val_fraction) are not trained on.
Overrides of both runs: epochs, batch_size, eval_every=100 (validation only after the last epoch),
eval_max_sequences=64, as in the README's measurement.

Figures: training sequences/s of each epoch after the first (the first one includes tracing and the
pipeline fill), read from RUN_DIR/metrics.csv (`train_sequences_per_second`: global batch x steps / the
epoch's training time), their median, and the wall time from starting the process(es) until all exited
(interpreter start, imports, the record scan and the final scoring included).

On one machine both workers share its cores: the figures show the overhead of two processes and of
the cross-worker all-reduce, not a speed-up. Scaling needs a machine (or accelerator) per worker.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BIND_ERRORS = ("address already in use", "failed to bind", "could not start grpc server")


# --- data -------------------------------------------------------------------------------------

def fingerspell_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fingerspell", *args], check=True, cwd=REPO,
                   env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2"))


def make_data(workdir: Path, sequences: int, shards: int) -> Path:
    """Synthetic Kaggle-format data, preprocessed by the real command (reused when already there)."""
    data = workdir / f"data-{sequences}x{shards}"
    if not (data / "manifest.json").exists():
        raw = workdir / "raw"
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
        fingerspell_cli("synth", "--out", str(raw), "--files", str(shards), "--sequences-per-file",
                        str(math.ceil(sequences / shards)), "--supplemental-files", "0")
        fingerspell_cli("preprocess", "--data-dir", str(raw), "--out", str(data), "--no-progress")
        shutil.rmtree(raw)
    return data


# --- runs -------------------------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    """Ports free now (a worker may still lose one before it binds it: `run_config` tries once more)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def launch(workers: int, data: Path, run: Path, overrides: list[str], workdir: Path, name: str,
           timeout: float) -> float:
    """Start `workers` training processes (0: one process without TF_CONFIG), wait for all; the wall seconds.

    Every process is killed if one fails or the timeout passes.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    env.pop("TF_CONFIG", None)
    ports = free_ports(workers)
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    started = time.perf_counter()
    try:
        for index in range(max(workers, 1)):
            own_tmp = workdir / f"{name}-tmp{index}"
            own_tmp.mkdir(exist_ok=True)
            extra = {"TF_CONFIG": tf_config(ports, index)} if workers else {}
            logs.append(workdir / f"{name}-{index}.log")
            with open(logs[-1], "w") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "fingerspell", "train", "--data-dir", str(data), "--out", str(run),
                     *overrides], cwd=REPO, env={**env, **extra, "TMPDIR": str(own_tmp)},
                    stdout=out, stderr=subprocess.STDOUT))
        deadline = started + timeout
        for proc, log in zip(procs, logs):
            proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
            if proc.returncode:
                raise RuntimeError(f"{log} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        return time.perf_counter() - started
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{name}: not done after {timeout:.0f}s; logs: {[str(log) for log in logs]}") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_config(workers: int, data: Path, overrides: list[str], workdir: Path, name: str, timeout: float) -> dict:
    """One configuration, started again once if a worker could not bind its port; its figures."""
    run = workdir / name
    for attempt in range(2):
        shutil.rmtree(run, ignore_errors=True)
        try:
            wall = launch(workers, data, run, overrides, workdir, name, timeout)
            break
        except RuntimeError as e:
            if attempt or not workers or not any(b in str(e).lower() for b in BIND_ERRORS):
                raise
    info = json.loads((run / "run.json").read_text())
    # Columns: fingerspell.training.trainer.METRIC_FIELDS (read with csv: this process imports no TensorFlow).
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    speeds = [float(r["train_sequences_per_second"]) for r in rows[1:] if r["train_sequences_per_second"]]
    return {"config": name, "processes": max(workers, 1), "replicas": info["replicas"],
            "steps_per_epoch": info["steps_per_epoch"], "epochs": len(rows), "speeds": speeds,
            "median": statistics.median(speeds) if speeds else float("nan"),
            "train_seconds": sum(float(r["train_seconds"]) for r in rows), "wall": wall}


def print_table(rows: list[dict]) -> None:
    header = ["config", "processes", "replicas", "steps/epoch", "seq/s epochs 2+", "median seq/s", "train s",
              "wall s"]
    table = [[r["config"], r["processes"], r["replicas"], r["steps_per_epoch"],
              ", ".join(f"{s:.1f}" for s in r["speeds"]), f"{r['median']:.1f}", f"{r['train_seconds']:.1f}",
              f"{r['wall']:.1f}"] for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *table)]
    for line in [header, ["-" * w for w in widths], *table]:
        print("  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(line, widths))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=1280, help="sequences to generate (default 1280)")
    p.add_argument("--shards", type=int, default=4, help="parquet files, and so record shards (default 4)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch of both configurations (default 64)")
    p.add_argument("--epochs", type=int, default=3, help="epochs; the first is not in seq/s (default 3)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="data, runs and logs (default: a temporary folder, removed afterwards); "
                        "existing data there is reused")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per configuration (default 1800)")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch is not measured")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_multiworker_"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        data = make_data(workdir, args.sequences, args.shards)
        kept = json.loads((data / "manifest.json").read_text())["kept"]
        print(f"data: {kept} sequences in {args.shards} shards ({data}); {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f}; both workers share these cores: overhead, not speed-up", flush=True)
        common = [f"epochs={args.epochs}", f"batch_size={args.batch_size}", "eval_every=100",
                  "eval_max_sequences=64"]
        rows = []
        for workers, name in ((0, "one process"), (2, "two workers")):
            recipe = [*common, "distribute=multi_worker" if workers else "distribute=none"]
            rows.append(run_config(workers, data, recipe, workdir, name.replace(" ", "-"), args.timeout))
            rows[-1]["config"] = name
            print(f"  {name}: done in {rows[-1]['wall']:.0f}s", flush=True)
        print(f"recipe: Config() defaults with {' '.join(common)}")
        print_table(rows)
        print(f"two workers / one process (median seq/s): {rows[1]['median'] / rows[0]['median']:.2f}x; "
              f"total {time.perf_counter() - started:.0f}s")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
