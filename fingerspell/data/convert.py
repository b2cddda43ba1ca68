"""Kaggle landmark parquet files -> TFRecord shards of the selected columns.

Layout of the output directory OUT:

- `OUT/<split>/<file_id>.tfrecord`: one shard per input parquet file, holding the
  kept sequences in CSV order (format: `fingerspell.data.records`);
- `OUT/<split>/<file_id>.json`: that file's counts plus a fingerprint of its
  inputs and settings, so a re-run can skip the file and still report it;
- `OUT/manifest.json`: totals, drop reasons, errors, per-file counts, kept sequences and
  frames per participant, the longest phrase, settings (training reads its split and
  memory needs from these instead of scanning the records).

Why it is shaped this way:

- Real landmark files are 1-3 GB with 1630 columns; only the landmark set's columns
  (`--landmarks`, `schema.LANDMARK_SETS`: 156 of `hands_arms` by default) and the ids are read, by name (any column order), by pyarrow column projection,
  after a schema check that names the file and the problem (missing or non-numeric
  columns). Float32 columns are used zero-copy; float64 or integer ones (what pandas
  writes by default) are cast to float32 with one warning for the file.
- Rows are grouped by sequence in one pass (contiguous runs, or one stable sort
  when a file's rows are not grouped), never by scanning the table per sequence.
- Each file is one task in a process pool; a worker holds one file's selected
  columns at a time (about 3x their size at the peak), so the default worker count
  is bounded by available memory as well as cores. Workers never import TensorFlow
  (records are encoded directly), so the pool can fork and start instantly.
- Shards and JSON are written with `fingerspell.files.atomic_path` (temporary file
  beside the final one, fsynced, renamed), so a killed run leaves no partial shard;
  the next run deletes the stale temporaries and redoes only the files without a
  finished shard. A run that will replace shards first deletes the old manifest, so
  a killed run never leaves a manifest that describes other shards.
- Every CSV row is accounted for: kept, or counted under one drop reason.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fingerspell import files, machine
from fingerspell.data import records, vocab
from fingerspell.data.metadata import Metadata, MetadataError, load_metadata, splits_of
from fingerspell.data.schema import DEFAULT_LANDMARKS, FRAME_COLUMN, INDEX_COLUMN, LandmarkSet, landmark_set

_log = logging.getLogger(__name__)

# Drop reasons, in the order they are decided for a row.
FILE_ERROR = "file_error"  # the parquet file is missing, unreadable or has a bad schema
UNKNOWN_CHARACTERS = "unknown_characters"  # the phrase has characters outside the map
NOT_IN_PARQUET = "not_in_parquet"  # the CSV row's sequence has no rows in its parquet file
TOO_FEW_HAND_FRAMES = "too_few_hand_frames"  # factor * len(phrase) >= frames with a full hand
DROP_REASONS: tuple[str, ...] = (FILE_ERROR, UNKNOWN_CHARACTERS, NOT_IN_PARQUET, TOO_FEW_HAND_FRAMES)

LOCK_NAME = records.LOCK_NAME
MAX_STORED_WARNINGS = 50  # per file, in the manifest; the counts are always complete
MAX_PRINTED_WARNINGS = 3  # per file, on stderr
# Tests only: seconds to sleep after each written record, so a test can kill a
# run while a worker is provably mid-shard.
_TEST_DELAY_ENV = "FINGERSPELL_TEST_RECORD_DELAY"



class PreprocessError(Exception):
    """A problem that stops the whole run (bad CSV, unusable output dir)."""


class FileProblem(Exception):
    """A parquet file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class PreprocessConfig:
    data_dir: Path
    out_dir: Path
    split: str = "train"  # "train", "supplemental" or "all"
    workers: int | None = None  # None: as many as cores and available memory allow
    overwrite: bool = False
    min_hand_frames_factor: float = 2.0
    progress: bool = True
    landmarks: str = DEFAULT_LANDMARKS  # the landmark set stored (schema.LANDMARK_SETS)


@dataclass
class FileTask:
    """One parquet file and its CSV rows: everything a worker needs, picklable."""

    split: str
    file_id: int
    parquet: str
    sequence_ids: np.ndarray
    participant_ids: np.ndarray
    phrases: list[str]
    factor: float
    shard: str  # final shard path
    info: str  # final per-file JSON path
    out_dir: str  # OUT, for the shard path stored relative to it
    fingerprint: dict[str, Any] = field(default_factory=dict)
    landmarks: str = DEFAULT_LANDMARKS  # the landmark set whose columns the shard stores

    @property
    def landmark_set(self) -> LandmarkSet:
        return landmark_set(self.landmarks)


def _rows_digest(sequence_ids: np.ndarray, participant_ids: np.ndarray, phrases: list[str]) -> str:
    """Hash of a file's CSV rows, so a re-run notices when the CSV changed."""
    h = hashlib.sha1()
    for sid, pid, phrase in zip(sequence_ids.tolist(), participant_ids.tolist(), phrases):
        h.update(f"{sid}\t{pid}\t{phrase}\n".encode())
    return h.hexdigest()


def _file_stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def is_url(path: str | os.PathLike) -> bool:
    """A path with a scheme (gs://, s3://, hdfs://): Beam's filesystems reach it, the local disk does not."""
    return "://" in str(path)


def make_tasks(metadata: Metadata, split: str, out_dir: Path | str, factor: float,
               stat: Callable[[str], list[int] | None] = _file_stat,
               landmarks: str = DEFAULT_LANDMARKS) -> list[FileTask]:
    """One task per parquet file of a split, in CSV order of first appearance.

    `out_dir` may be a URL (joined as text, which `Path` would mangle); `stat` gives
    [size, mtime_ns] of an input file, or None when it is missing.
    """
    order = np.argsort(metadata.file_ids, kind="stable")
    file_ids, first = np.unique(metadata.file_ids[order], return_index=True)
    groups = np.split(order, first[1:])
    tasks = []
    for file_id, rows in sorted(zip(file_ids.tolist(), groups), key=lambda fg: fg[1][0]):
        parquet = metadata.parquets[rows[0]]
        sequence_ids = metadata.sequence_ids[rows]
        participant_ids = metadata.participant_ids[rows]
        phrases = [metadata.phrases[i] for i in rows.tolist()]
        tasks.append(FileTask(
            split=split, file_id=file_id, parquet=parquet, sequence_ids=sequence_ids,
            participant_ids=participant_ids, phrases=phrases, factor=factor,
            shard=os.path.join(str(out_dir), split, f"{file_id}{records.SHARD_SUFFIX}"),
            info=os.path.join(str(out_dir), split, f"{file_id}.json"),
            out_dir=str(out_dir),
            landmarks=landmarks,
            fingerprint={
                "format": [records.FORMAT_NAME, records.FORMAT_VERSION],
                "selected_columns": hashlib.sha1("\n".join(landmark_set(landmarks).columns).encode()).hexdigest(),
                "min_hand_frames_factor": factor,
                "parquet": parquet,
                "parquet_stat": stat(parquet),
                "csv_rows": _rows_digest(sequence_ids, participant_ids, phrases),
            },
        ))
    return tasks


# --- reading one parquet file ---------------------------------------------------------------

@dataclass(frozen=True)
class FileLayout:
    """What `check_schema` found: whether the file has `frame`, and which columns need a cast."""

    has_frame: bool
    cast: tuple[str, ...]  # selected columns stored as another number type than float32


def check_schema(path: str, schema: pa.Schema, columns: Sequence[str]) -> FileLayout:
    """Raise FileProblem unless every needed column is present once with a usable type.

    Columns are found by name, so their order does not matter. A landmark column must
    hold numbers: float32 is used as stored; other floats and integers (pandas writes
    float64 by default) are cast, so they are listed in `cast`.
    """
    counts = Counter(schema.names)
    missing = [c for c in (INDEX_COLUMN, *columns) if c not in counts]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileProblem(f"{path}: missing column(s) {missing[:5]}{more}")
    if repeated := [c for c in (INDEX_COLUMN, FRAME_COLUMN, *columns) if counts[c] > 1]:
        raise FileProblem(f"{path}: column(s) {repeated[:5]} appear more than once")
    if not pa.types.is_integer(schema.field(INDEX_COLUMN).type):
        raise FileProblem(f"{path}: column {INDEX_COLUMN!r} is {schema.field(INDEX_COLUMN).type}, expected int64")
    has_frame = FRAME_COLUMN in counts
    if has_frame and not pa.types.is_integer(schema.field(FRAME_COLUMN).type):
        raise FileProblem(f"{path}: column {FRAME_COLUMN!r} is {schema.field(FRAME_COLUMN).type}, expected an integer")
    types = {c: schema.field(c).type for c in columns}
    if bad := [c for c, t in types.items() if not (pa.types.is_floating(t) or pa.types.is_integer(t))]:
        raise FileProblem(f"{path}: landmark column {bad[0]!r} is {types[bad[0]]}, expected numbers (float32); "
                          f"{len(bad)} selected column(s) are not numeric")
    return FileLayout(has_frame, tuple(c for c, t in types.items() if not pa.types.is_float32(t)))


def _cast_warning(path: str, schema: pa.Schema, cast: Sequence[str]) -> str:
    stored = sorted({str(schema.field(c).type) for c in cast})
    return (f"{path}: {len(cast)} landmark column(s) stored as {'/'.join(stored)} instead of float32 "
            f"(e.g. {cast[0]!r}); cast to float32")


def _numpy_dtype(arrow_type: pa.DataType) -> np.dtype:
    if pa.types.is_float32(arrow_type):
        return np.dtype(np.float32)
    if pa.types.is_integer(arrow_type):
        kind = "i" if pa.types.is_signed_integer(arrow_type) else "u"
        return np.dtype(f"<{kind}{arrow_type.bit_width // 8}")
    raise TypeError(f"unexpected column type {arrow_type}")


def column_values(column: pa.ChunkedArray) -> np.ndarray:
    """A numeric column as numpy, nulls as NaN, straight from the Arrow buffers.

    pyarrow's own `to_numpy` imports pandas on first use (~0.3 s in every worker
    process); a single-chunk column without nulls is not even copied here.
    """
    dtype = _numpy_dtype(column.type)
    parts = []
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        validity, data = chunk.buffers()[:2]
        values = np.frombuffer(data, dtype=dtype, count=chunk.offset + len(chunk))[chunk.offset:]
        if chunk.null_count:
            bits = np.unpackbits(np.frombuffer(validity, np.uint8), count=chunk.offset + len(chunk),
                                 bitorder="little")[chunk.offset:]
            values = np.where(bits.astype(bool), values, np.float32(np.nan))
        parts.append(values)
    if not parts:
        return np.empty(0, dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass
class LandmarkTable:
    """One file's selected columns: sequence id and frame per row, one array per column."""

    sequence_ids: np.ndarray
    frames: np.ndarray | None
    columns: list[np.ndarray]  # one float32 array per selected column (the landmark set's), one value per row
    warnings: list[str] = field(default_factory=list)  # about the file as a whole (e.g. a cast)

    def take(self, order: np.ndarray) -> "LandmarkTable":
        return LandmarkTable(self.sequence_ids[order], None if self.frames is None else self.frames[order],
                             [c[order] for c in self.columns], self.warnings)


def _float32_values(column: pa.ChunkedArray, cast: bool) -> np.ndarray:
    """A landmark column as float32; a float64/integer one is cast exactly as numpy's astype would."""
    if cast:  # safe=False: round to nearest float32 like numpy, instead of refusing inexact values
        column = pc.cast(column, pa.float32(), safe=False)
    return column_values(column)


#: Opens a (remote) file for reading: a seekable binary stream; FileNotFoundError when it is missing.
Opener = Callable[[str], BinaryIO]


def read_landmarks(path: str, open_file: Opener | None = None,
                   landmarks: LandmarkSet | None = None) -> LandmarkTable:
    """The columns of a landmark set (default `hands_arms`) of a landmarks file, by name, as float32,
    after checking its schema.

    `open_file` (the Beam engine's, for gs:// and other remote paths): pyarrow reads the
    footer and the selected columns' byte ranges through the stream it returns, never the
    whole file.
    """
    selected = (landmarks or landmark_set(DEFAULT_LANDMARKS)).columns
    if open_file is None:
        if not os.path.exists(path):
            raise FileProblem(f"{path}: parquet file not found")
        source: Any = contextlib.nullcontext(path)
    else:
        try:
            source = open_file(path)
        except FileNotFoundError:
            raise FileProblem(f"{path}: parquet file not found") from None
    try:
        with source as src:
            # A stream: fetch the selected columns' ranges coalesced (a few large reads, not one per column chunk).
            pf = pq.ParquetFile(src) if open_file is None else pq.ParquetFile(src, pre_buffer=True)
            layout = check_schema(path, pf.schema_arrow, selected)
            ids = [INDEX_COLUMN] + ([FRAME_COLUMN] if layout.has_frame else [])
            table = pf.read(columns=ids + list(selected), use_threads=True)
        cast = set(layout.cast)
        columns = [_float32_values(table.column(c), c in cast) for c in selected]
    except (pa.ArrowException, OSError) as e:
        raise FileProblem(f"{path}: cannot read parquet file ({type(e).__name__}: {e})") from None
    for name in ids:
        if table.column(name).null_count:
            raise FileProblem(f"{path}: column {name!r} has null values")
    return LandmarkTable(
        sequence_ids=column_values(table.column(INDEX_COLUMN)).astype(np.int64, copy=False),
        frames=column_values(table.column(FRAME_COLUMN)) if layout.has_frame else None,
        columns=columns,
        warnings=[_cast_warning(path, pf.schema_arrow, layout.cast)] if layout.cast else [],
    )


def group_rows(table: LandmarkTable) -> tuple[LandmarkTable, np.ndarray, np.ndarray]:
    """(table with each sequence's rows contiguous and in frame order, run ids, run starts).

    Kaggle files are already grouped, which one vectorized check confirms; other
    files get one stable sort by (sequence_id, frame).
    """
    seq, frames = table.sequence_ids, table.frames
    if len(seq) == 0:
        return table, np.empty(0, np.int64), np.empty(0, np.intp)
    same = seq[1:] == seq[:-1]
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    grouped = len(np.unique(seq[starts])) == len(starts)
    if grouped and frames is not None:
        grouped = not np.any(same & (np.diff(frames.astype(np.int64)) < 0))
    if not grouped:
        order = np.lexsort((frames, seq)) if frames is not None else np.argsort(seq, kind="stable")
        table = table.take(order)
        seq = table.sequence_ids
        starts = np.flatnonzero(np.concatenate([[True], seq[1:] != seq[:-1]]))
    return table, seq[starts], starts


def _full_rows(columns: list[np.ndarray], which: np.ndarray) -> np.ndarray:
    missing = np.zeros(len(columns[0]), dtype=bool)
    for j in which:
        missing |= np.isnan(columns[j])
    return ~missing


def full_hand_frames(table: LandmarkTable, starts: np.ndarray, landmarks: LandmarkSet | None = None) -> np.ndarray:
    """Per run, the larger of the counts of frames where all 63 left / right hand values are present
    (`table` holds the columns of `landmarks`, default `hands_arms`)."""
    if len(starts) == 0:
        return np.empty(0, np.int64)
    landmarks = landmarks or landmark_set(DEFAULT_LANDMARKS)
    left = _full_rows(table.columns, landmarks.left_hand_columns).astype(np.int64)
    right = _full_rows(table.columns, landmarks.right_hand_columns).astype(np.int64)
    return np.maximum(np.add.reduceat(left, starts), np.add.reduceat(right, starts))


def keep_sequence(phrase: str, hand_frames: int, factor: float) -> bool:
    """The seed notebook's rule: enough frames with a fully visible hand for the phrase length."""
    return factor * len(phrase) < hand_frames


# --- one file -------------------------------------------------------------------------------

def _empty_result(task: FileTask) -> dict[str, Any]:
    return {
        "split": task.split,
        "file_id": task.file_id,
        "parquet": task.parquet,
        "shard": None,
        "csv_rows": len(task.phrases),
        "kept": 0,
        "dropped": {reason: 0 for reason in DROP_REASONS},
        "not_in_csv": 0,  # sequences in the parquet file that the CSV does not list
        "frames_kept": 0,
        # Kept sequences and frames per signer, and the longest kept phrase: a training run
        # splits by signer and sizes its cache from these without reading any record.
        "participants": {},
        "longest_phrase": None,  # {"sequence_id", "characters"} of the longest kept phrase
        "warnings": [],
        "n_warnings": 0,
        "error": None,
        "reused": False,
        "seconds": 0.0,
    }


def _warn(result: dict[str, Any], message: str) -> None:
    result["n_warnings"] += 1
    if len(result["warnings"]) < MAX_STORED_WARNINGS:
        result["warnings"].append(message)


def _remove_outputs(task: FileTask) -> None:
    """A file that now fails must not leave an older shard behind to be trained on.

    Local outputs only: the Beam engine deletes remote ones itself (a URL is no local path).
    """
    for path in (task.info, task.shard):
        if is_url(path):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _classify_rows(task: FileTask, run_ids: np.ndarray, hand_frames: np.ndarray,
                   result: dict[str, Any]) -> list[tuple[int, int]]:
    """(CSV row, run) of each kept row, counting every other row under its reason."""
    order = np.argsort(run_ids, kind="stable")
    sorted_ids = run_ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, task.sequence_ids), 0, max(len(sorted_ids) - 1, 0))
    found = (sorted_ids[pos] == task.sequence_ids) if len(sorted_ids) else np.zeros(len(pos), bool)
    run_of_row = order[pos] if len(order) else pos
    result["not_in_csv"] = int(np.count_nonzero(~np.isin(run_ids, task.sequence_ids)))
    kept = []
    for row, phrase in enumerate(task.phrases):
        sid = int(task.sequence_ids[row])
        if bad := vocab.unknown_chars(phrase):
            result["dropped"][UNKNOWN_CHARACTERS] += 1
            _warn(result, f"{task.parquet}: sequence {sid}: phrase {phrase!r} has characters "
                          f"outside the character map: {sorted(bad)}")
        elif not found[row]:
            result["dropped"][NOT_IN_PARQUET] += 1
            _warn(result, f"{task.parquet}: sequence {sid} is listed in the CSV but has no rows in the file")
        elif not keep_sequence(phrase, int(hand_frames[run_of_row[row]]), task.factor):
            result["dropped"][TOO_FEW_HAND_FRAMES] += 1
        else:
            kept.append((row, int(run_of_row[row])))
    return kept


def _write_shard(task: FileTask, table: LandmarkTable, starts: np.ndarray,
                 kept: list[tuple[int, int]], result: dict[str, Any]) -> None:
    ends = np.append(starts[1:], len(table.sequence_ids))
    # Row-major [rows, columns] once per file, so each record is one contiguous slice.
    values = np.stack(table.columns, axis=1) if kept else np.empty((0, task.landmark_set.n_columns), np.float32)
    delay = float(os.environ.get(_TEST_DELAY_ENV, "0") or 0)
    participants: dict[str, dict[str, int]] = {}
    with files.atomic_path(task.shard) as tmp, records.ShardWriter(tmp) as writer:
        for row, run in kept:
            block = values[starts[run]:ends[run]]
            participant = int(task.participant_ids[row])
            writer.write(records.serialize_sequence(
                block, task.phrases[row], int(task.sequence_ids[row]), participant, task.file_id))
            n_frames = int(ends[run] - starts[run])
            result["frames_kept"] += n_frames
            counts = participants.setdefault(str(participant), {"sequences": 0, "frames": 0})
            counts["sequences"] += 1
            counts["frames"] += n_frames
            longest = result["longest_phrase"]
            if longest is None or len(task.phrases[row]) > longest["characters"]:
                result["longest_phrase"] = {"sequence_id": int(task.sequence_ids[row]),
                                            "characters": len(task.phrases[row])}
            if delay:
                time.sleep(delay)
    result["kept"] = len(kept)
    result["participants"] = dict(sorted(participants.items(), key=lambda item: int(item[0])))
    result["shard"] = os.path.relpath(task.shard, task.out_dir)  # relative to OUT: the folder can move


def process_file(task: FileTask, open_file: Opener | None = None) -> dict[str, Any]:
    """Read, filter and write one parquet file; return its per-file result.

    File-level problems become `result["error"]` (all its rows counted as
    `file_error`) rather than exceptions, so the other files still run. `open_file`:
    how to open a remote `task.parquet` (see `read_landmarks`).
    """
    started = time.perf_counter()
    result = _empty_result(task)
    # An old JSON must never describe the new shard if this run is killed after
    # renaming the shard: without a JSON the file is simply redone next time.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(task.info)
    try:
        table = read_landmarks(task.parquet, open_file, task.landmark_set)
    except FileProblem as e:
        result["error"] = str(e)
        result["dropped"][FILE_ERROR] = result["csv_rows"]
        _remove_outputs(task)
        return result
    for message in table.warnings:
        _warn(result, message)
    table, run_ids, starts = group_rows(table)
    hand_frames = full_hand_frames(table, starts, task.landmark_set)
    kept = _classify_rows(task, run_ids, hand_frames, result)
    _write_shard(task, table, starts, kept, result)
    if result["kept"] + sum(result["dropped"].values()) != result["csv_rows"]:
        raise AssertionError(f"{task.parquet}: kept + dropped != CSV rows ({result})")
    result["seconds"] = round(time.perf_counter() - started, 3)
    files.atomic_write_json(task.info, {"fingerprint": task.fingerprint, "result": result}, indent=1)
    return result


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _write_manifest(out_dir: Path | str, manifest: dict[str, Any]) -> None:
    files.atomic_write_json(Path(out_dir) / records.MANIFEST_NAME, manifest, indent=1)


@dataclass(frozen=True)
class Storage:
    """How a run reads its CSVs, looks at its inputs and at an earlier run's outputs, and writes its manifest.

    The local disk by default; the Beam engine passes one that also reaches gs:// and
    other remote paths through Beam's filesystems. `read_text` raises OSError when it cannot.
    """

    stat: Callable[[str], list[int] | None] = _file_stat
    is_file: Callable[[str], bool] = os.path.isfile
    read_text: Callable[[str], str] = _read_text
    clean_temporaries: Callable[[Any], int] = files.clean_temporaries
    remove_manifest: Callable[[Any], None] = lambda out_dir: _invalidate_manifest(Path(out_dir))
    load_splits: Callable[[Any, str], dict[str, Metadata]] = lambda data_dir, split: load_splits(Path(data_dir), split)
    write_manifest: Callable[[Any, dict[str, Any]], None] = _write_manifest


def reusable_result(task: FileTask, storage: Storage | None = None) -> dict[str, Any] | None:
    """The stored result of a file finished by an earlier run with the same inputs and settings."""
    storage = storage or Storage()
    if not storage.is_file(task.shard):
        return None
    try:
        stored = json.loads(storage.read_text(task.info))
    except (OSError, ValueError):
        return None
    if stored.get("fingerprint") != json.loads(json.dumps(task.fingerprint)):
        return None
    result = stored["result"]
    if "participants" not in result:  # written before results had per-signer counts: redo the file
        return None
    result["reused"] = True
    return result


# --- the run --------------------------------------------------------------------------------

def _worker_init(threads: int) -> None:
    """Share the cores between workers instead of each using all of them."""
    pa.set_cpu_count(threads)
    pa.set_io_thread_count(threads)


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork when TensorFlow is not loaded (instant start); forkserver otherwise (forking TF's threads is unsafe)."""
    if "tensorflow" in sys.modules:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("fork")


def _failed_result(task: FileTask, message: str) -> dict[str, Any]:
    result = _empty_result(task)
    result["error"] = f"{task.parquet}: {message}"
    result["dropped"][FILE_ERROR] = result["csv_rows"]
    _remove_outputs(task)
    return result


def process_or_fail(task: FileTask, process: Callable[[FileTask], dict[str, Any]] = process_file) -> dict[str, Any]:
    """`process(task)`, with an unexpected exception (disk full, a network error) reported as the file's
    error instead of stopping the other files."""
    try:
        return process(task)
    except Exception as e:
        return _failed_result(task, f"failed ({type(e).__name__}: {e})")


def threads_per_worker(workers: int) -> int:
    """pyarrow threads for each of `workers` processes on this machine: the cores shared out."""
    return max(1, (os.cpu_count() or 1) // workers)


def _progress(total: int, enabled: bool):
    if not enabled:
        return contextlib.nullcontext(_NoBar())
    from tqdm import tqdm
    return tqdm(total=total, unit="file", desc="preprocess", file=sys.stderr)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def run_tasks(tasks: list[FileTask], workers: int, progress: bool) -> list[dict[str, Any]]:
    """Process files, largest first, in a pool of `workers` processes (in this process for 1)."""
    tasks = sorted(tasks, key=lambda t: -((_file_stat(t.parquet) or [0])[0]))
    results: list[dict[str, Any]] = []
    with _progress(len(tasks), progress) as bar:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                results.append(process_or_fail(task))  # e.g. disk full: report it, keep the others
                bar.update()
            return results
        n = min(workers, len(tasks))
        threads = threads_per_worker(n)
        with ProcessPoolExecutor(n, mp_context=_pool_context(), initializer=_worker_init,
                                 initargs=(threads,)) as pool:
            futures: dict[Future, FileTask] = {pool.submit(process_file, t): t for t in tasks}
            for future in as_completed(futures):
                task = futures[future]
                try:
                    results.append(future.result())
                except Exception as e:  # a crashed worker or a bug: report it, keep the others
                    results.append(_failed_result(task, f"worker failed ({type(e).__name__}: {e})"))
                bar.update()
    return results


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """One run per output directory: a second one would delete the first's temporaries.

    Forked workers inherit the lock, so workers of a killed run that are still
    writing here keep it until they exit.
    """
    with open(out_dir / LOCK_NAME, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PreprocessError(f"{out_dir}: another preprocess run (or workers of a killed one) "
                                  f"is writing here") from None
        yield


def _invalidate_manifest(out_dir: Path) -> None:
    """Delete OUT/manifest.json durably: shards are about to change, and a run killed
    before it writes the new manifest must not leave one describing the old shards."""
    try:
        (out_dir / records.MANIFEST_NAME).unlink()
    except FileNotFoundError:
        return
    files.fsync_directory(out_dir)


# --- how many workers -------------------------------------------------------------------------

#: A worker's peak memory in multiples of the selected columns it reads: the Arrow table,
#: the per-column arrays (copies where cast, re-sorted or in several chunks) and the
#: row-major [rows, 156] stack that records are cut from.
WORKER_MEMORY_FACTOR = 3


def worker_memory_need(num_rows: int, bytes_per_row: int, factor: float = WORKER_MEMORY_FACTOR) -> int:
    """Bytes one worker needs for a file: rows x bytes of its selected columns per row x `factor`.

    A real file (~160,000 rows; 156 float32 landmark columns + int64 id + int16 frame =
    634 bytes a row) needs about 0.3 GB; the largest (3 GB of parquet) about 1 GB.
    """
    return int(num_rows * bytes_per_row * factor)


def choose_workers(cores: int, available_bytes: int | None, largest_need: int, n_files: int) -> int:
    """min(cores, available memory // the largest file's need, number of files), at least 1.

    `available_bytes` None (unknown) or a `largest_need` of 0 puts no memory bound.
    """
    workers = min(cores, n_files)
    if available_bytes is not None and largest_need > 0:
        workers = min(workers, available_bytes // largest_need)
    return max(1, int(workers))


def _byte_width(arrow_type: pa.DataType) -> int:
    try:
        return max(1, arrow_type.bit_width // 8)
    except ValueError:  # not fixed-width; a column check will reject it anyway
        return 8


def file_memory_need(path: str, open_file: Opener | None = None, landmarks: LandmarkSet | None = None) -> int:
    """`worker_memory_need` of a parquet file, from its footer only (0 if unreadable: its
    worker reports the problem). `open_file`: how to open a remote file (see `read_landmarks`)."""
    try:
        with open_file(path) if open_file else contextlib.nullcontext(path) as source:
            pf = pq.ParquetFile(source)
            schema = pf.schema_arrow
            num_rows = pf.metadata.num_rows
        names = set(schema.names)
        width = sum(_byte_width(schema.field(c).type)
                    for c in (INDEX_COLUMN, FRAME_COLUMN, *(landmarks or landmark_set(DEFAULT_LANDMARKS)).columns)
                    if c in names)
        return worker_memory_need(num_rows, width)
    except (pa.ArrowException, OSError, KeyError):
        return 0


def default_workers(parquets: Sequence[str], open_file: Opener | None = None,
                    landmarks: LandmarkSet | None = None) -> int:
    """Workers for these files when --workers is not given: bounded by cores, memory and files."""
    cores, available = machine.cpu_cores(), machine.available_memory()
    largest = max((file_memory_need(p, open_file, landmarks) for p in parquets), default=0)
    workers = choose_workers(cores, available, largest, len(parquets))
    if workers < min(cores, len(parquets)):
        _log.warning("using %d worker(s) instead of %d: %.1f GB of memory available, and a worker "
                     "needs about %.1f GB for the largest file (set --workers to override)",
                     workers, min(cores, len(parquets)), available / 1e9, largest / 1e9)
    return workers


def _summarize(results: list[dict[str, Any]], config: PreprocessConfig, csv_rows: dict[str, int],
               workers: int | None, cleaned: int, seconds: float, engine: str = "local") -> dict[str, Any]:
    results = sorted(results, key=lambda r: (r["split"], r["file_id"]))
    dropped = {reason: sum(r["dropped"][reason] for r in results) for reason in DROP_REASONS}
    kept = sum(r["kept"] for r in results)
    total_rows = sum(csv_rows.values())
    if kept + sum(dropped.values()) != total_rows:
        raise AssertionError(f"kept {kept} + dropped {dropped} != {total_rows} CSV rows")
    splits = {}
    for split, n_rows in csv_rows.items():
        rs = [r for r in results if r["split"] == split]
        splits[split] = {"csv_rows": n_rows, "kept": sum(r["kept"] for r in rs),
                         "dropped": {k: sum(r["dropped"][k] for r in rs) for k in DROP_REASONS},
                         "files": len(rs)}
    participants: Counter = Counter()
    participant_frames: Counter = Counter()
    for r in results:
        for pid, counts in r["participants"].items():
            participants[pid] += counts["sequences"]
            participant_frames[pid] += counts["frames"]
    return {
        "format": {"name": records.FORMAT_NAME, "version": records.FORMAT_VERSION,
                   "n_columns": landmark_set(config.landmarks).n_columns},
        "csv_rows": total_rows,
        "kept": kept,
        "frames_kept": sum(r["frames_kept"] for r in results),
        "longest_phrase": max((r["longest_phrase"] for r in results if r["longest_phrase"]),
                              key=lambda longest: longest["characters"], default=None),
        "participants": {pid: {"sequences": participants[pid], "frames": participant_frames[pid]}
                         for pid in sorted(participants, key=int)},
        "dropped": dropped,
        "errors": [{"file": r["parquet"], "message": r["error"]} for r in results if r["error"]],
        "splits": splits,
        "files": results,
        "landmarks": config.landmarks,
        "selected_columns": list(landmark_set(config.landmarks).columns),
        "settings": {"data_dir": str(config.data_dir) if is_url(config.data_dir) else str(Path(config.data_dir).resolve()),
                     "split": config.split, "min_hand_frames_factor": config.min_hand_frames_factor,
                     "workers": workers, "overwrite": config.overwrite, "engine": engine},
        "run": {"seconds": round(seconds, 3), "files_reused": sum(r["reused"] for r in results),
                "stale_temporaries_removed": cleaned},
    }


def preprocess(config: PreprocessConfig) -> dict[str, Any]:
    """Run the whole preprocessing and return the manifest (also written to OUT/manifest.json).

    Raises PreprocessError for problems that stop everything (bad CSV, bad
    arguments); per-file problems are reported in `manifest["errors"]`.
    """
    if remote := [str(p) for p in (config.data_dir, config.out_dir) if is_url(p)]:
        raise PreprocessError(f"{remote[0]}: remote paths need the Beam engine (--engine beam)")

    def run_files(todo: list[FileTask]) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
        workers = (config.workers if config.workers is not None
                   else default_workers([t.parquet for t in todo], landmarks=landmark_set(config.landmarks)))
        return run_tasks(todo, workers, config.progress), workers, {}

    return run(config, run_files)


#: An engine's part of a run: (results of the files to do, worker processes recorded, extra `run` entries).
RunFiles = Callable[[list[FileTask]], tuple[list[dict[str, Any]], "int | None", dict[str, Any]]]


def location(path: str | os.PathLike) -> str:
    """A URL as text without a trailing slash; a local path made absolute."""
    return str(path).rstrip("/") if is_url(path) else str(Path(path).absolute())


def run(config: PreprocessConfig, run_files: RunFiles, storage: Storage | None = None,
        engine: str = "local") -> dict[str, Any]:
    """What every engine does around its conversion of the files: checks, CSVs, the lock (local OUT),
    what an earlier run finished, the manifest (written to OUT and returned)."""
    storage = storage or Storage()
    started = time.perf_counter()
    data_dir, out_dir = location(config.data_dir), location(config.out_dir)
    if not is_url(data_dir) and not Path(data_dir).is_dir():
        raise PreprocessError(f"--data-dir {data_dir} is not a directory")
    resolved = (lambda p: p if is_url(p) else str(Path(p).resolve()))
    check_settings(config, resolved(data_dir), resolved(out_dir))
    metadata = storage.load_splits(data_dir, config.split)
    out: Path | str = out_dir if is_url(out_dir) else Path(out_dir)
    if isinstance(out, Path):
        out.mkdir(parents=True, exist_ok=True)
    with _locked(out) if isinstance(out, Path) else contextlib.nullcontext():
        cleaned, reused, todo = start_run(out, metadata, config, storage)
        results, workers, run_info = run_files(todo)
        manifest = _summarize(reused + results, dataclasses.replace(config, data_dir=data_dir),
                              {s: len(m) for s, m in metadata.items()}, workers, cleaned,
                              time.perf_counter() - started, engine)
        manifest["run"].update(run_info)
        storage.write_manifest(out, manifest)
    return manifest


def check_settings(config: PreprocessConfig, data_dir: str, out_dir: str) -> None:
    """The checks both engines make before any work (`data_dir`, `out_dir` resolved)."""
    if out_dir.rstrip("/") == data_dir.rstrip("/"):
        raise PreprocessError("--out must not be the data directory (its files must stay untouched)")
    if not config.min_hand_frames_factor >= 0:
        raise PreprocessError(f"--min-hand-frames-factor must be >= 0, got {config.min_hand_frames_factor}")
    if config.workers is not None and config.workers < 1:
        raise PreprocessError(f"--workers must be >= 1, got {config.workers}")
    try:
        landmark_set(config.landmarks)
    except ValueError as e:
        raise PreprocessError(f"--landmarks: {e}") from None


def load_splits(data_dir: Path, split: str) -> dict[str, Metadata]:
    """The metadata CSV of each split `--split` stands for; a bad one stops the run."""
    try:
        return {s: load_metadata(data_dir, s) for s in splits_of(split)}
    except MetadataError as e:
        raise PreprocessError(str(e)) from None


def start_run(out_dir: Path | str, metadata: dict[str, Metadata], config: PreprocessConfig,
              storage: Storage | None = None) -> tuple[int, list[dict[str, Any]], list[FileTask]]:
    """Under the lock, before any work: (stale temporaries removed, reused results, tasks to do).

    Deletes what killed runs left half-written anywhere under OUT, and the old manifest
    when this run will replace shards (always with `overwrite`).
    """
    storage = storage or Storage()
    cleaned = storage.clean_temporaries(out_dir)
    tasks = [t for split, meta in metadata.items()
             for t in make_tasks(meta, split, out_dir, config.min_hand_frames_factor, storage.stat, config.landmarks)]
    reused, todo = [], []
    for task in tasks:
        previous = None if config.overwrite else reusable_result(task, storage)
        (reused if previous else todo).append(previous or task)
    if todo or config.overwrite:
        storage.remove_manifest(out_dir)
    return cleaned, reused, todo


def report(manifest: dict[str, Any], out_dir: Path | str, stream=sys.stderr) -> None:
    """Print warnings (capped per file), errors and the totals."""
    for r in manifest["files"]:
        for message in r["warnings"][:MAX_PRINTED_WARNINGS]:
            print(f"warning: {message}", file=stream)
        if r["n_warnings"] > MAX_PRINTED_WARNINGS:
            print(f"warning: ... and {r['n_warnings'] - MAX_PRINTED_WARNINGS} more for {r['parquet']} "
                  f"(see manifest)", file=stream)
    for e in manifest["errors"]:
        print(f"error: {e['message']}", file=stream)
    dropped = ", ".join(f"{k}={v}" for k, v in manifest["dropped"].items() if v) or "none"
    run = manifest["run"]
    print(f"kept {manifest['kept']} of {manifest['csv_rows']} sequences (dropped: {dropped}); "
          f"{len(manifest['files'])} files ({run['files_reused']} reused from an earlier run), "
          f"{len(manifest['errors'])} unreadable; {run['seconds']:.1f}s; "
          f"manifest: {str(out_dir).rstrip('/')}/{records.MANIFEST_NAME}", file=stream)
