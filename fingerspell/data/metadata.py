"""The Kaggle metadata CSVs (`train.csv`, `supplemental_metadata.csv`), read and validated.

Preprocessing, the local evaluator and the latency benchmark all start from these rows,
so they share one reader that checks what the rest relies on: the required columns,
integer ids (a bad value is reported with its line number), unique sequence ids and
one parquet path per file id. A CSV that fails a check raises `MetadataError` naming
the file and the problem.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from fingerspell.data.schema import SPLIT_FILES

SPLIT_SOURCES = SPLIT_FILES
CSV_ID_COLUMNS: tuple[str, ...] = ("file_id", "sequence_id", "participant_id")
CSV_REQUIRED_COLUMNS: tuple[str, ...] = (*CSV_ID_COLUMNS, "phrase")
CSV_PATH_COLUMN = "path"  # optional; default <landmarks folder>/<file_id>.parquet


class MetadataError(Exception):
    """A metadata CSV (or split name) that cannot be used; the message names the file."""


def splits_of(split: str) -> tuple[str, ...]:
    """The splits a `--split` value stands for ("all": every split)."""
    if split == "all":
        return tuple(SPLIT_SOURCES)
    if split not in SPLIT_SOURCES:
        raise MetadataError(f"--split must be one of {[*SPLIT_SOURCES, 'all']}, got {split!r}")
    return (split,)


@dataclass
class Metadata:
    """One split's CSV rows, validated, as arrays (row i of each field is CSV row i)."""

    csv_path: str
    file_ids: np.ndarray
    sequence_ids: np.ndarray
    participant_ids: np.ndarray
    phrases: list[str]
    parquets: list[str]

    def __len__(self) -> int:
        return len(self.phrases)


def _parse_int_column(table: pa.Table, column: str, csv_path: Path) -> np.ndarray:
    text = pc.utf8_trim_whitespace(table.column(column))
    ok = pc.match_substring_regex(text, r"^-?[0-9]+$")
    if not pc.all(ok).as_py():
        bad = np.flatnonzero(~np.asarray(ok.to_pylist(), dtype=bool))
        raise MetadataError(f"{csv_path}: column {column!r} must hold integers; bad value(s) on "
                            f"line(s) {(bad[:5] + 2).tolist()}")  # +2: header line, 1-based
    try:
        return np.array(pc.cast(text, pa.int64()).to_pylist(), dtype=np.int64)
    except pa.ArrowInvalid as e:  # e.g. out of the int64 range
        raise MetadataError(f"{csv_path}: column {column!r}: {e}") from None


def _read_csv_as_strings(csv_path: Path) -> pa.Table:
    """Every column as text (our own integer check gives line numbers); empty stays ''."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        return pacsv.read_csv(csv_path, convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in header}, strings_can_be_null=False))
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError, csv.Error) as e:
        raise MetadataError(f"{csv_path}: cannot read CSV ({e})") from None


def load_metadata(data_dir: Path, split: str) -> Metadata:
    """A split's metadata CSV, validated: integer ids, unique sequence ids, one parquet path per file."""
    csv_name, landmarks_dir = SPLIT_SOURCES[split]
    csv_path = Path(data_dir) / csv_name
    if not csv_path.is_file():
        raise MetadataError(f"{csv_path}: metadata CSV not found (needed for --split {split})")
    table = _read_csv_as_strings(csv_path)
    if missing := [c for c in CSV_REQUIRED_COLUMNS if c not in table.column_names]:
        raise MetadataError(f"{csv_path}: missing column(s) {missing}; found {table.column_names}")
    ids = {c: _parse_int_column(table, c, csv_path) for c in CSV_ID_COLUMNS}
    unique, counts = np.unique(ids["sequence_id"], return_counts=True)
    if (counts > 1).any():
        raise MetadataError(f"{csv_path}: sequence_id(s) listed more than once: {unique[counts > 1][:5].tolist()}")
    if CSV_PATH_COLUMN in table.column_names:
        parquets = [str(Path(data_dir) / p) for p in table.column(CSV_PATH_COLUMN).to_pylist()]
        paths_of: dict[int, set[str]] = {}
        for f, path in zip(ids["file_id"].tolist(), parquets):
            paths_of.setdefault(f, set()).add(path)
        if conflicting := [f for f, paths in paths_of.items() if len(paths) > 1]:
            raise MetadataError(f"{csv_path}: file_id(s) {conflicting[:5]} have more than one path")
    else:
        parquets = [str(Path(data_dir) / landmarks_dir / f"{f}.parquet") for f in ids["file_id"].tolist()]
    return Metadata(str(csv_path), ids["file_id"], ids["sequence_id"], ids["participant_id"],
                    table.column("phrase").to_pylist(), parquets)
