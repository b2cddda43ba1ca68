"""`preprocess --engine beam`: the same shards and manifest as the local engine, re-runs, remote paths, light imports.

The manifests of the two engines may differ only where the run itself differs:
`settings.engine` (which engine), `settings.workers` (the Beam engine records its local
worker processes, None on a remote runner), `run.runner` (Beam only), `run.seconds` and each
file's `seconds` (timings). Everything else (counts, drop reasons, errors by file, warnings,
per-participant counts, shard paths) must be equal.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import SeqSpec, tree_digest, write_kaggle_dataset
from fingerspell.data import records
from fingerspell.data.convert import PreprocessConfig, PreprocessError, preprocess

beam_engine = pytest.importorskip("fingerspell.data.beam_engine")

REPO = Path(__file__).resolve().parent.parent
IN_PROCESS = ["--runner=FnApiRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]

# Good files, a file with a sequence missing from it and a phrase with unknown characters,
# and bad files: missing, corrupt, truncated.
FILES = {
    401: [SeqSpec(1, "abc", left_full=7), SeqSpec(2, "abc", left_full=6, right_full=5),
          SeqSpec(3, "Hello", left_full=20), SeqSpec(4, "ab", in_parquet=False),
          SeqSpec(5, "x", left_full=5, in_csv=False), SeqSpec(6, "nan", left_full=7, participant_id=3)],
    402: [SeqSpec(11, "hi", left_full=5, participant_id=2), SeqSpec(12, "a", left_full=3, n_frames=7)],
    403: [SeqSpec(21, "ab", left_full=9)],  # removed: missing file
    404: [SeqSpec(31, "ab", left_full=9), SeqSpec(32, "ab", left_full=9)],  # garbage bytes
    405: [SeqSpec(41, "ab", left_full=9)],  # truncated
}
BAD = {403: "parquet file not found", 404: "cannot read parquet file", 405: "cannot read parquet file"}


def write_data(root: Path) -> None:
    write_kaggle_dataset(root, FILES, raw={402: {"shuffle_rows": True}})
    landmarks = root / "train_landmarks"
    (landmarks / "403.parquet").unlink()
    (landmarks / "404.parquet").write_bytes(b"not a parquet file" * 50)
    data = (landmarks / "405.parquet").read_bytes()
    (landmarks / "405.parquet").write_bytes(data[: len(data) // 2])


@pytest.fixture
def data(tmp_path) -> Path:
    write_data(tmp_path / "data")
    return tmp_path / "data"


def comparable(manifest: dict, prefix: str = "") -> dict:
    """The manifest without what legitimately differs between engines (module docstring); `prefix` of
    remote input paths replaced by the local data folder's."""
    m = copy.deepcopy(manifest)
    for key in ("engine", "workers", "data_dir"):
        m["settings"].pop(key)
    m["run"].pop("seconds")
    m["run"].pop("runner", None)
    for f in m["files"]:
        f.pop("seconds")
    text = json.dumps(m, sort_keys=True)
    return json.loads(text.replace(prefix, "DATA/") if prefix else text)


def shards(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.tfrecord"))}


def run_cli(args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "preprocess", "--no-progress", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.slow  # Beam's FnApiRunner with 2 worker processes (~10 s)
def test_engines_write_the_same_shards_and_manifest_and_a_rerun_skips_finished_files(data, tmp_path, subprocess_env):
    before = tree_digest(data)
    local = preprocess(PreprocessConfig(data, tmp_path / "local", workers=2, progress=False))
    out = tmp_path / "beam"
    proc = run_cli(["--data-dir", data, "--out", out, "--engine", "beam", "--workers", 2], subprocess_env)
    assert proc.returncode == 1, proc.stderr  # bad files: reported, the rest done
    beam = records.read_manifest(out)

    assert shards(out) == shards(tmp_path / "local") and len(shards(out)) == 2
    assert comparable(beam) == comparable(local)
    assert beam["settings"]["engine"] == "beam" and beam["run"]["runner"] == "FnApiRunner"
    assert beam["settings"]["workers"] == 2
    assert beam["dropped"] == {"file_error": 4, "unknown_characters": 1, "not_in_parquet": 1, "too_few_hand_frames": 1}
    errors = {Path(e["file"]).stem: e["message"] for e in beam["errors"]}
    for file_id, problem in BAD.items():
        assert f"{file_id}.parquet" in errors[str(file_id)] and problem in errors[str(file_id)]
        assert errors[str(file_id)] in proc.stderr
    assert "INFO" not in proc.stderr and "Worker:" not in proc.stderr, proc.stderr  # Beam's chatter stays quiet
    assert not list(out.rglob(".tmp-*"))
    assert tree_digest(data) == before

    stamps = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*.tfrecord")}
    proc = run_cli(["--data-dir", data, "--out", out, "--engine", "beam"], subprocess_env)
    again = records.read_manifest(out)
    assert proc.returncode == 1 and again["run"]["files_reused"] == 2, proc.stderr
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*.tfrecord")} == stamps
    for f in again["files"]:
        f["reused"] = False
    again["run"]["files_reused"] = 0
    assert comparable(again) == comparable(local)


@pytest.mark.slow  # two in-process Beam runs (~6 s)
def test_remote_paths_go_through_beams_filesystems(data, tmp_path, monkeypatch):
    from tests import beam_fakefs

    monkeypatch.setenv(beam_fakefs.ROOT_ENV, str(tmp_path))
    local = preprocess(PreprocessConfig(data, tmp_path / "local", workers=1, progress=False))
    config = PreprocessConfig("fake://data", "fake://remote", progress=False)
    (tmp_path / "remote" / "train").mkdir(parents=True)
    (tmp_path / "remote" / "train" / ".tmp-402.tfrecord.abc").write_bytes(b"left by a killed run")
    remote = beam_engine.preprocess_beam(config, IN_PROCESS)

    out = tmp_path / "remote"
    assert shards(out) == shards(tmp_path / "local")
    assert remote["settings"]["data_dir"] == "fake://data"
    assert remote["run"]["stale_temporaries_removed"] == 1 and not list(out.rglob(".tmp-*"))
    assert json.loads((out / "manifest.json").read_text()) == remote
    remote["run"]["stale_temporaries_removed"] = 0
    assert comparable(remote, prefix="fake://data/") == comparable(local, prefix=f"{data}/")
    assert "fake://data/train_landmarks/404.parquet: cannot read parquet file" in json.dumps(remote["errors"])

    # A re-run reuses the remote shards; a file that turns bad loses its remote shard.
    (data / "train_landmarks" / "402.parquet").write_bytes(b"garbage")
    again = beam_engine.preprocess_beam(config, IN_PROCESS)
    assert again["run"]["files_reused"] == 1 and not (out / "train" / "402.tfrecord").exists()
    assert not (out / "train" / "402.json").exists() and (out / "train" / "401.tfrecord").exists()

    # A shard without its JSON (a worker preempted between the two uploads): opening the missing JSON
    # raises GCS's NotFound, no OSError; the file is redone, not the run stopped.
    (out / "train" / "401.json").unlink()
    third = beam_engine.preprocess_beam(config, IN_PROCESS)
    assert third["run"]["files_reused"] == 0 and (out / "train" / "401.json").exists()
    assert shards(out) == {"train/401.tfrecord": shards(tmp_path / "local")["train/401.tfrecord"]}


@pytest.mark.slow  # two in-process Beam runs, one of them through the CLI (~4 s)
def test_a_pipeline_that_fails_midway_exits_2_and_the_rerun_converts_only_the_rest(tmp_path, monkeypatch, capsys):
    from fingerspell import cli
    from tests import beam_fakefs

    monkeypatch.setenv(beam_fakefs.ROOT_ENV, str(tmp_path))
    write_kaggle_dataset(tmp_path / "data", {i: FILES[i] for i in (401, 402)})
    convert_file, calls = beam_engine.convert_file, []

    def dies_after_one_file(task):  # a worker lost midway: the exception escapes the DoFn
        calls.append(task.file_id)
        if len(calls) > 1:
            raise RuntimeError("worker lost")
        return convert_file(task)

    monkeypatch.setattr(beam_engine, "convert_file", dies_after_one_file)
    args = ["preprocess", "--no-progress", "--data-dir", "fake://data", "--out", "fake://out", "--engine", "beam"]
    assert cli.main([*args, "--", *IN_PROCESS]) == 2  # not 1 (partial failure: the rest was done)
    err = capsys.readouterr().err
    assert "error: Beam pipeline failed (RuntimeError: worker lost" in err and "re-run" in err, err
    assert "Traceback" not in err, err
    out = tmp_path / "out"
    finished = calls[0]
    assert not (out / "manifest.json").exists() and not list(out.rglob(".tmp-*"))
    assert {p.name for p in (out / "train").iterdir()} == {f"{finished}.tfrecord", f"{finished}.json"}

    monkeypatch.setattr(beam_engine, "convert_file", convert_file)
    again = beam_engine.preprocess_beam(PreprocessConfig("fake://data", "fake://out", progress=False), IN_PROCESS)
    assert again["run"]["files_reused"] == 1 and not again["errors"]
    assert [f["file_id"] for f in again["files"] if f["reused"]] == [finished]
    local = preprocess(PreprocessConfig(tmp_path / "data", tmp_path / "local", workers=1, progress=False))
    assert shards(out) == shards(tmp_path / "local")
    assert comparable(again, prefix="fake://data/")["kept"] == local["kept"]


@pytest.mark.slow  # one in-process Beam run (~1 s)
def test_a_remote_runner_reads_no_footers_and_gets_the_worker_wheel(data, tmp_path, monkeypatch, caplog):
    from tests import beam_fakefs

    monkeypatch.setenv(beam_fakefs.ROOT_ENV, str(tmp_path))

    def no_footers(*args, **kwargs):
        raise AssertionError("default_workers read footers for a remote runner")

    monkeypatch.setattr(beam_engine.convert, "default_workers", no_footers)
    config = PreprocessConfig("fake://data", "fake://remote", workers=3, progress=False)
    import pyarrow as pa

    threads = pa.cpu_count(), pa.io_thread_count()
    try:
        with caplog.at_level("INFO", logger="fingerspell"):
            manifest = beam_engine.preprocess_beam(config, ["--runner=tests.beam_fakefs.PretendRemoteRunner"])
        assert pa.cpu_count() == 1  # remote workers: one pyarrow thread per SDK process
    finally:  # the workers ran in this process
        pa.set_cpu_count(threads[0])
        pa.set_io_thread_count(threads[1])
    assert manifest["settings"]["workers"] is None and manifest["run"]["runner"] == "PretendRemoteRunner"
    assert "--workers sets FnApiRunner's worker processes" in caplog.text
    assert "staging fingerspell's code for the PretendRemoteRunner workers" in caplog.text
    local = preprocess(PreprocessConfig(data, tmp_path / "local", workers=1, progress=False))
    assert shards(tmp_path / "remote") == shards(tmp_path / "local")
    assert comparable(manifest, prefix="fake://data/") == comparable(local, prefix=f"{data}/")


@pytest.mark.parametrize("runner", ["--runner=DataflowRunner", "--runner=dataflow",
                                    "--runner=tests.beam_fakefs.PretendRemoteRunner"])
@pytest.mark.parametrize("local_side", ["data", "out"])
def test_a_remote_runner_is_refused_local_paths_before_anything_is_touched(runner, local_side, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    config = (PreprocessConfig(tmp_path, "gs://bucket/out") if local_side == "data"
              else PreprocessConfig("gs://bucket/data", out))
    flag = "--data-dir" if local_side == "data" else "--out"
    with pytest.raises(PreprocessError, match=f"{flag} .* is a local path, but .*Runner runs its workers on other"):
        beam_engine.preprocess_beam(config, [runner, "--project=p"])
    assert (out / "manifest.json").read_text() == "{}"


def test_a_missing_remote_csv_is_named_by_its_remote_path(tmp_path, monkeypatch):
    from tests import beam_fakefs

    monkeypatch.setenv(beam_fakefs.ROOT_ENV, str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreprocessError, match="fake://empty/train.csv: metadata CSV not found"):
        beam_engine.preprocess_beam(PreprocessConfig("fake://empty", "fake://out", progress=False), IN_PROCESS)


def test_the_local_engine_refuses_remote_paths(tmp_path):
    with pytest.raises(PreprocessError, match="gs://bucket/data: remote paths need the Beam engine"):
        preprocess(PreprocessConfig("gs://bucket/data", tmp_path / "out", progress=False))


def test_pipeline_options_default_to_local_worker_processes():
    options, runner, workers = beam_engine.pipeline_options([], 3)
    assert (runner, workers) == ("FnApiRunner", 3)
    assert options.get_all_options()["direct_running_mode"] == "multi_processing"
    _, runner, workers = beam_engine.pipeline_options(["--direct_num_workers=5"], 3)
    assert (runner, workers) == ("FnApiRunner", 5)  # the user's options win
    _, runner, workers = beam_engine.pipeline_options(["--runner=DataflowRunner", "--project=p"], 3)
    assert (runner, workers) == ("DataflowRunner", None)
    # A named FnApiRunner gets the same defaults; Beam's aliases are resolved as Beam resolves them.
    options, runner, workers = beam_engine.pipeline_options(["--runner=FnApiRunner"], 4)
    assert (runner, workers) == ("FnApiRunner", 4)
    assert options.get_all_options()["direct_running_mode"] == "multi_processing"
    assert beam_engine.pipeline_options(["--runner=direct"], 3)[1:] == ("DirectRunner", 3)
    assert beam_engine.runner_name(["--runner=dataflow"]) == "DataflowRunner"
    dotted = "--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner"
    assert beam_engine.runner_name([dotted]) == "FnApiRunner"
    assert beam_engine.runner_name([]) == "FnApiRunner"


def _task(tmp_path: Path, file_id: int, out_dir: str | None = None):
    from fingerspell.data.convert import FileTask
    import numpy as np

    out = out_dir or str(tmp_path)
    return FileTask(split="train", file_id=file_id, parquet=f"gs://b/{file_id}.parquet",
                    sequence_ids=np.array([1, 2], np.int64), participant_ids=np.array([7, 7], np.int64),
                    phrases=["ab", "cd"], factor=2.0, shard=f"{out}/train/{file_id}.tfrecord",
                    info=f"{out}/train/{file_id}.json", out_dir=out)


def test_results_are_checked_against_the_files_sent(tmp_path):
    (tmp_path / "train").mkdir()
    todo = [_task(tmp_path, i) for i in (1, 2, 3)]
    for path in (todo[2].shard, todo[2].info):
        Path(path).write_text("from an attempt that left no result")
    done = {"split": "train", "file_id": 1, "error": None}
    results = beam_engine.reconcile(todo, [done, {"split": "train", "file_id": 2, "error": None}, dict(done)])
    assert [r["file_id"] for r in results] == [1, 2, 3]  # a duplicate counts once
    assert "no result from the Beam pipeline" in results[2]["error"] and results[2]["dropped"]["file_error"] == 2
    assert not Path(todo[2].shard).exists() and not Path(todo[2].info).exists()


def test_deleting_a_file_that_is_already_gone_is_no_error(tmp_path, monkeypatch):
    from tests import beam_fakefs

    monkeypatch.setenv(beam_fakefs.ROOT_ENV, str(tmp_path))
    (tmp_path / "x").write_text("x")
    beam_engine._delete(["fake://x", "fake://x", "fake://never-there", str(tmp_path / "missing")])
    assert not (tmp_path / "x").exists()
    with pytest.raises(OSError, match="fake://missing.json: NotFound"):  # what reusable_result expects
        beam_engine._read_text("fake://missing.json")


def test_a_failed_remote_file_never_touches_a_local_path_of_the_same_name(tmp_path, monkeypatch):
    from fingerspell.data import convert

    monkeypatch.chdir(tmp_path)
    lookalike = tmp_path / "gs:" / "b" / "out" / "train" / "5.tfrecord"  # what os.unlink("gs://b/out/...") hits
    lookalike.parent.mkdir(parents=True)
    lookalike.write_text("not ours")
    result = convert._failed_result(_task(tmp_path, 5, "gs://b/out"), "failed")
    assert result["error"] and lookalike.exists()


def test_tasks_reach_the_workers_without_numpy_pickles(tmp_path):
    import pickle

    import numpy as np

    task = _task(tmp_path, 1)
    shipped = beam_engine._portable(task)
    assert b"numpy" not in pickle.dumps(shipped)
    restored = beam_engine._restored(pickle.loads(pickle.dumps(shipped)))
    assert restored.sequence_ids.dtype == np.int64 and restored.sequence_ids.tolist() == [1, 2]
    assert restored.participant_ids.tolist() == [7, 7]


class _SubmittedJob:
    def __init__(self):
        self.cancelled = False

    def job_id(self):
        return "2026-01-01_job"

    def wait_until_finish(self):
        raise KeyboardInterrupt

    def cancel(self):
        self.cancelled = True


def test_a_submitted_job_is_named_and_cancelled_on_ctrl_c(caplog):
    options = beam_engine.PipelineOptions(["--runner=DataflowRunner", "--project=p", "--region=europe-west1"])
    job = _SubmittedJob()
    with caplog.at_level("INFO", logger="fingerspell"):
        beam_engine._announce(job, "DataflowRunner", options)
        with pytest.raises(KeyboardInterrupt):
            beam_engine.wait_for(job, "DataflowRunner", options)
    assert job.cancelled
    assert "DataflowRunner job 2026-01-01_job submitted" in caplog.text
    assert "https://console.cloud.google.com/dataflow/jobs/europe-west1/2026-01-01_job?project=p" in caplog.text
    assert "interrupted: cancelled DataflowRunner job 2026-01-01_job" in caplog.text

    def refuses():
        raise RuntimeError("no permission")

    job.cancel = refuses
    with pytest.raises(KeyboardInterrupt):
        beam_engine.wait_for(job, "DataflowRunner", options)
    assert "gcloud dataflow jobs cancel 2026-01-01_job --region=europe-west1 --project=p" in caplog.text


def test_worker_wheel_holds_the_code_and_declares_no_dependencies(tmp_path):
    wheel = beam_engine.worker_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "fingerspell/data/convert.py" in names and "fingerspell/data/beam_engine.py" in names
    assert "fingerspell/data/character_to_prediction_index.json" in names
    assert "Requires-Dist" not in metadata and not [n for n in names if "__pycache__" in n]
    # Beam's worker boot runs `pip install WHEEL` (dependencies resolved): with none declared, no index is needed.
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--target", target, wheel],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (target / "fingerspell" / "data" / "convert.py").exists()


# Modules the preprocessing code path must never import (the light Dataflow environment lacks them).
HEAVY = ("tensorflow", "keras", "mediapipe", "ai_edge_litert", "cv2", "matplotlib", "pandas")
BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ModuleNotFoundError(f'blocked import of {{name}}', name=name)
sys.meta_path.insert(0, Block())
"""


def test_preprocessing_imports_neither_tensorflow_nor_mediapipe(data, tmp_path, subprocess_env):
    code = BLOCKER.format(blocked=HEAVY) + (
        "from fingerspell import cli\n"
        f"rc = cli.main(['preprocess', '--no-progress', '--data-dir', {str(data)!r}, '--out', {str(tmp_path / 'o')!r}, "
        f"'--engine', 'beam', '--', *{IN_PROCESS!r}])\n"
        f"assert rc == 1, rc\n"  # the bad files
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert records.read_manifest(tmp_path / "o")["kept"] == 4


def test_without_apache_beam_the_error_names_the_extra(data, tmp_path, subprocess_env):
    code = BLOCKER.format(blocked=("apache_beam",)) + (
        "from fingerspell import cli\n"
        "try:\n    cli.main(['preprocess', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        f"sys.exit(cli.main(['preprocess', '--data-dir', {str(data)!r}, '--out', {str(tmp_path / 'o')!r}, "
        "'--engine', 'beam']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "--engine {local,beam}" in proc.stdout  # --help works without Beam
    assert 'needs Apache Beam, which is not installed' in proc.stderr and 'pip install ".[beam]"' in proc.stderr
    assert not (tmp_path / "o").exists()


def test_pipeline_options_need_the_beam_engine(data, tmp_path, subprocess_env):
    proc = run_cli(["--data-dir", data, "--out", tmp_path / "o", "--", "--runner=DataflowRunner"], subprocess_env)
    assert proc.returncode == 2 and "are for --engine beam" in proc.stderr, proc.stderr
