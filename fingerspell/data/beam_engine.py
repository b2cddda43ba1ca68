"""`fingerspell preprocess --engine beam`: the local engine's per-file conversion, run as an Apache Beam pipeline.

Why it is shaped this way:

- A parquet file is the unit of work and of parallelism, as in the local engine: one
  pipeline element per file, converted by `convert.process_file` itself (never a copy of
  it), so both engines write the same bytes. Beam decides where each file runs: worker
  processes of the local FnApiRunner, or Dataflow, Flink and Spark workers.
- The launching process alone keeps the books, with the local engine's functions: it
  takes the lock (local OUT), removes stale temporaries, decides which files an earlier
  run finished (`convert.start_run`), and writes `manifest.json` with `convert._summarize`
  from the per-file results. The pipeline's last step writes those results as one JSON
  file under OUT for it to read; Beam counters are for monitoring only (a runner may
  drop them or count a retried bundle twice).
- Remote paths (gs://, s3://, hdfs://: whatever Beam's FileSystems reach): a worker copies
  the parquet file to local disk, runs `process_file` into a local staging folder, then
  uploads the shard and its JSON under temporary names and renames them, shard first, so
  a half-written shard never has the final name and a JSON never describes a shard that
  is not there. Local paths keep the local engine's atomic writes. An object store has no
  lock: one run at a time per remote OUT is the user's business.
- Remote workers need fingerspell's code but none of its dependencies (the SDK container
  has numpy, pyarrow and google-crc32c; the base install's protobuf < 5 would break
  apache-beam[gcp]). Beam's workers `pip install` a staged package with its dependencies,
  so for a remote runner the launcher stages `worker_wheel()`: the imported package in a
  wheel that declares none.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

import fingerspell
from fingerspell import files
from fingerspell.data import convert, records
from fingerspell.data.convert import FileTask, PreprocessConfig, PreprocessError, is_url
from fingerspell.data.metadata import SPLIT_SOURCES, Metadata, MetadataError, splits_of

_log = logging.getLogger(__name__)

#: Runners that run the workers on this machine; any other gets `worker_wheel()` staged.
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner",
                 "PrismRunner", "InteractiveRunner")
#: Options that already tell remote workers how to get fingerspell.
_SHIPPING_OPTIONS = ("setup_file", "extra_package", "extra_packages", "sdk_container_image",
                     "worker_harness_container_image")
_RAW = CompressionTypes.UNCOMPRESSED  # never guess a compression from a file name
_COPY_CHUNK = 8 << 20


# --- files through Beam's filesystems ----------------------------------------------------------

def _stat(path: str) -> list[int] | None:
    """[size, mtime_ns] as the local engine records it; a remote file's from its metadata."""
    if not is_url(path):
        return convert._file_stat(path)
    found = FileSystems.match([path])[0].metadata_list
    if not found:
        return None
    return [found[0].size_in_bytes, int(found[0].last_updated_in_seconds * 1e9)]


def _is_file(path: str) -> bool:
    return FileSystems.exists(path) if is_url(path) else os.path.isfile(path)


def _read_text(path: str) -> str:
    if not is_url(path):
        return convert._read_text(path)
    with FileSystems.open(path, compression_type=_RAW) as f:
        return f.read().decode("utf-8")


def _delete(paths: Sequence[str]) -> None:
    """Delete what exists of `paths` (remote or local)."""
    for path in paths:
        if is_url(path):
            if FileSystems.exists(path):
                FileSystems.delete([path])
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _temporary_name(path: str) -> str:
    """A name beside `path` that `_clean_temporaries` (and the local engine's cleanup) recognise."""
    folder, name = path.rsplit("/", 1)
    return f"{folder}/{files.TEMP_PREFIX}{name}.{uuid.uuid4().hex}"


def _upload(local: str, remote: str) -> None:
    """Copy a local file to `remote` under a temporary name, then rename it: never half a file under the final name."""
    tmp = _temporary_name(remote)
    try:
        with open(local, "rb") as src, FileSystems.create(tmp, compression_type=_RAW) as dst:
            shutil.copyfileobj(src, dst, _COPY_CHUNK)
        _delete([remote])  # some filesystems (HDFS) refuse to rename over a file
        FileSystems.rename([tmp], [remote])
    except BaseException:
        with contextlib.suppress(Exception):
            _delete([tmp])
        raise


def _download(remote: str, local: str) -> None:
    with FileSystems.open(remote, compression_type=_RAW) as src, open(local, "wb") as dst:
        shutil.copyfileobj(src, dst, _COPY_CHUNK)


def write_bytes(path: str, data: bytes) -> None:
    """`path` written whole or not at all: the local engine's atomic write, or upload + rename."""
    if not is_url(path):
        files.atomic_write(path, data)
        return
    with tempfile.TemporaryDirectory(prefix="fingerspell-") as tmp:
        local = os.path.join(tmp, "data")
        Path(local).write_bytes(data)
        _upload(local, path)


def _clean_temporaries(out_dir: str | Path) -> int:
    if not is_url(out_dir):
        return files.clean_temporaries(out_dir)
    patterns = [f"{out_dir}/{files.TEMP_PREFIX}*", f"{out_dir}/*/{files.TEMP_PREFIX}*"]
    stale = [m.path for found in FileSystems.match(patterns) for m in found.metadata_list]
    if stale:
        FileSystems.delete(stale)
    return len(stale)


def _remove_manifest(out_dir: str | Path) -> None:
    if is_url(out_dir):
        _delete([f"{out_dir}/{records.MANIFEST_NAME}"])
    else:
        convert._invalidate_manifest(Path(out_dir))


#: What `convert.start_run` uses to look at inputs and earlier outputs, local or remote.
STORAGE = convert.Storage(stat=_stat, is_file=_is_file, read_text=_read_text,
                          clean_temporaries=_clean_temporaries, remove_manifest=_remove_manifest)


# --- one file, on a worker ----------------------------------------------------------------------

def _staged(task: FileTask, tmp: Path) -> FileTask:
    """The task with a remote input copied to `tmp` and remote outputs written under `tmp` first."""
    staged = dataclasses.replace(task)
    if is_url(task.parquet):
        staged.source = str(tmp / "input.parquet")
        if FileSystems.exists(task.parquet):  # a missing file stays missing: process_file reports it
            _download(task.parquet, staged.source)
    if is_url(task.out_dir):
        staged.out_dir = str(tmp / "out")
        staged.shard = os.path.join(staged.out_dir, task.split, task.shard.rsplit("/", 1)[1])
        staged.info = os.path.join(staged.out_dir, task.split, task.info.rsplit("/", 1)[1])
    return staged


def _publish(task: FileTask, staged: FileTask, result: dict[str, Any]) -> None:
    """Move a staged file's outputs to remote OUT: the old JSON goes first, the new one comes last."""
    _delete([task.info])
    if result["error"]:
        _delete([task.shard])  # a file that now fails must not leave an older shard behind
        return
    _upload(staged.shard, task.shard)
    _upload(staged.info, task.info)


def convert_file(task: FileTask) -> dict[str, Any]:
    """One file, by the local engine's `process_file`; remote inputs and outputs pass through local disk."""
    try:
        if not (is_url(task.parquet) or is_url(task.out_dir)):
            return convert.process_file(task)
        with tempfile.TemporaryDirectory(prefix="fingerspell-") as tmp:
            staged = _staged(task, Path(tmp))
            result = convert.process_file(staged)
            if is_url(task.out_dir):
                _publish(task, staged, result)
            return result
    except Exception as e:  # e.g. disk full or a network error: report it, keep the others
        with contextlib.suppress(Exception):
            _delete([task.info, task.shard])
        return convert._failed_result(task, f"failed ({type(e).__name__}: {e})")


class ConvertFile(beam.DoFn):
    """`convert_file` per element, with counters for the runner's monitoring UI (not for the manifest)."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads

    def setup(self) -> None:
        if self.threads:
            convert._worker_init(self.threads)

    def process(self, task: FileTask) -> Iterator[dict[str, Any]]:
        result = convert_file(task)
        metrics = beam.metrics.Metrics
        metrics.counter("fingerspell", "files").inc()
        metrics.counter("fingerspell", "kept").inc(result["kept"])
        metrics.counter("fingerspell", "file_errors").inc(int(bool(result["error"])))
        yield result


def _write_results(results: list[dict[str, Any]], path: str) -> None:
    write_bytes(path, json.dumps(results).encode())


# --- the launching process ----------------------------------------------------------------------

def _given(args: Sequence[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


def pipeline_options(beam_args: Sequence[str], workers: int) -> tuple[PipelineOptions, str, int | None]:
    """(options, runner name, local worker processes or None): the user's options, plus local defaults.

    With no `--runner`, FnApiRunner runs `workers` processes (Beam's DirectRunner would first
    try to download a runner binary, which fails or stalls offline).
    """
    args = list(beam_args)
    if not _given(args, "runner"):
        args.append("--runner=FnApiRunner")
        for name, value in (("direct_num_workers", workers), ("direct_running_mode", "multi_processing")):
            if not _given(args, name):
                args.append(f"--{name}={value}")
    options = PipelineOptions(args)
    runner = str(options.view_as(StandardOptions).runner)
    runner = runner.rsplit(".", 1)[-1]
    local = runner in LOCAL_RUNNERS
    n = options.get_all_options().get("direct_num_workers") if local else None
    return options, runner, n


def worker_wheel(dest: Path) -> Path:
    """A wheel of the imported fingerspell package that declares no dependencies, for remote workers.

    Beam's worker boot installs a staged package twice, the second time resolving its
    dependencies; the real wheel's (ai-edge-litert, protobuf < 5, ...) would replace the SDK
    container's packages. This one only adds the code, exactly as this process runs it.
    """
    package = Path(fingerspell.__file__).parent
    version = fingerspell.__version__
    info = f"fingerspell-{version}.dist-info"
    entries: dict[str, bytes] = {}
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".json"):
            entries[f"fingerspell/{path.relative_to(package).as_posix()}"] = path.read_bytes()
    entries[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: fingerspell\nVersion: {version}\n"
                                   "Summary: fingerspell's code for Beam workers (no dependencies declared)\n").encode()
    entries[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: fingerspell\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in entries.items()]
    entries[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"fingerspell-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return wheel


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _ship_code(options: PipelineOptions, runner: str, beam_args: Sequence[str], tmp: Path) -> None:
    """Stage `worker_wheel()` for a remote runner unless the user's options already ship the code."""
    if runner in LOCAL_RUNNERS or any(_given(beam_args, name) for name in _SHIPPING_OPTIONS):
        return
    wheel = worker_wheel(tmp)
    options.view_as(SetupOptions).extra_packages = [str(wheel)]
    _log.info("staging fingerspell's code for the %s workers as %s (no dependencies declared)", runner, wheel.name)


def load_splits(data_dir: str, split: str) -> dict[str, Metadata]:
    """The metadata CSVs, read from a local folder or (a local copy of) a remote one; parquet paths stay remote."""
    if not is_url(data_dir):
        return convert.load_splits(Path(data_dir), split)
    with tempfile.TemporaryDirectory(prefix="fingerspell-") as tmp:
        with contextlib.suppress(MetadataError):  # a bad --split is reported by load_splits below
            for name in {SPLIT_SOURCES[s][0] for s in splits_of(split)}:
                if FileSystems.exists(f"{data_dir}/{name}"):
                    _download(f"{data_dir}/{name}", os.path.join(tmp, name))
        try:
            metadata = convert.load_splits(Path(tmp), split)
        except PreprocessError as e:  # name the remote CSV, not the local copy
            raise PreprocessError(str(e).replace(tmp, data_dir)) from None
        for meta in metadata.values():
            meta.csv_path = meta.csv_path.replace(tmp, data_dir, 1)
            meta.parquets = [f"{data_dir}/{os.path.relpath(p, tmp)}" for p in meta.parquets]
    return metadata


def _location(path: str | os.PathLike) -> str:
    return str(path).rstrip("/") if is_url(path) else str(Path(path).absolute())


#: The local runner re-logs its workers' log lines here (their warnings are about Beam's own setup).
_WORKER_LINES = logging.getLogger("apache_beam.runners.portability.local_job_service")


@contextlib.contextmanager
def _quiet_workers(log: Path) -> Iterator[None]:
    """Worker processes started in this block write their stderr (Beam logs each one's start at INFO) to `log`.

    They inherit file descriptor 2, so it points at `log` meanwhile; this process's own
    Python-level stderr keeps the terminal, and the workers' re-logged lines show from ERROR
    up. On an error the log's tail is printed.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = sys.stderr
    level = _WORKER_LINES.level
    _WORKER_LINES.setLevel(logging.ERROR)
    try:
        with open(log, "wb") as sink:
            os.dup2(sink.fileno(), 2)
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1)
        yield
    except BaseException:
        tail = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
        print("\n".join(["Beam worker output (last lines):", *tail]), file=sys.stderr)
        raise
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = terminal
        _WORKER_LINES.setLevel(level)


def _run_pipeline(todo: list[FileTask], options: PipelineOptions, results_path: str,
                  threads: int | None, workers_log: Path | None) -> list[dict[str, Any]]:
    """Run the files through Beam and return their results, read back from `results_path`."""
    with _quiet_workers(workers_log) if workers_log else contextlib.nullcontext():
        with beam.Pipeline(options=options) as p:
            _ = (p
                 | "Files" >> beam.Create(todo)
                 | "Convert" >> beam.ParDo(ConvertFile(threads))
                 | "Collect" >> beam.combiners.ToList()
                 | "WriteResults" >> beam.Map(_write_results, results_path))
    try:
        results = json.loads(_read_text(results_path))
    except (OSError, ValueError) as e:
        raise PreprocessError(f"the Beam pipeline finished without its results at {results_path} ({e})") from None
    _delete([results_path])
    if len(results) != len(todo):  # a runner that retried a step must not double-count a file
        raise PreprocessError(f"the Beam pipeline returned {len(results)} results for {len(todo)} files")
    return results


def preprocess_beam(config: PreprocessConfig, beam_args: Sequence[str] = (), quiet_workers: bool = True) -> dict[str, Any]:
    """Like `convert.preprocess`, with the files converted by a Beam pipeline; returns the manifest.

    `quiet_workers`: local worker processes' stderr goes to a file, shown only on failure.
    """
    started = time.perf_counter()
    data_dir, out_dir = _location(config.data_dir), _location(config.out_dir)
    if not is_url(data_dir) and not Path(data_dir).is_dir():
        raise PreprocessError(f"--data-dir {data_dir} is not a directory")
    resolved = (lambda p: p if is_url(p) else str(Path(p).resolve()))
    convert.check_settings(config, resolved(data_dir), resolved(out_dir))
    metadata = load_splits(data_dir, config.split)
    local_out = not is_url(out_dir)
    if local_out:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    with convert._locked(Path(out_dir)) if local_out else contextlib.nullcontext():
        cleaned, reused, todo = convert.start_run(Path(out_dir) if local_out else out_dir, metadata, config, STORAGE)
        local_workers = config.workers or convert.default_workers([t.parquet for t in todo])
        options, runner, workers = pipeline_options(beam_args, local_workers)
        if config.workers and runner not in LOCAL_RUNNERS:
            _log.warning("--workers applies to local runs; %s sizes its workers from its own options", runner)
        _log.info("preprocess (Beam, %s%s): %d file(s) to convert, %d finished by an earlier run",
                  runner, f", {workers} worker processes" if workers else "", len(todo), len(reused))
        results = []
        if todo:
            with tempfile.TemporaryDirectory(prefix="fingerspell-beam-") as tmp:
                _ship_code(options, runner, beam_args, Path(tmp))
                results_path = _temporary_name(f"{out_dir}/beam-results.json")
                threads = max(1, (os.cpu_count() or 1) // workers) if workers else None
                log = Path(tmp) / "workers.log" if quiet_workers and runner in LOCAL_RUNNERS else None
                results = _run_pipeline(todo, options, results_path, threads, log)
        config = dataclasses.replace(config, data_dir=data_dir)
        manifest = convert._summarize(reused + results, config, {s: len(m) for s, m in metadata.items()},
                                      workers, cleaned, time.perf_counter() - started, engine="beam")
        manifest["run"]["runner"] = runner
        write_bytes(f"{out_dir}/{records.MANIFEST_NAME}", (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest
