"""The runtime of a run: strategy, XLA only where it compiles, run.json, and old configs' jit_compile."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import pytest

from fingerspell.config import Config, ConfigError
from fingerspell.training.runtime import resolve_jit_compile
from fingerspell.training.trainer import resume, steps_per_epoch, train

from tests.deterministic import run_deterministic
from tests.test_training import tiny_config


def test_old_configs_with_a_boolean_jit_compile_still_load(tmp_path):
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({**Config().to_dict(), "jit_compile": True}))
    assert Config.load(saved).jit_compile == "on"
    assert Config(jit_compile=False).jit_compile == "off"
    assert Config().override(["jit_compile=false"]).jit_compile == "off"
    assert Config().override(["jit_compile=auto", "distribute=mirrored"]).distribute == "mirrored"
    with pytest.raises(ConfigError, match="distribute='gpus': expected one of"):
        Config().override(["distribute=gpus"])
    with pytest.raises(ConfigError, match="jit_compile='yes please': expected one of"):
        Config().override(["jit_compile=yes please"])


def test_xla_only_with_one_replica(caplog):
    assert resolve_jit_compile("auto", 1) and not resolve_jit_compile("auto", 2)
    assert not resolve_jit_compile("off", 1)
    with caplog.at_level(logging.WARNING, logger="fingerspell"):
        assert not resolve_jit_compile("on", 2)
    assert "jit_compile=on ignored" in caplog.text and "2 replicas" in caplog.text
    assert resolve_jit_compile("on", 1)


def train_on_two_cpus(data_dir: str, run_dir: str) -> dict:
    """Train 2 epochs mirrored over two logical CPU devices (child process: before TF sets up its devices)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    cfg = tiny_config("epochs=2", "eval_every=2", "distribute=mirrored", "jit_compile=auto")
    return train(Path(data_dir), Path(run_dir), cfg)


class FirstStep(keras.callbacks.Callback):
    """Records the optimizer's step count when training begins (after the checkpoint is restored)."""

    def on_train_begin(self, logs=None):
        self.iterations = int(self.model.optimizer.iterations.numpy())


@pytest.mark.slow
def test_mirrored_training_without_xla_then_resume_on_one_device(preprocessed_small, tmp_path):
    run = tmp_path / "run"
    summary = run_deterministic("tests.test_runtime:train_on_two_cpus", str(preprocessed_small), str(run))
    assert summary["epochs"] == 2 and (run / "checkpoints" / "last.weights.h5").exists()
    info = json.loads((run / "run.json").read_text())
    assert info["strategy"] == "MirroredStrategy" and info["replicas"] == 2 and len(info["devices"]) == 2
    assert info["jit_compile"] is False and info["mixed_precision"] is False
    assert info["steps_per_execution"] == 1 and info["cache"] == "memory"  # Keras' multi-step loop fails mirrored
    assert info["data_dir"] == str(Path(preprocessed_small).resolve()) and info["history"] == []
    assert Config.load(run / "config.json").jit_compile == "auto"  # the setting is kept, not its resolution

    first = FirstStep()
    resumed = resume(preprocessed_small, run, {"epochs": 3, "distribute": "none"}, callbacks=[first])
    steps, _ = steps_per_epoch(summary["train_sequences"], 16, 1)  # one step per execution when mirrored
    assert resumed["epochs"] == 3 and first.iterations == 2 * steps
    info = json.loads((run / "run.json").read_text())
    assert info["replicas"] == 1 and info["strategy"] != "MirroredStrategy" and info["jit_compile"] is True
    assert info["steps_per_execution"] > 1
    assert [h["replicas"] for h in info["history"]] == [2] and info["start_epoch"] == 2
    assert Config.load(run / "config.json").distribute == "none"
