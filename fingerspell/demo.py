"""The main job end to end on the bundled synthetic data, in one command.

`python -m fingerspell.demo [--workdir work/demo] [--minutes 8]` generates a Kaggle-format
synthetic dataset, preprocesses it, trains briefly, exports the TFLite submission,
evaluates it on held-out signers' sequences of a second generated dataset (raw parquet,
as Kaggle's grader reads it), and prints the score and the path of `submission.zip`.
About 15 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fingerspell.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("work/demo"))
    parser.add_argument("--minutes", type=float, default=8.0, help="training-time budget")
    parser.add_argument("--sequences", type=int, default=2400, help="training sequences to generate")
    parser.add_argument("--fresh", action="store_true", help="delete --workdir first")
    args = parser.parse_args(argv)

    from fingerspell.config import Config
    from fingerspell.evaluate import evaluate, format_report
    from fingerspell.exporting import export_run
    from fingerspell.preprocessing import PreprocessConfig, preprocess
    from fingerspell.synth import generate_dataset
    from fingerspell.training import train

    work = args.workdir
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()

    t = step("1/5 synthetic Kaggle-format data (python -m fingerspell.synth)")
    files = max(1, args.sequences // 400)
    datasets = {"dataset": dict(files=files, sequences_per_file=args.sequences // files, participants=24, seed=0),
                # other signers (another seed draws other participants), for the final evaluation
                "heldout": dict(files=1, sequences_per_file=300, participants=6, seed=1)}
    for name, options in datasets.items():
        if (work / name / "train.csv").exists():
            print(f"{work / name}: already generated")
        else:
            generate_dataset(work / name, supplemental_files=0, **options)
    print(f"done in {time.perf_counter() - t:.0f} s")

    t = step("2/5 preprocess (python -m preprocess)")
    manifest = preprocess(PreprocessConfig(data_dir=work / "dataset", out_dir=work / "preprocessed",
                                           split="train", overwrite=True))
    print(f"kept {manifest['kept']}, dropped {manifest['dropped']} in {time.perf_counter() - t:.0f} s")

    t = step(f"3/5 train for {args.minutes:g} minutes (python -m train)")
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = Config(epochs=1000, time_budget_minutes=args.minutes, eval_every=5, show_examples_every=10)
    summary = train(work / "preprocessed", run_dir, cfg)
    print(json.dumps(summary, indent=2))

    t = step("4/5 export TFLite submission (python -m export)")
    exported = export_run(run_dir, work / "submission")
    print(json.dumps(exported, indent=2))

    t = step("5/5 evaluate like Kaggle's grader on unseen signers (python -m fingerspell.evaluate)")
    report = evaluate(work / "submission", work / "heldout", "train",
                      report_path=work / "submission" / "evaluation.json")
    print(format_report(report))
    print(f"\nscore {report['score']:.4f} on {report['sequences']} held-out sequences; "
          f"total {(time.perf_counter() - started) / 60:.1f} minutes")
    print(f"submission: {exported['submission']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
