"""Where a run computes: the distribution strategy, XLA and mixed precision, resolved once.

`resolve_runtime` turns the config's `distribute`, `jit_compile` and `mixed_precision`
keys into what this machine can do: XLA cannot compile a step whose variables live on
several devices, and Keras' multi-step loop fails under a distribution strategy, so both
are used with one replica only (XLA, by default, only on a GPU). `write_run_info` records the result
in RUN_DIR/run.json, so a run's speed and numbers can be traced to the hardware and code.
"""
from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

import fingerspell
from fingerspell.config import Config
from fingerspell.files import atomic_write_json

logger = logging.getLogger(__name__)

RUN_INFO = "run.json"


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why."""


@dataclass(frozen=True)
class Runtime:
    """The resolved execution settings of one training session."""

    strategy: tf.distribute.Strategy
    replicas: int
    jit_compile: bool
    mixed_precision: bool
    devices: list[str]
    steps_per_execution: int


def has_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def use_mixed_precision(cfg: Config) -> bool:
    if cfg.mixed_precision == "auto":
        return has_gpu()
    return cfg.mixed_precision == "on"


def make_strategy(distribute: str) -> tf.distribute.Strategy:
    """The strategy `distribute` asks for on the devices this process sees."""
    if distribute == "multi_worker":  # before anything starts TensorFlow's runtime: collectives are set up at startup
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if distribute == "mirrored" or (distribute == "auto" and len(gpus) > 1):
        # Without a GPU, mirror over the logical CPUs (how tests stand in for several GPUs).
        return tf.distribute.MirroredStrategy(gpus or [d.name for d in tf.config.list_logical_devices("CPU")])
    if distribute in ("auto", "none"):
        return tf.distribute.get_strategy()
    raise ValueError(f"distribute={distribute!r}: expected auto, none, mirrored or multi_worker")


def strategy_devices(strategy: tf.distribute.Strategy) -> list[str]:
    """The devices the strategy computes on (the default strategy has no list: its default device)."""
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:  # "unsupported by default tf.distribute.Strategy"
        default = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return [default[0].name]


def resolve_jit_compile(setting: str, replicas: int, on_gpu: bool) -> bool:
    """XLA with exactly one replica (it cannot compile a step that touches variables on several devices);
    `auto` turns it on only on a GPU: on CPU bench/bench_training.py measured the default recipe ~7%
    slower with XLA than without (287 vs 307 sequences/s on 2 cores)."""
    if setting == "on" and replicas > 1:
        logger.warning("jit_compile=on ignored: XLA cannot compile a step whose variables are mirrored over %d "
                       "replicas; training without XLA", replicas)
        return False
    return setting == "on" or (setting == "auto" and replicas == 1 and on_gpu)


def resolve_steps_per_execution(steps: int, replicas: int) -> int:
    """Several steps per execution with one replica only: Keras 3's multi-step loop fails under a
    distribution strategy ("You must feed a value for placeholder tensor", keras-team/keras#19246)."""
    if steps > 1 and replicas > 1:
        logger.info("steps_per_execution=%d -> 1 with %d replicas (Keras' multi-step loop fails under "
                    "tf.distribute)", steps, replicas)
        return 1
    return steps


def resolve_runtime(cfg: Config) -> Runtime:
    strategy = make_strategy(cfg.distribute)
    replicas = int(strategy.num_replicas_in_sync)
    if cfg.distribute == "multi_worker":  # multiworker.py's loop: one step per call, without XLA
        return Runtime(strategy=strategy, replicas=replicas, jit_compile=False, mixed_precision=use_mixed_precision(cfg),
                       devices=strategy_devices(strategy), steps_per_execution=1)
    return Runtime(strategy=strategy, replicas=replicas, jit_compile=resolve_jit_compile(cfg.jit_compile, replicas, on_gpu=has_gpu()),
                   mixed_precision=use_mixed_precision(cfg), devices=strategy_devices(strategy),
                   steps_per_execution=resolve_steps_per_execution(cfg.steps_per_execution, replicas))


def git_commit(timeout: float = 5.0) -> str | None:
    """HEAD of the checkout the package runs from; None for an installed copy or without git."""
    root = Path(fingerspell.__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.split()
    # An installed package inside some other repository (a venv in a checkout) is not that checkout.
    if done.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root:
        return None
    return lines[1]


def run_info(runtime: Runtime, data_dir: Path, start_epoch: int) -> dict:
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "start_epoch": start_epoch,
            "strategy": type(runtime.strategy).__name__, "replicas": runtime.replicas,
            "devices": runtime.devices, "jit_compile": runtime.jit_compile,
            "mixed_precision": runtime.mixed_precision, "fingerspell_version": fingerspell.__version__,
            "tensorflow_version": tf.__version__, "git_commit": git_commit(),
            "data_dir": str(Path(data_dir).resolve())}


def write_run_info(run_dir: Path, runtime: Runtime, data_dir: Path, start_epoch: int, resume: bool,
                   data: dict | None = None) -> dict:
    """RUN_DIR/run.json: this session's runtime (and `data`: how its records are read) at the top level;
    on resume, the earlier sessions' entries in `history`, oldest first (a new run starts an empty history)."""
    path = Path(run_dir) / RUN_INFO
    history: list[dict] = []
    if resume and path.exists():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            logger.warning("%s: not valid JSON; its history is not kept", path)
        else:
            history = previous.pop("history", []) + [previous]
    info = {**run_info(runtime, data_dir, start_epoch), **(data or {}), "history": history}
    atomic_write_json(path, info)
    return info
