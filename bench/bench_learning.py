"""Proof that the model learns, and a fair comparison with the seed notebook's recipe.

On one synthetic dataset (>= 3,000 sequences, >= 30 participants, validation on held-out
participants) this trains, each within the same training-time budget:
  - ours: the default config (our preprocessing, key_dim = num_hid // heads, augmentation, XLA);
  - seed: the seed notebook's recipe (its preprocessing, key_dim = num_hid, no augmentation,
    constant Adam 1e-4, no XLA as in its Keras 2 notebook), same model sizes;
and prints the best validation score, epochs, training throughput and the ratio.

    python bench/bench_learning.py [--sequences 3200] [--participants 32] [--minutes 20]
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.seed_recipe import seed_config  # noqa: E402
from fingerspell.config import Config  # noqa: E402


def ensure_dataset(workdir: Path, sequences: int, participants: int, seed: int) -> Path:
    from fingerspell.data.convert import PreprocessConfig, preprocess
    from fingerspell.synth.generator import generate_dataset

    raw, pre = workdir / "dataset", workdir / "preprocessed"
    if not (raw / "train.csv").exists():
        files = max(1, math.ceil(sequences / 400))
        generate_dataset(raw, files=files, sequences_per_file=math.ceil(sequences / files),
                         participants=participants, seed=seed, supplemental_files=0)
    if not (pre / "manifest.json").exists():
        preprocess(PreprocessConfig(data_dir=raw, out_dir=pre, split="train"))
    return pre


def run(name: str, cfg: Config, data: Path, workdir: Path, minutes: float) -> dict:
    """Train one recipe until its time budget ends (the cosine decay is fitted to the budget)."""
    from fingerspell.training.trainer import train

    cfg = Config.from_dict({**cfg.to_dict(), "epochs": 1000, "time_budget_minutes": minutes, "eval_every": 2,
                            "show_examples_every": 10})
    run_dir = workdir / f"run-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    summary = train(data, run_dir, cfg)
    summary["wall_seconds"] = round(time.perf_counter() - start, 1)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "work" / "bench_learning")
    parser.add_argument("--sequences", type=int, default=3200)
    parser.add_argument("--participants", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=20.0, help="training-time budget of each run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("ours", "seed"), help="run one of the two")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = ensure_dataset(args.workdir, args.sequences, args.participants, args.seed)
    recipes = {"ours": Config(), "seed": seed_config(jit_compile="off")}
    for name, cfg in recipes.items():
        if not args.only or name == args.only:
            print(json.dumps(run(name, cfg, data, args.workdir, args.minutes), indent=2))
    # The table reads both runs' summaries, so `--only` can redo one recipe and still compare.
    results = {name: json.loads((args.workdir / f"run-{name}" / "summary.json").read_text())
               for name in recipes if (args.workdir / f"run-{name}" / "summary.json").exists()}
    print(f"\n{'recipe':6} {'best score':>10} {'epochs':>6} {'train s':>8} {'seq/s':>7}")
    for name, s in results.items():
        print(f"{name:6} {s['best_score']:>10.4f} {s['epochs']:>6} {s['train_seconds']:>8.0f} "
              f"{s['train_sequences_per_second']:>7.1f}")
    if len(results) == 2:
        ratio = results["ours"]["train_sequences_per_second"] / results["seed"]["train_sequences_per_second"]
        print(f"throughput ratio ours/seed: {ratio:.2f}x")
        results["throughput_ratio"] = round(ratio, 2)
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
