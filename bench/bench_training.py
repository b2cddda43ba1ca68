"""Training throughput (sequences/s) and peak memory of the default recipe, streaming its records from disk.

Trains `Config()` as it is (model sizes, batch_size=64, augmentations on) through the real
`fingerspell.training.trainer.train`, one child process per configuration so each has its own
peak RSS and may set up logical devices before TensorFlow initialises them:

    xla       1 replica, jit_compile=on,  distribute=none
    no-xla    1 replica, jit_compile=off, distribute=none
    mirrored  2 logical CPU replicas, distribute=mirrored (jit_compile=auto resolves to off)

Usage:

    python bench/bench_training.py [--quick] [--workdir DIR] [--configs xla,no-xla,mirrored]
                                   [--warmup-steps 8] [--steps 40] [--cache-memory-gb 2] [--json FILE]

Data. `fingerspell synth` + `fingerspell preprocess` make a base set (2,000 sequences), whose
records are then replicated with new sequence, participant and file ids into more shards
until their decoded size (frames x 156 x 4 B + 512 B per record, `pipeline.decoded_bytes`)
passes --decoded-gb (default 2.6). Generating that size directly would take ~8 min and ~18 GB
of parquet on 2 cores. The replicated folder has no manifest, so each run scans the records
once at its start (a supported path; it is not timed). Identical landmarks do not change the
cost of a step: augmentation draws anew for every copy and frame counts keep their distribution.
The data is kept under --workdir and reused by a later run.

Caching. Runs use cache=auto with cache_memory_gb=2: the records do not fit, so training streams
them from disk (in practice from the page cache, which holds the shards after the first run).
The bench fails if RUN_DIR/run.json says otherwise. A larger --cache-memory-gb measures the
in-memory path; the cache fills during the first epoch, so that epoch is not timed.

Timing. A Keras callback skips --warmup-steps (XLA compilation, pipeline fill), times the next
--steps with a wall clock and then stops training. Keras calls it once per execution of
steps_per_execution steps (4 with one replica, 1 with two), so step counts are rounded up to
whole executions. Keras' validation-loss pass is switched off (eval_every is set high): it
would only add minutes after the timed steps. peak RSS is ru_maxrss at the end of the timed
steps ("train") and at the end of the process ("process"), which also covers the start-up
scan, the copy of the held-out records and the final greedy scoring of 64 sequences.
Other work on the same cores (a test run) slows every row: the load average is printed.
--quick only checks that the bench runs: its few steps are too short for figures to compare.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fingerspell import machine  # noqa: E402  (light: TensorFlow is imported by the child processes only)

CONFIGS: dict[str, list[str]] = {
    "xla": ["jit_compile=on", "distribute=none"],
    "no-xla": ["jit_compile=off", "distribute=none"],
    "mirrored": ["distribute=mirrored"],
}
LOGICAL_CPUS = {"mirrored": 2}
BASE_FILES, BASE_SEQUENCES_PER_FILE = 4, 500
QUICK = {"decoded_gb": 0.15, "cache_memory_gb": 0.05, "warmup_steps": 4, "steps": 8, "base_files": 2,
         "base_sequences_per_file": 200}
DATA_INFO = "bench-data.json"


# --- data -------------------------------------------------------------------------------------

def fingerspell_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fingerspell", *args], check=True, cwd=REPO,
                   env=dict(os.environ, PYTHONPATH=str(REPO)))


def make_base(base_dir: Path, files: int, per_file: int) -> None:
    """Synthetic Kaggle-format data, preprocessed by the real command; the parquet is deleted afterwards."""
    if (base_dir / "manifest.json").exists():
        return
    raw = base_dir.with_name(base_dir.name + "-raw")
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(base_dir, ignore_errors=True)
    fingerspell_cli("synth", "--out", str(raw), "--files", str(files), "--sequences-per-file", str(per_file),
                    "--supplemental-files", "0")
    fingerspell_cli("preprocess", "--data-dir", str(raw), "--out", str(base_dir), "--no-progress")
    shutil.rmtree(raw)


def replicate(base_dir: Path, out_dir: Path, decoded_gb: float) -> dict:
    """Copies of the base records with new ids, one shard per (copy, base shard), until the decoded size
    passes `decoded_gb`; runs in a child process (it imports TensorFlow to read the records)."""
    from collections import defaultdict

    from fingerspell.data import records
    from fingerspell.data.pipeline import decoded_bytes

    by_file: dict[int, list[dict]] = defaultdict(list)
    for record in records.load_dataset(base_dir).as_numpy_iterator():
        by_file[int(record["file_id"])].append(record)
    base_frames = sum(len(r["landmarks"]) for rs in by_file.values() for r in rs)
    base_sequences = sum(len(rs) for rs in by_file.values())
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "train").mkdir(parents=True)
    copies = 0
    while decoded_bytes(copies * base_sequences, copies * base_frames) <= decoded_gb * 1e9:
        for file_id, rs in by_file.items():
            new_file = file_id + copies * 10**10
            with records.ShardWriter(tmp / "train" / f"{new_file}{records.SHARD_SUFFIX}") as writer:
                for r in rs:  # participants remapped per copy: the held-out split stays ~val_fraction
                    writer.write(records.serialize_sequence(
                        r["landmarks"], r["phrase"].decode(), int(r["sequence_id"]) + copies * 10**10,
                        int(r["participant_id"]) + copies * 1000, new_file))
        copies += 1
    info = {"method": f"fingerspell synth + preprocess ({base_sequences} sequences), replicated x{copies}",
            "sequences": copies * base_sequences, "frames": copies * base_frames,
            "decoded_gb": round(decoded_bytes(copies * base_sequences, copies * base_frames) / 1e9, 3),
            "shards": copies * len(by_file),
            "disk_gb": round(sum(p.stat().st_size for p in (tmp / "train").iterdir()) / 1e9, 3)}
    (tmp / DATA_INFO).write_text(json.dumps(info, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)  # complete only once renamed: a killed run leaves just the .partial folder
    return info


def prepare_data(workdir: Path, decoded_gb: float, base_files: int, per_file: int) -> tuple[Path, dict]:
    data_dir = workdir / f"data-{decoded_gb:g}gb-base{base_files}x{per_file}"
    if not (data_dir / DATA_INFO).exists():
        start = time.perf_counter()
        base_dir = workdir / f"base-{base_files}x{per_file}"
        make_base(base_dir, base_files, per_file)
        subprocess.run([sys.executable, __file__, "_replicate", str(base_dir), str(data_dir), str(decoded_gb)],
                       check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        print(f"generated the data in {time.perf_counter() - start:.0f}s", flush=True)
    return data_dir, json.loads((data_dir / DATA_INFO).read_text())


# --- one configuration (child process) -----------------------------------------------------------

def make_timer(warmup: int, steps: int, batch_size: int, run_dir: Path):
    """The Keras callback that times `steps` training steps after `warmup` and then stops training.

    With the records cached in memory, the first epoch (which fills the cache) is skipped as well.
    """
    import keras

    class StepTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            info = json.loads((run_dir / "run.json").read_text())
            self.skip_epochs = 1 if info["cache"] == "memory" else 0
            per_execution = info["steps_per_execution"]
            need = -(-warmup // per_execution) * per_execution + -(-steps // per_execution) * per_execution
            if info["steps_per_epoch"] < need:
                raise RuntimeError(f"{info['steps_per_epoch']} steps per epoch, fewer than the {need} the bench "
                                   f"needs: make more data (--decoded-gb) or fewer --warmup-steps/--steps")
            self.start = self.result = None

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch < self.skip_epochs or self.result is not None:
                return
            done = batch + 1
            if self.start is None and done >= warmup:
                _wait_for(logs)
                self.start = (done, time.perf_counter())
                self.marks = [self.start[1]]
            elif self.start is not None:
                self.marks.append(time.perf_counter())  # per execution: shows a recompilation or a stall
                if done - self.start[0] < steps:
                    return
                _wait_for(logs)
                seconds, measured = time.perf_counter() - self.start[1], done - self.start[0]
                self.result = {"steps": measured, "seconds": round(seconds, 3),
                               "sequences_per_second": round(measured * batch_size / seconds, 1),
                               "rss_train_mb": round(max_rss_mb()),
                               "execution_seconds": [round(b - a, 3) for a, b in zip(self.marks, self.marks[1:])]}
                self.model.stop_training = True

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    return StepTimer()


def _wait_for(logs: dict | None) -> None:
    """Block until the step's results exist (reading a value waits for the device)."""
    for value in (logs or {}).values():
        float(value)
        return


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def run_config(name: str, data_dir: Path, run_dir: Path, out: Path, warmup: int, steps: int,
               cache_memory_gb: float) -> None:
    started = time.perf_counter()
    import tensorflow as tf

    if LOGICAL_CPUS.get(name, 1) > 1:  # before anything initialises TensorFlow's devices
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * LOGICAL_CPUS[name])
    from fingerspell.config import Config
    from fingerspell.training.trainer import train

    cfg = Config().override([*CONFIGS[name], "cache=auto", f"cache_memory_gb={cache_memory_gb}", "epochs=2",
                             "eval_max_sequences=64", "show_examples_every=0", "eval_every=1000000"])
    timer = make_timer(warmup, steps, cfg.batch_size, run_dir)
    train(data_dir, run_dir, cfg, callbacks=[timer])
    if timer.result is None:
        raise RuntimeError("training ended before the timed steps were done")
    info = json.loads((run_dir / "run.json").read_text())
    result = {"config": name, "replicas": info["replicas"], "xla": info["jit_compile"],
              "steps_per_execution": info["steps_per_execution"], "cache": info["cache"],
              "devices": info["devices"], "tensorflow": info["tensorflow_version"],
              "train_records_gb": info["train_records_gb"], "steps_per_epoch": info["steps_per_epoch"],
              **timer.result, "rss_process_mb": round(max_rss_mb()),
              "process_seconds": round(time.perf_counter() - started, 1)}
    out.write_text(json.dumps(result, indent=1))


# --- the table (parent process: no TensorFlow, so its memory is not in the children's RSS) ----------

def bench_config(name: str, data_dir: Path, workdir: Path, args: argparse.Namespace) -> dict:
    run_dir, out, log = (workdir / "runs" / name, workdir / "runs" / f"{name}.json",
                         workdir / "runs" / f"{name}.log")
    shutil.rmtree(run_dir, ignore_errors=True)
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "_run", name, str(data_dir), str(run_dir), str(out), str(args.warmup_steps),
           str(args.steps), str(args.cache_memory_gb)]
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if done.returncode != 0 or not out.exists():
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"{name}: the training child failed (exit {done.returncode}); end of {log}:\n{tail}")
    return json.loads(out.read_text())


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def print_table(rows: list[dict]) -> None:
    header = ["config", "replicas", "xla", "steps/exec", "cache", "seq/s", "RSS train MB", "RSS peak MB"]
    table = [[r["config"], r["replicas"], "on" if r["xla"] else "off", r["steps_per_execution"], r["cache"],
              f"{r['sequences_per_second']:.1f}", r["rss_train_mb"], r["rss_process_mb"]] for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *table)]
    for line in [header, ["-" * w for w in widths], *table]:
        print("  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(line, widths))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/fingerspell-bench-training"),
                   help="data and runs; existing complete data there is reused (default %(default)s)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    p.add_argument("--decoded-gb", type=float, default=2.6, help="decoded size of the records to make (default 2.6)")
    p.add_argument("--cache-memory-gb", type=float, default=2.0,
                   help="the runs' cache budget (default 2: the records stream; more measures the in-memory path)")
    p.add_argument("--warmup-steps", type=int, default=8, help="untimed steps first (default 8)")
    p.add_argument("--steps", type=int, default=40, help="timed steps (default 40)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: small data, few steps ({QUICK}); the records still stream")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    base_files, per_file = BASE_FILES, BASE_SEQUENCES_PER_FILE
    if args.quick:
        for key, value in QUICK.items():  # quick's sizes, where the command line left the default
            if key in vars(args) and getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
        base_files, per_file = QUICK["base_files"], QUICK["base_sequences_per_file"]
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    if unknown := [n for n in names if n not in CONFIGS]:
        p.error(f"unknown configs {unknown}; known: {list(CONFIGS)}")

    started = time.perf_counter()
    (args.workdir / "runs").mkdir(parents=True, exist_ok=True)
    data_dir, data = prepare_data(args.workdir, args.decoded_gb, base_files, per_file)
    expected = "stream" if data["decoded_gb"] > args.cache_memory_gb else "memory"
    print(f"machine: {machine.cpu_cores()} cores ({cpu_model()}), Python {platform.python_version()}; load average "
          f"{os.getloadavg()[0]:.1f} before the runs (other work on these cores slows them)")
    print(f"data: {data_dir}: {data['sequences']} sequences, {data['frames']} frames, {data['decoded_gb']:.2f} GB "
          f"decoded ({data['disk_gb']:.2f} GB on disk, {data['shards']} shards; {data['method']})")
    print(f"recipe: Config() defaults, cache=auto, cache_memory_gb={args.cache_memory_gb:g} (expect {expected}); "
          f"{args.warmup_steps} warm-up + {args.steps} timed steps", flush=True)

    rows = []
    for name in names:
        row = bench_config(name, data_dir, args.workdir, args)
        row["load_average_after"] = round(os.getloadavg()[0], 2)
        print(f"  {name}: {row['sequences_per_second']:.1f} seq/s over {row['steps']} steps, cache {row['cache']}, "
              f"child {row['process_seconds']:.0f}s, load average {row['load_average_after']:.1f}", flush=True)
        if row["cache"] != expected:
            raise SystemExit(f"{name}: run.json says cache={row['cache']!r}, expected {expected!r}: "
                             f"this is not the path the bench means to measure")
        rows.append(row)
    print(f"TensorFlow {rows[0]['tensorflow']}; devices: " + "; ".join(f"{r['config']}: {', '.join(r['devices'])}"
                                                                       for r in rows))
    print_table(rows)
    print(f"total {time.perf_counter() - started:.0f}s")
    if args.json:
        report = {"cores": machine.cpu_cores(), "cpu": cpu_model(), "data": data,
                  "settings": {k: v for k, v in vars(args).items() if k not in ("json", "workdir")}, "results": rows}
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


def child(argv: list[str]) -> int:
    """Hidden sub-commands that the parent runs in fresh processes."""
    if argv[0] == "_replicate":
        replicate(Path(argv[1]), Path(argv[2]), float(argv[3]))
    else:
        name, data_dir, run_dir, out, warmup, steps, cache_gb = argv[1:]
        run_config(name, Path(data_dir), Path(run_dir), Path(out), int(warmup), int(steps), float(cache_gb))
    return 0


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]) if len(sys.argv) > 1 and sys.argv[1] in ("_replicate", "_run") else main())
