"""Reading and writing landmark parquet files in Kaggle's layout.

A landmarks file holds one row per frame of many sequences: the index column
`sequence_id` (int64), `frame` (int16), then the 1629 float32 columns of
`schema.LANDMARK_COLUMNS` in that order (NaN where MediaPipe found nothing).
The files carry pandas metadata naming `sequence_id` as the index, so
`pd.read_parquet(path)` returns a frame indexed by `sequence_id`, exactly as
Kaggle's `train_landmarks/*.parquet` do, and pyarrow can project columns by name.

`write_landmarks_parquet` is the one writer of this layout in the toolkit
(extraction and the synthetic generator use it); `read_sequences` is the one
reader (prediction, evaluation and rendering use it).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fingerspell.data.schema import FRAME_COLUMN, INDEX_COLUMN, LANDMARK_COLUMNS
from fingerspell.files import atomic_path

N_LANDMARK_COLUMNS = len(LANDMARK_COLUMNS)  # 1629


def _arrow_schema() -> pa.Schema:
    """The file schema: sequence_id, frame, 1629 float32, plus pandas index metadata."""
    import pandas as pd

    empty = pd.DataFrame(
        {
            INDEX_COLUMN: np.empty(0, np.int64),
            FRAME_COLUMN: np.empty(0, np.int16),
            **{c: np.empty(0, np.float32) for c in LANDMARK_COLUMNS},
        }
    ).set_index(INDEX_COLUMN)
    schema = pa.Schema.from_pandas(empty, preserve_index=True)
    # pandas appends the index column last; put it first, as the layout describes.
    fields = [schema.field(INDEX_COLUMN)] + [f for f in schema if f.name != INDEX_COLUMN]
    return pa.schema(fields, metadata=schema.metadata)


_SCHEMA: pa.Schema | None = None


def landmarks_schema() -> pa.Schema:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = _arrow_schema()
    return _SCHEMA


def _check_sequence(sequence_id, frames) -> tuple[int, np.ndarray]:
    sid = int(sequence_id)
    arr = np.asarray(frames)
    if arr.ndim != 2 or arr.shape[1] != N_LANDMARK_COLUMNS:
        raise ValueError(
            f"sequence {sid}: expected an array [T, {N_LANDMARK_COLUMNS}], got shape {arr.shape}"
        )
    if arr.shape[0] > np.iinfo(np.int16).max + 1:
        raise ValueError(f"sequence {sid}: {arr.shape[0]} frames do not fit the int16 frame column")
    return sid, arr.astype(np.float32, copy=False)


def _batch(items: list[tuple[int, np.ndarray]], schema: pa.Schema) -> pa.RecordBatch:
    sids = np.concatenate([np.full(len(a), sid, np.int64) for sid, a in items])
    frames = np.concatenate([np.arange(len(a), dtype=np.int16) for _, a in items])
    # Column-major copy so that each landmark column is one contiguous buffer.
    values = np.ascontiguousarray(np.concatenate([a for _, a in items], axis=0).T)
    # NaN becomes null, as pandas writes a missing value (readers get NaN back either way).
    arrays = [pa.array(sids), pa.array(frames)] + [pa.array(values[j], from_pandas=True) for j in range(len(values))]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def write_landmarks_parquet(
    sequences: Mapping[int, np.ndarray] | Iterable[tuple[int, np.ndarray]],
    path: str | os.PathLike,
    rows_per_group: int = 50_000,
) -> int:
    """Write sequences to `path` in Kaggle's landmark layout; return the number of rows.

    `sequences` maps (or yields pairs of) sequence_id -> float array [T, 1629] in
    `LANDMARK_COLUMNS` order; frames are numbered 0..T-1. Pairs are consumed lazily,
    in `rows_per_group`-row row groups, so a generator can write large files
    without holding them in memory. Each sequence's rows are contiguous, in the
    order given. The file is written through `fingerspell.files.atomic_path`, so `path`
    is either the complete, fsynced file or untouched.
    """
    path = Path(path)
    items = sequences.items() if isinstance(sequences, Mapping) else sequences
    schema = landmarks_schema()
    n_rows = 0
    seen: set[int] = set()
    # zstd with byte-stream-split floats: files about half the size and written twice as fast
    # as the defaults; dictionary encoding only where values repeat (the sequence ids).
    options = dict(compression="zstd", use_dictionary=[INDEX_COLUMN], use_byte_stream_split=list(LANDMARK_COLUMNS))
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, **options) as writer:
        pending: list[tuple[int, np.ndarray]] = []
        pending_rows = 0
        for sequence_id, frames in items:
            sid, arr = _check_sequence(sequence_id, frames)
            if sid in seen:
                raise ValueError(f"sequence_id {sid} appears twice")
            seen.add(sid)
            if len(arr) == 0:
                continue
            pending.append((sid, arr))
            pending_rows += len(arr)
            if pending_rows >= rows_per_group:
                writer.write_batch(_batch(pending, schema), row_group_size=pending_rows)
                n_rows += pending_rows
                pending, pending_rows = [], 0
        if pending:
            writer.write_batch(_batch(pending, schema), row_group_size=pending_rows)
            n_rows += pending_rows
    return n_rows


def list_sequence_ids(parquet_path: str | os.PathLike) -> np.ndarray:
    """The distinct sequence ids of a landmarks file, in file order."""
    ids = pq.read_table(parquet_path, columns=[INDEX_COLUMN]).column(0).to_numpy()
    if len(ids) == 0:
        return ids.astype(np.int64)
    starts = np.concatenate([[0], np.flatnonzero(ids[1:] != ids[:-1]) + 1])
    return np.asarray(list(dict.fromkeys(ids[starts].tolist())), dtype=np.int64)


def read_sequences(
    parquet_path: str | os.PathLike,
    columns: Sequence[str] | None = None,
    sequence_ids: Iterable[int] | int | None = None,
) -> dict[int, np.ndarray]:
    """Read landmark sequences: {sequence_id: float32 array [T, len(columns)]}.

    Only `columns` (default: all 1629 `LANDMARK_COLUMNS`, in the order given) are read,
    by pyarrow column projection. With `sequence_ids`, only those sequences are read
    (row groups whose statistics exclude them are skipped); ids not in the file are
    simply absent from the result. Rows are grouped by sequence_id in one pass and
    each sequence's rows are ordered by `frame`. The dict follows file order.
    """
    columns = list(LANDMARK_COLUMNS if columns is None else columns)
    names = set(pq.read_schema(parquet_path).names)
    # `frame` is optional, as in preprocessing: without it a sequence's rows are in file order.
    has_frame = FRAME_COLUMN in names
    missing = [c for c in [INDEX_COLUMN, *columns] if c not in names]
    if missing:
        raise KeyError(f"{parquet_path}: no column(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    filters = None
    if isinstance(sequence_ids, (int, np.integer)):
        sequence_ids = [sequence_ids]
    if sequence_ids is not None:
        wanted = sorted({int(s) for s in sequence_ids})
        if not wanted:
            return {}
        filters = [(INDEX_COLUMN, "in", wanted)]
    table = pq.read_table(
        parquet_path, columns=[INDEX_COLUMN, *([FRAME_COLUMN] if has_frame else []), *columns], filters=filters
    )
    n = table.num_rows
    if n == 0:
        return {}
    sids = table.column(0).to_numpy()
    frames = table.column(FRAME_COLUMN).to_numpy() if has_frame else np.arange(n)
    values = np.empty((n, len(columns)), dtype=np.float32)
    for j, name in enumerate(columns):
        values[:, j] = table.column(name).to_numpy(zero_copy_only=False)
    # First appearance of each id gives the file order; a stable sort by (id rank, frame)
    # groups the rows even if a sequence's rows were not contiguous.
    uniq, first, inverse = np.unique(sids, return_index=True, return_inverse=True)
    rank_of_uniq = np.argsort(np.argsort(first))
    rank = rank_of_uniq[inverse]
    order = np.lexsort((frames, rank))
    rank_sorted = rank[order]
    bounds = np.flatnonzero(np.diff(rank_sorted)) + 1
    out: dict[int, np.ndarray] = {}
    for rows in np.split(order, bounds):
        out[int(sids[rows[0]])] = values[rows]
    return out
