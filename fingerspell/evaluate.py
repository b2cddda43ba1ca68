"""A local stand-in for Kaggle's grader.

`python -m fingerspell.evaluate SUB_DIR --data-dir DATASET [--split train|supplemental] [--limit N]`
reads the raw parquet files and the CSV (not our TFRecords), feeds each sequence to the
TFLite model exactly as the grader does (the `inference_args.json` columns, NaN kept),
and reports the score (N - D) / N overall and per phrase type, latency per sequence,
and the model size; it also writes a JSON report.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from fingerspell import metric
from fingerspell.landmark_io import read_sequences
from fingerspell.phrases import phrase_type
from fingerspell.predict import PredictorError, TFLitePredictor

SPLIT_CSV = {"train": "train.csv", "supplemental": "supplemental_metadata.csv"}
CSV_COLUMNS = ["path", "file_id", "sequence_id", "participant_id", "phrase"]


class EvaluationError(RuntimeError):
    """A dataset that cannot be evaluated; the message names the file."""


def read_split(data_dir: Path, split: str, limit: int = 0) -> pd.DataFrame:
    """The split's CSV rows (the first `limit` when given)."""
    path = Path(data_dir) / SPLIT_CSV[split]
    if not path.exists():
        raise EvaluationError(f"{path}: not found (expected a Kaggle-layout dataset in {data_dir})")
    rows = pd.read_csv(path, dtype={"phrase": str}, keep_default_na=False)
    missing = [c for c in CSV_COLUMNS if c not in rows.columns]
    if missing:
        raise EvaluationError(f"{path}: missing columns {missing}")
    return rows.head(limit) if limit else rows


def evaluate(sub_dir: Path, data_dir: Path, split: str = "train", limit: int = 0,
             report_path: Path | None = None, progress: bool = True) -> dict:
    predictor = TFLitePredictor(sub_dir)
    rows = read_split(data_dir, split, limit)
    targets, predictions, types, latencies, missing = [], [], [], [], []
    bar = tqdm(total=len(rows), unit="seq", desc="evaluating", disable=not progress)
    for path, group in rows.groupby("path", sort=False):
        parquet = Path(data_dir) / path
        if not parquet.exists():
            raise EvaluationError(f"{parquet}: not found (listed in {SPLIT_CSV[split]})")
        sequences = read_sequences(parquet, predictor.selected_columns, group.sequence_id.tolist())
        for sequence_id, phrase in zip(group.sequence_id, group.phrase):
            bar.update(1)
            if sequence_id not in sequences:
                missing.append(int(sequence_id))
                continue
            start = time.perf_counter()
            predictions.append(predictor(sequences[sequence_id]))
            latencies.append(time.perf_counter() - start)
            targets.append(phrase)
            types.append(phrase_type(phrase))
    bar.close()
    if not targets:
        raise EvaluationError(f"{data_dir}: no sequence of the {split} split could be read")
    report = build_report(targets, predictions, types, latencies, predictor.model_path)
    report.update(split=split, data_dir=str(data_dir), sub_dir=str(sub_dir), missing_sequences=missing)
    if report_path:
        Path(report_path).write_text(json.dumps(report, indent=2) + "\n")
    return report


def build_report(targets, predictions, types, latencies, model_path: Path) -> dict:
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, kind in enumerate(types):
        by_type[kind].append(i)
    per_type = {
        kind: {"sequences": len(idx),
               "score": round(metric.score([targets[i] for i in idx], [predictions[i] for i in idx]), 4)}
        for kind, idx in sorted(by_type.items())
    }
    ms = np.array(latencies) * 1000.0
    return {
        "score": round(metric.score(targets, predictions), 4),
        "sequences": len(targets),
        "per_type": per_type,
        "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 2), "p95": round(float(np.percentile(ms, 95)), 2),
                       "mean": round(float(ms.mean()), 2)},
        "model_bytes": Path(model_path).stat().st_size,
        "examples": [{"target": t, "prediction": p} for t, p in list(zip(targets, predictions))[:10]],
    }


def format_report(report: dict) -> str:
    lines = [f"score (N - D) / N: {report['score']:.4f} on {report['sequences']} sequences"]
    for kind, values in report["per_type"].items():
        lines.append(f"  {kind:8} {values['score']:.4f} ({values['sequences']} sequences)")
    lat = report["latency_ms"]
    lines.append(f"latency per sequence: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms")
    lines.append(f"model size: {report['model_bytes'] / 1e6:.2f} MB")
    if report.get("missing_sequences"):
        lines.append(f"warning: {len(report['missing_sequences'])} CSV sequences absent from their parquet files")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fingerspell.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("sub_dir", type=Path, help="directory with model.tflite and inference_args.json")
    parser.add_argument("--data-dir", required=True, type=Path, help="Kaggle-layout dataset directory")
    parser.add_argument("--split", choices=tuple(SPLIT_CSV), default="train")
    parser.add_argument("--limit", type=int, default=0, help="only the first N CSV rows")
    parser.add_argument("--report", type=Path, help="JSON report path (default SUB_DIR/evaluation.json)")
    args = parser.parse_args(argv)
    try:
        report = evaluate(args.sub_dir, args.data_dir, args.split, args.limit,
                          args.report or args.sub_dir / "evaluation.json")
    except (EvaluationError, PredictorError, KeyError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"report: {args.report or args.sub_dir / 'evaluation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
