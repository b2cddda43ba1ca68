"""`fingerspell preprocess --engine beam`: the local engine's per-file conversion, run as an Apache Beam pipeline.

Why it is shaped this way:

- A parquet file is the unit of work and of parallelism, as in the local engine: one
  pipeline element per file, converted by `convert.process_file` itself (never a copy of
  it), so both engines write the same bytes. Beam decides where each file runs: worker
  processes of the local FnApiRunner, or Dataflow, Flink and Spark workers.
- The launching process alone keeps the books, through `convert.run` as the local engine
  does: it takes the lock (local OUT), removes stale temporaries, decides which files an
  earlier run finished, and writes `manifest.json` from the per-file results. The
  pipeline's last step writes those results as one JSON file under OUT for it to read,
  checked against the files it sent (a file without a result counts as failed); Beam
  counters are for monitoring only (a runner may drop them or count a retried bundle twice).
- Remote paths (gs://, s3://, hdfs://: whatever Beam's FileSystems reach): a worker reads
  the parquet file through `FileSystems.open` (pyarrow fetches the footer and the selected
  columns' byte ranges, not the whole file), runs `process_file` into a local staging
  folder, then uploads the shard and its JSON under temporary names and renames them,
  shard first, so a half-written shard never has the final name and a JSON never describes
  a shard that is not there. Local paths keep the local engine's atomic writes. An object
  store has no lock: one run at a time per remote OUT is the user's business. A runner
  whose workers run elsewhere (Dataflow, Flink, Spark) is refused local paths before
  anything is touched.
- Remote workers need fingerspell's code but none of its dependencies (the SDK container
  has numpy, pyarrow and google-crc32c; the base install's protobuf < 5 would break
  apache-beam[gcp]). Beam's workers `pip install` a staged package with its dependencies,
  so for a remote runner the launcher stages `worker_wheel()`: the imported package in a
  wheel that declares none. What the launcher pickles for them holds no numpy object (the
  tasks' id arrays travel as lists), so its numpy version need not match the container's.
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
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
)
from apache_beam.runners.runner import PipelineState

import fingerspell
from fingerspell import files
from fingerspell.data import convert, records
from fingerspell.data.convert import FileTask, PreprocessConfig, PreprocessError, is_url
from fingerspell.data.metadata import SPLIT_SOURCES, Metadata, MetadataError, splits_of

_log = logging.getLogger(__name__)

#: Runners that run the workers on this machine; any other gets `worker_wheel()` staged and remote paths only.
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner",
                 "PrismRunner", "InteractiveRunner", "TestDirectRunner")
#: Local runners that run (or fall back to) FnApiRunner, whose worker processes `--workers` sets.
FN_API_RUNNERS = ("FnApiRunner", "DirectRunner", "SwitchingDirectRunner")
DEFAULT_RUNNER = "FnApiRunner"
#: Options that already tell remote workers how to get fingerspell.
_SHIPPING_OPTIONS = ("setup_file", "extra_package", "extra_packages", "sdk_container_image",
                     "worker_harness_container_image")
_RAW = CompressionTypes.UNCOMPRESSED  # never guess a compression from a file name
_COPY_CHUNK = 8 << 20
RERUN_HINT = "finished files are kept; re-run the same command to continue"


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
    """The file's text; OSError when it cannot be read, whatever the filesystem raised (GCS: NotFound, Forbidden)."""
    if not is_url(path):
        return convert._read_text(path)
    try:
        with FileSystems.open(path, compression_type=_RAW) as f:
            return f.read().decode("utf-8")
    except OSError:
        raise
    except Exception as e:
        raise OSError(f"{path}: {type(e).__name__}: {e}") from e


def _open_input(path: str) -> BinaryIO:
    """A remote parquet file as a seekable stream, for pyarrow's column-projected read; FileNotFoundError if missing."""
    if not FileSystems.exists(path):
        raise FileNotFoundError(path)
    return FileSystems.open(path, compression_type=_RAW)


def _delete(paths: Sequence[str]) -> None:
    """Delete what exists of `paths` (remote or local); one that is already gone (a concurrent attempt) is fine."""
    for path in paths:
        if not is_url(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        try:
            FileSystems.delete([path])
        except BeamIOError:
            if FileSystems.exists(path):
                raise


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
    _delete(stale)
    return len(stale)


def _remove_manifest(out_dir: str | Path) -> None:
    if is_url(out_dir):
        _delete([f"{out_dir}/{records.MANIFEST_NAME}"])
    else:
        convert._invalidate_manifest(Path(out_dir))


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


def _write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> None:
    write_bytes(f"{out_dir}/{records.MANIFEST_NAME}", (json.dumps(manifest, indent=1) + "\n").encode())


#: How `convert.run` reads the CSVs, looks at inputs and earlier outputs and writes the manifest, local or remote.
STORAGE = convert.Storage(stat=_stat, is_file=_is_file, read_text=_read_text, clean_temporaries=_clean_temporaries,
                          remove_manifest=_remove_manifest, load_splits=load_splits, write_manifest=_write_manifest)


# --- one file, on a worker ----------------------------------------------------------------------

def _portable(task: FileTask) -> FileTask:
    """The task as the launcher ships it: the id arrays as lists, so no numpy pickle (which a worker's
    older numpy may not load) travels to the workers."""
    return dataclasses.replace(task, sequence_ids=task.sequence_ids.tolist(),
                               participant_ids=task.participant_ids.tolist())


def _restored(task: FileTask) -> FileTask:
    """`_portable`'s inverse, on the worker."""
    if isinstance(task.sequence_ids, np.ndarray):
        return task
    return dataclasses.replace(task, sequence_ids=np.asarray(task.sequence_ids, dtype=np.int64),
                               participant_ids=np.asarray(task.participant_ids, dtype=np.int64))


def _staged(task: FileTask, tmp: Path) -> FileTask:
    """The task with its remote outputs written under `tmp` first."""
    out_dir = str(tmp / "out")
    return dataclasses.replace(
        task, out_dir=out_dir,
        shard=os.path.join(out_dir, task.split, task.shard.rsplit("/", 1)[1]),
        info=os.path.join(out_dir, task.split, task.info.rsplit("/", 1)[1]))


def _publish(task: FileTask, staged: FileTask, result: dict[str, Any]) -> None:
    """Move a staged file's outputs to remote OUT: the old JSON goes first, the new one comes last."""
    _delete([task.info])
    if result["error"]:
        _delete([task.shard])  # a file that now fails must not leave an older shard behind
        return
    _upload(staged.shard, task.shard)
    _upload(staged.info, task.info)


def _convert_remote(task: FileTask) -> dict[str, Any]:
    """`process_file` with a remote input read through Beam's filesystems and remote outputs staged on local disk."""
    open_file = _open_input if is_url(task.parquet) else None
    if not is_url(task.out_dir):
        return convert.process_file(task, open_file)
    try:
        with tempfile.TemporaryDirectory(prefix="fingerspell-") as tmp:
            staged = _staged(task, Path(tmp))
            result = convert.process_file(staged, open_file)
            _publish(task, staged, result)
            return result
    except BaseException:  # the file is reported failed: leave none of its outputs
        with contextlib.suppress(Exception):
            _delete([task.info, task.shard])
        raise


def convert_file(task: FileTask) -> dict[str, Any]:
    """One file, by the local engine's `process_file`; an unexpected error (disk full, network) is the file's error."""
    task = _restored(task)
    if not (is_url(task.parquet) or is_url(task.out_dir)):
        return convert.process_or_fail(task)
    return convert.process_or_fail(task, _convert_remote)


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


def reconcile(todo: Sequence[FileTask], results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per file sent, in `todo` order: a duplicate (a retried attempt whose output a runner
    kept) counts once, a file without a result counts as failed and loses its outputs."""
    by_file = {(r["split"], r["file_id"]): r for r in results}
    reconciled = []
    for task in todo:
        result = by_file.get((task.split, task.file_id))
        if result is None:
            _log.warning("%s: the Beam pipeline returned no result for this file; counted as failed", task.parquet)
            with contextlib.suppress(Exception):
                _delete([task.info, task.shard])
            result = convert._failed_result(task, "no result from the Beam pipeline (re-run to convert it)")
        reconciled.append(result)
    return reconciled


# --- the launching process ----------------------------------------------------------------------

def _given(args: Sequence[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


def runner_name(beam_args: Sequence[str]) -> str:
    """The runner the options name, as Beam resolves it (`direct` -> DirectRunner, `dataflow` -> DataflowRunner,
    a dotted class path -> its class name); FnApiRunner when none is named."""
    runner = PipelineOptions(list(beam_args)).view_as(StandardOptions).runner
    if runner is None:
        return DEFAULT_RUNNER
    if not isinstance(runner, str):
        return type(runner).__name__
    known = {path.rsplit(".", 1)[-1].lower(): path.rsplit(".", 1)[-1] for path in StandardOptions.ALL_KNOWN_RUNNERS}
    name = runner.lower()
    return known.get(name, known.get(f"{name}runner", runner.rsplit(".", 1)[-1]))


def pipeline_options(beam_args: Sequence[str], workers: int | None) -> tuple[PipelineOptions, str, int | None]:
    """(options, runner name, local worker processes or None): the user's options, plus local defaults.

    With no `--runner`, FnApiRunner (Beam's DirectRunner would first try to download a runner
    binary, which fails or stalls offline). A runner that runs FnApiRunner gets `workers`
    processes unless the options say otherwise.
    """
    args = list(beam_args)
    runner = runner_name(args)
    if not _given(args, "runner"):
        args.append(f"--runner={DEFAULT_RUNNER}")
    if runner in FN_API_RUNNERS and workers:
        for name, value in (("direct_num_workers", workers), ("direct_running_mode", "multi_processing")):
            if not _given(args, name):
                args.append(f"--{name}={value}")
    options = PipelineOptions(args)
    n = None
    if runner in FN_API_RUNNERS:
        n = options.get_all_options().get("direct_num_workers") or os.cpu_count() or 1  # 0: Beam uses the cores
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
        if tail:
            print("\n".join(["Beam worker output (last lines):", *tail]), file=sys.stderr)
        raise
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = terminal
        _WORKER_LINES.setLevel(level)


def _job_id(result: Any) -> str | None:
    job_id = getattr(result, "job_id", None)
    try:
        return str(job_id()) if callable(job_id) else None
    except Exception:  # a runner without job ids
        return None


def _cancel_command(runner: str, job: str, options: PipelineOptions) -> str:
    if runner == "DataflowRunner":
        cloud = options.view_as(GoogleCloudOptions)
        return f"gcloud dataflow jobs cancel {job} --region={cloud.region} --project={cloud.project}"
    return f"cancel job {job} in the {runner}'s own tools"


def _announce(result: Any, runner: str, options: PipelineOptions) -> None:
    """Name a submitted job (Beam's own INFO lines are hidden), with its console for Dataflow."""
    job = _job_id(result)
    if not job:
        return
    _log.info("%s job %s submitted; Ctrl-C cancels it", runner, job)
    if runner == "DataflowRunner":
        cloud = options.view_as(GoogleCloudOptions)
        _log.info("monitor it at https://console.cloud.google.com/dataflow/jobs/%s/%s?project=%s",
                  cloud.region, job, cloud.project)


def wait_for(result: Any, runner: str, options: PipelineOptions) -> None:
    """Wait for a submitted pipeline; on Ctrl-C cancel its job (or say how to), then let the interrupt through."""
    try:
        state = result.wait_until_finish()
    except KeyboardInterrupt:
        job = _job_id(result) or "?"
        try:
            result.cancel()
            _log.warning("interrupted: cancelled %s job %s (%s)", runner, job, RERUN_HINT)
        except Exception as e:
            _log.warning("interrupted, but the %s job %s could not be cancelled (%s: %s); it may still be "
                         "writing to --out: %s", runner, job, type(e).__name__, e,
                         _cancel_command(runner, job, options))
        raise
    if state is not None and state != PipelineState.DONE:
        raise RuntimeError(f"the pipeline ended in state {state}")


def _brief(e: BaseException, limit: int = 600) -> str:
    """`Type: message`, without the worker tracebacks some runners pack into the message."""
    text = f"{type(e).__name__}: {e}".strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def _run_pipeline(todo: list[FileTask], options: PipelineOptions, runner: str, results_path: str,
                  threads: int | None, workers_log: Path | None) -> list[dict[str, Any]]:
    """Run the files through Beam and return their results, read back from `results_path`."""
    try:
        with _quiet_workers(workers_log) if workers_log else contextlib.nullcontext():
            p = beam.Pipeline(options=options)
            _ = (p
                 | "Files" >> beam.Create([_portable(t) for t in todo])
                 | "Convert" >> beam.ParDo(ConvertFile(threads))
                 | "Collect" >> beam.combiners.ToList()
                 | "WriteResults" >> beam.Map(_write_results, results_path))
            result = p.run()  # a local runner returns when done; a remote one once the job is submitted
            _announce(result, runner, options)
            wait_for(result, runner, options)
    except Exception as e:  # a crashed worker, a failed job, a lost connection
        _log.debug("the Beam pipeline failed", exc_info=True)
        raise PreprocessError(f"Beam pipeline failed ({_brief(e)}): {RERUN_HINT} (-v shows more)") from None
    try:
        results = json.loads(_read_text(results_path))
    except (OSError, ValueError) as e:
        raise PreprocessError(f"the Beam pipeline finished without its results at {results_path} ({e})") from None
    with contextlib.suppress(Exception):
        _delete([results_path])
    return results


def _refuse_local_paths(runner: str, config: PreprocessConfig) -> None:
    """A runner whose workers run elsewhere cannot reach this machine's disk: refuse before anything is touched."""
    if runner in LOCAL_RUNNERS:
        return
    for flag, path in (("--data-dir", config.data_dir), ("--out", config.out_dir)):
        if not is_url(path):
            raise PreprocessError(f"{flag} {path} is a local path, but {runner} runs its workers on other machines: "
                                  f"give paths they reach (gs://, s3://, hdfs://), or use a local runner")


def preprocess_beam(config: PreprocessConfig, beam_args: Sequence[str] = (), quiet_workers: bool = True) -> dict[str, Any]:
    """Like `convert.preprocess`, with the files converted by a Beam pipeline; returns the manifest.

    `quiet_workers`: local worker processes' stderr goes to a file, shown only on failure.
    Everything that stops the run (a failed pipeline, an unreachable bucket) is a PreprocessError.
    """
    runner = runner_name(beam_args)
    local = runner in LOCAL_RUNNERS
    _refuse_local_paths(runner, config)
    if config.workers and runner not in FN_API_RUNNERS:
        _log.warning("--workers sets FnApiRunner's worker processes; %s sizes its workers from its own options", runner)
    remote_inputs = is_url(config.data_dir)

    def run_files(todo: list[FileTask]) -> tuple[list[dict[str, Any]], int | None, dict[str, Any]]:
        workers = None
        if runner in FN_API_RUNNERS:
            workers = config.workers or convert.default_workers(
                [t.parquet for t in todo], _open_input if remote_inputs else None,
                convert.landmark_set(config.landmarks))
        options, _, workers = pipeline_options(beam_args, workers)
        _log.info("preprocess (Beam, %s%s): %d file(s) to convert", runner,
                  f", {workers} worker processes" if workers else "", len(todo))
        results: list[dict[str, Any]] = []
        if todo:
            with tempfile.TemporaryDirectory(prefix="fingerspell-beam-") as tmp:
                _ship_code(options, runner, beam_args, Path(tmp))
                results_path = _temporary_name(f"{convert.location(config.out_dir)}/beam-results.json")
                # Local: the cores shared out. Remote: Dataflow runs one SDK process per vCPU, so one pyarrow
                # thread each (pyarrow's default, all vCPUs in every process, oversubscribes them).
                threads = convert.threads_per_worker(workers) if workers else (None if local else 1)
                log = Path(tmp) / "workers.log" if quiet_workers and local else None
                results = reconcile(todo, _run_pipeline(todo, options, runner, results_path, threads, log))
        return results, workers, {"runner": runner}

    try:
        return convert.run(config, run_files, STORAGE, engine="beam")
    except PreprocessError:
        raise
    except Exception as e:  # remote storage: BeamIOError, Forbidden, a lost connection
        _log.debug("preprocess stopped", exc_info=True)
        raise PreprocessError(f"preprocess stopped ({_brief(e)}): {RERUN_HINT} (-v shows more)") from None
