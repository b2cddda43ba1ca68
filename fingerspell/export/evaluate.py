"""A local stand-in for Kaggle's grader.

`fingerspell evaluate SUB_DIR --data-dir DATASET [--split train|supplemental] [--limit N]`
reads the raw parquet files and the CSV (not our TFRecords), feeds each sequence to the
TFLite model exactly as the grader does (the `inference_args.json` columns, NaN kept),
and reports the score (N - D) / N overall and per phrase type, latency per sequence,
and the model size; it also writes a JSON report.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from fingerspell import metric
from fingerspell.files import atomic_write_json
from fingerspell.data.parquet import read_sequences
from fingerspell.data.phrases import phrase_type
from fingerspell.export.predictor import TFLitePredictor
from fingerspell.data.metadata import Metadata, MetadataError, load_metadata


class EvaluationError(RuntimeError):
    """A dataset that cannot be evaluated; the message names the file."""


def select_rows(meta: Metadata, limit: int = 0, held_out_run: Path | None = None) -> list[int]:
    """CSV row numbers to evaluate: optionally only a run's held-out signers (or files), then the first `limit`."""
    rows = np.arange(len(meta))
    if held_out_run is not None:
        split_path = Path(held_out_run) / "split.json"
        if not split_path.exists():
            raise EvaluationError(f"{split_path}: not found (--held-out takes a run directory of `fingerspell train`)")
        split = json.loads(split_path.read_text())
        ids = meta.participant_ids if split["key"] == "participant_id" else meta.file_ids
        rows = rows[np.isin(ids, split["validation"])]
    return rows[:limit].tolist() if limit else rows.tolist()


def evaluate(sub_dir: Path, data_dir: Path, split: str = "train", limit: int = 0,
             report_path: Path | None = None, progress: bool = True, held_out_run: Path | None = None) -> dict:
    predictor = TFLitePredictor(sub_dir)
    try:
        meta = load_metadata(Path(data_dir), split)
    except MetadataError as err:
        raise EvaluationError(str(err)) from None
    rows = select_rows(meta, limit, held_out_run)
    by_file: dict[str, list[int]] = defaultdict(list)
    for i in rows:
        by_file[meta.parquets[i]].append(i)
    targets, predictions, types, latencies, missing = [], [], [], [], []
    bar = tqdm(total=len(rows), unit="seq", desc="evaluating", disable=not progress)
    for parquet, indices in by_file.items():
        try:
            sequences = read_sequences(parquet, predictor.selected_columns, meta.sequence_ids[indices].tolist())
        except (OSError, KeyError, ValueError, pa.ArrowException) as err:
            raise EvaluationError(f"{parquet}: cannot read ({err})") from None
        for i in indices:
            bar.update(1)
            sequence_id = int(meta.sequence_ids[i])
            if sequence_id not in sequences:
                missing.append(sequence_id)
                continue
            start = time.perf_counter()
            predictions.append(predictor(sequences[sequence_id]))
            latencies.append(time.perf_counter() - start)
            targets.append(meta.phrases[i])
            types.append(phrase_type(meta.phrases[i]))
    bar.close()
    if not targets:
        raise EvaluationError(f"{data_dir}: no sequence of the {split} split could be read")
    report = build_report(targets, predictions, types, latencies, predictor.model_path)
    report.update(split=split, data_dir=str(data_dir), sub_dir=str(sub_dir), missing_sequences=missing,
                  held_out_run=str(held_out_run) if held_out_run else None)
    if report_path:
        atomic_write_json(report_path, report)
    return report


def build_report(targets, predictions, types, latencies, model_path: Path) -> dict:
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, kind in enumerate(types):
        by_type[kind].append(i)
    per_type = {
        kind: {"sequences": len(idx), "score": _rounded_score([targets[i] for i in idx], [predictions[i] for i in idx])}
        for kind, idx in sorted(by_type.items())
    }
    ms = np.array(latencies) * 1000.0
    return {
        "score": _rounded_score(targets, predictions),
        "sequences": len(targets),
        "per_type": per_type,
        "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 2), "p95": round(float(np.percentile(ms, 95)), 2),
                       "mean": round(float(ms.mean()), 2)},
        "model_bytes": Path(model_path).stat().st_size,
        "examples": [{"target": t, "prediction": p} for t, p in list(zip(targets, predictions))[:10]],
    }


def _rounded_score(targets: list[str], predictions: list[str]) -> float | None:
    """The score, or None where every target is empty (unlabelled recordings)."""
    return round(metric.score(targets, predictions), 4) if any(targets) else None


def _shown(score: float | None) -> str:
    return "n/a (no labels)" if score is None else f"{score:.4f}"


def format_report(report: dict) -> str:
    lines = [f"score (N - D) / N: {_shown(report['score'])} on {report['sequences']} sequences"]
    for kind, values in report["per_type"].items():
        lines.append(f"  {kind:8} {_shown(values['score'])} ({values['sequences']} sequences)")
    lat = report["latency_ms"]
    lines.append(f"latency per sequence: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms")
    lines.append(f"model size: {report['model_bytes'] / 1e6:.2f} MB")
    if report.get("missing_sequences"):
        lines.append(f"warning: {len(report['missing_sequences'])} CSV sequences absent from their parquet files")
    return "\n".join(lines)
