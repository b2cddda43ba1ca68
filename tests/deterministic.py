"""Run a function in a fresh interpreter with fixed seeds and TensorFlow's op determinism.

Training that tests rely on must give the same weights on every run. Fixed seeds
(`keras.utils.set_random_seed`) fix the initial weights, shuffles and augmentation
draws; `tf.config.experimental.enable_op_determinism()` also fixes the order in which
tf.data's parallel maps consume random numbers. The latter holds for the whole process
(and cannot be undone through the public API), so it is turned on in a child process
only, never in the test session.

    result = run_deterministic("tests.test_training:overfit_16", str(data_dir))

runs `overfit_16(str(data_dir))` in `python -m tests.deterministic` and returns its
JSON-serialisable return value.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_deterministic(target: str, *args, seed: int = 0, timeout: float = 600):
    """`module:function(*args)` in a child interpreter with fixed seeds and op determinism."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("KERAS_BACKEND", "tensorflow")
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        done = subprocess.run([sys.executable, "-m", "tests.deterministic", target, str(seed), str(result),
                               json.dumps(list(args))],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"{target}{tuple(args)} failed in its child process (exit {done.returncode}):\n"
                                 f"{done.stdout[-2000:]}\n{done.stderr[-6000:]}")
        return json.loads(result.read_text())


def _main(argv: list[str]) -> None:
    target, seed, result, args = argv
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()
    module, name = target.split(":")
    value = getattr(importlib.import_module(module), name)(*json.loads(args))
    Path(result).write_text(json.dumps(value))


if __name__ == "__main__":
    _main(sys.argv[1:])
