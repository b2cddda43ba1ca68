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
