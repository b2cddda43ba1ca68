"""The runtime of a run: strategy, XLA only where it compiles, run.json, and old configs' jit_compile."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
import pytest

from fingerspell.config import Config, ConfigError
from fingerspell.model.transformer import build_model
from fingerspell.training.runtime import resolve_jit_compile, resolve_steps_per_execution
from fingerspell.training.trainer import (RESUME_NAME, TrainingError, base_optimizer, make_optimizer, read_metrics,
                                         read_state, resume, steps_per_epoch, train)

from tests.deterministic import run_deterministic
from tests.test_training import StopAfter, tiny_config


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
    assert Config(cache=True).cache == "on" and Config.from_dict({"cache": False}).cache == "off"
    assert Config().cache == "auto" and Config().override(["cache=false"]).cache == "off"


def test_xla_only_with_one_replica(caplog):
    assert resolve_jit_compile("auto", 1, on_gpu=True) and not resolve_jit_compile("auto", 2, on_gpu=True)
    assert not resolve_jit_compile("auto", 1, on_gpu=False)  # measured slower on CPU
    assert not resolve_jit_compile("off", 1, on_gpu=True)
    with caplog.at_level(logging.WARNING, logger="fingerspell"):
        assert not resolve_jit_compile("on", 2, on_gpu=True)
    assert "jit_compile=on ignored" in caplog.text and "2 replicas" in caplog.text
    assert resolve_jit_compile("on", 1, on_gpu=False)
    assert resolve_steps_per_execution(4, 2) == 1 and resolve_steps_per_execution(4, 1) == 4


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
    resumed = resume(preprocessed_small, run, {"epochs": 3, "distribute": "none", "jit_compile": "on"},
                     callbacks=[first])
    steps, _ = steps_per_epoch(summary["train_sequences"], 16, 1)  # one step per execution when mirrored
    assert resumed["epochs"] == 3 and first.iterations == 2 * steps
    info = json.loads((run / "run.json").read_text())
    assert info["replicas"] == 1 and info["strategy"] != "MirroredStrategy" and info["jit_compile"] is True
    assert info["steps_per_execution"] > 1
    assert [h["replicas"] for h in info["history"]] == [2] and info["start_epoch"] == 2
    assert Config.load(run / "config.json").distribute == "none"


class OptimizerAtStart(keras.callbacks.Callback):
    """The step count and Adam moments of the base optimizer when training begins (after a restore)."""

    def on_train_begin(self, logs=None):
        optimizer = base_optimizer(self.model.optimizer)
        self.iterations = int(optimizer.iterations.numpy())
        self.moments = [v.numpy().copy() for v in optimizer.variables if "momentum" in v.path]


def saved_moments(run: Path) -> list[np.ndarray]:
    """The Adam first moments stored in the run's resume checkpoint, in the optimizer's order."""
    model = build_model(Config.load(run / "config.json"), 78)
    optimizer = make_optimizer(Config.load(run / "config.json"), 1)[0]
    optimizer.build(model.trainable_variables)
    with np.load(run / "checkpoints" / RESUME_NAME) as saved:
        names = sorted(k for k in saved.files if k.startswith("optimizer/"))
        return [saved[n] for n, v in zip(names, optimizer.variables) if "momentum" in v.path]


@pytest.mark.slow
def test_mixed_precision_epoch_and_resume_across_precisions_keeps_the_optimizer(preprocessed_small, tmp_path):
    run = tmp_path / "run"
    # Streams its records (a 1 kB cache budget) and runs one epoch under mixed_float16 on the CPU.
    summary = train(preprocessed_small, run, tiny_config("epochs=3", "mixed_precision=on", "cache_memory_gb=1e-6"),
                    callbacks=[StopAfter(1)])
    info = json.loads((run / "run.json").read_text())
    assert info["mixed_precision"] is True and info["cache"] == "stream"
    assert keras.mixed_precision.global_policy().name == "float32"  # the run's policy does not leak
    loss = float(read_metrics(run)[0]["loss"])
    assert np.isfinite(loss)
    steps, _ = steps_per_epoch(summary["train_sequences"], 16, 4)

    # float16 -> float32 with a smaller batch: the optimizer continues at its step with its moments.
    # Under float16 the loss scale starts high and a step whose gradients overflow is skipped (not counted):
    # the saved step is the count of the steps applied, at least one, at most the epoch's.
    applied = read_state(run)["step"]
    assert 1 <= applied <= steps
    moments = saved_moments(run)
    at_start = OptimizerAtStart()
    resume(preprocessed_small, run, {"mixed_precision": "off", "batch_size": 8}, callbacks=[at_start, StopAfter(2)])
    assert at_start.iterations == applied and len(at_start.moments) == len(moments) > 0
    for restored, saved in zip(at_start.moments, moments):
        np.testing.assert_array_equal(restored, saved)
    assert json.loads((run / "run.json").read_text())["mixed_precision"] is False
    small_steps, _ = steps_per_epoch(summary["train_sequences"], 8, 4)

    # float32 -> float16: the step count of both epochs is kept.
    at_start = OptimizerAtStart()
    resume(preprocessed_small, run, {"mixed_precision": "on"}, callbacks=[at_start])
    assert at_start.iterations == applied + small_steps  # float32 skips no step
    # The learning rate follows the 3-epoch schedule by epochs, whatever the batch size of each epoch was; a
    # float16 step skipped for overflow does not advance it. Checked on the float32 epoch (2): in a float16
    # epoch Keras reports the rate at the loss-scale wrapper's own count, which includes skipped steps.
    schedule = make_optimizer(Config.load(run / "config.json"), 10)[1]
    expected = float(schedule((applied / steps + 1.0) * 10))
    np.testing.assert_allclose(float(read_metrics(run)[1]["learning_rate"]), expected, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")  # Keras' warning, made an error here
def test_a_checkpoint_whose_optimizer_cannot_be_restored_is_refused(preprocessed_small, tmp_path):
    """A run saved before resume.npz (Keras' file only) does not resume under another precision."""
    run = tmp_path / "run"
    train(preprocessed_small, run, tiny_config("epochs=1"))
    (run / "checkpoints" / RESUME_NAME).unlink()
    run_info = (run / "run.json").read_text()
    with pytest.raises(TrainingError, match="optimizer state was not restored .* mixed_precision setting"):
        resume(preprocessed_small, run, {"epochs": 2, "mixed_precision": "on"})
    # A refused resume changes nothing.
    assert Config.load(run / "config.json").mixed_precision == "auto" and (run / "run.json").read_text() == run_info
    assert resume(preprocessed_small, run, {"epochs": 2})["epochs"] == 2  # under its own precision it does
