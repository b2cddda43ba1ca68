"""The built wheel is the library alone and works outside the checkout.

Builds the wheel from a copy of the checkout, checks what it holds (the character map as package
data; none of the checkout's top-level folders), installs it with `pip --target` and, from a folder
outside the checkout with that target first on PYTHONPATH, runs the documented commands that need
neither TensorFlow nor MediaPipe: `--help`, `synth` and `preprocess`; and, in a fresh venv holding only
requirements-preprocess.txt and the wheel (--no-deps), `preprocess --engine beam`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs a wheel, runs several interpreters

ROOT = Path(__file__).resolve().parents[1]
CHARACTER_MAP = "fingerspell/data/character_to_prediction_index.json"
NOT_INSTALLED = ("train", "export", "preprocess", "bench", "tests")  # checkout-only folders
# What the build may read: sources; not hidden folders (.venv, .git), generated data or old builds.
_IGNORE = shutil.ignore_patterns(".*", "work", "runs", "out", "build", "dist", "*.egg-info",
                                 "__pycache__", "*.pyc", "*.tfrecord", "*.tflite", "*.parquet", "*.zip")


def _setuptools_builds_here() -> bool:
    """Whether this interpreter's setuptools can build the project without build isolation."""
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return False
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    return major >= 77  # pyproject.toml's build requirement (SPDX license, PEP 639)


def _run(args, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(map(str, args))} exited {proc.returncode}\n"
                                  f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


#: pip's words for an index it cannot reach at all (DNS, refused or unreachable network, proxy, TLS).
_NETWORK_ERROR = re.compile(r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
                            r"resolution|Name or service not known|Network is unreachable|Connection refused|"
                            r"ProxyError|ConnectTimeoutError|SSLError")


def _install_from_index(args, cwd: Path):
    """`pip install` from the package index; the test is skipped, not failed, when the index is unreachable:
    pip reported connection failures and cannot list even numpy's versions there. Any other failure (a
    resolver conflict, a missing version on a reachable index) fails."""
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if proc.returncode == 0:
        return proc
    unreachable = _NETWORK_ERROR.search(proc.stdout + proc.stderr)
    if unreachable:
        probe = subprocess.run([args[0], "-m", "pip", "index", "versions", "numpy"], cwd=cwd,
                               capture_output=True, text=True, timeout=600)
        if probe.returncode != 0:
            pytest.skip(f"the package index is unreachable ({unreachable.group(0)})")
    raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}\n"
                         f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a clean copy so the checkout gets no build/ or egg-info."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_IGNORE)
    args = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", src]
    if _setuptools_builds_here():
        args.insert(4, "--no-build-isolation")  # else pip fetches setuptools from the index
    _run(args, cwd=tmp)
    wheels = list((tmp / "dist").glob("fingerspell-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    """The wheel installed with `pip --target` (no dependencies: the current venv provides them)."""
    target = tmp_path_factory.mktemp("site") / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel],
         cwd=wheel.parent)
    return target


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A working folder outside the checkout."""
    path = tmp_path_factory.mktemp("outside")
    assert ROOT not in path.resolve().parents
    return path


def _env(site: Path) -> dict[str, str]:
    """The installed copy first on the path, ahead of the checkout's editable install."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site)
    env["PYTHONNOUSERSITE"] = "1"
    env.pop("PYTHONSAFEPATH", None)
    return env


def test_wheel_holds_the_library_and_its_data_only(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert CHARACTER_MAP in names
        char_map = json.loads(zf.read(CHARACTER_MAP))
        metadata_text = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert len(char_map) == 59
    top_level = {n.split("/")[0] for n in names}
    assert not top_level & set(NOT_INSTALLED), sorted(top_level)
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"fingerspell"}
    for package in ("data", "features", "model", "training", "export", "video", "synth"):
        assert f"fingerspell/{package}/__init__.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata_text
    import fingerspell
    assert f"Version: {fingerspell.__version__}" in metadata_text
    assert "fingerspell = fingerspell.cli:main" in entry_points
    # TensorFlow and MediaPipe are extras, never base requirements.
    base = [line for line in metadata_text.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not [line for line in base if "tensorflow" in line or "mediapipe" in line], base


def test_installed_package_is_imported_outside_the_checkout(site, outside):
    code = ("import json, fingerspell; from importlib import resources; "
            "m = resources.files('fingerspell.data').joinpath('character_to_prediction_index.json'); "
            "print(json.dumps([fingerspell.__file__, str(m), len(json.loads(m.read_bytes()))]))")
    proc = _run([sys.executable, "-c", code], cwd=outside, env=_env(site))
    module_file, char_map, n_chars = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(module_file).resolve().is_relative_to(site.resolve()), module_file
    assert Path(char_map).resolve().is_relative_to(site.resolve()), char_map
    assert n_chars == 59


def test_installed_command_runs_synth_and_preprocess(site, outside):
    env = _env(site)
    script = site / "bin" / "fingerspell"
    assert script.exists(), sorted(p.name for p in (site / "bin").iterdir())

    help_module = _run([sys.executable, "-m", "fingerspell", "--help"], cwd=outside, env=env)
    help_script = _run([script, "--help"], cwd=outside, env=env)
    for out in (help_module.stdout, help_script.stdout):
        for command in ("preprocess", "train", "export", "synth"):
            assert command in out

    data, pre = outside / "synthetic", outside / "pre"
    _run([script, "synth", "--out", data, "--files", "1", "--sequences-per-file", "10",
          "--participants", "2", "--supplemental-files", "0"], cwd=outside, env=env)
    assert (data / "train.csv").exists()
    assert list((data / "train_landmarks").glob("*.parquet"))

    _run([script, "preprocess", "--data-dir", data, "--out", pre], cwd=outside, env=env)
    manifest = json.loads((pre / "manifest.json").read_text())
    assert manifest["csv_rows"] == 10
    assert manifest["kept"] > 0 and not manifest["errors"]
    assert manifest["kept"] + sum(manifest["dropped"].values()) == manifest["csv_rows"]
    shards = [f["shard"] for f in manifest["files"] if f["kept"]]
    assert shards and all((pre / s).exists() or Path(s).exists() for s in shards), shards


def test_light_preprocessing_environment_runs_the_beam_engine(wheel, outside):
    """A venv with only requirements-preprocess.txt (no TensorFlow, MediaPipe, LiteRT) and the project
    installed with --no-deps, against constraints.txt (numpy 1.26.4, pyarrow 25.0.1, apache-beam 2.77.0 without
    [gcp]): the launcher of a local Beam run. Not the README's Dataflow launcher (unconstrained apache-beam[gcp],
    protobuf >= 6), which is not tested. Needs the package index: skipped when pip cannot reach it. ~1 min,
    mostly pip."""
    pytest.importorskip("apache_beam")  # the environment that runs the suite has the beam extra
    venv = outside / "light-venv"
    _run([sys.executable, "-m", "venv", venv], cwd=outside)
    python = venv / "bin" / "python"
    _install_from_index([python, "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt", "-r",
                         ROOT / "requirements-preprocess.txt"], cwd=outside)
    _run([python, "-m", "pip", "install", "-q", "--no-deps", wheel], cwd=outside)
    installed = _run([python, "-m", "pip", "list", "--format=freeze"], cwd=outside).stdout.lower()
    for heavy in ("tensorflow", "keras", "mediapipe", "ai-edge-litert", "opencv", "matplotlib"):
        assert heavy not in installed, installed

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    data, pre = outside / "light-data", outside / "light-pre"
    from fingerspell.synth.generator import generate_dataset  # synth writes with pandas: not in the light set
    generate_dataset(data, files=2, sequences_per_file=6, participants=2, seed=0, supplemental_files=0)
    _run([python, "-m", "fingerspell", "preprocess", "--data-dir", data, "--out", pre, "--engine", "beam",
          "--workers", "2"], cwd=outside, env=env)
    manifest = json.loads((pre / "manifest.json").read_text())
    assert manifest["csv_rows"] == 12 and manifest["kept"] > 0 and not manifest["errors"]
    assert manifest["settings"]["engine"] == "beam"
