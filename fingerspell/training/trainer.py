"""Training runs: config, split, model, optimizer, checkpoints, resume, metrics and curves.

A run directory holds `config.json`, `character_to_prediction_index.json`, `split.json`,
`validation.tfrecord` (the held-out records, see data/pipeline.py), `checkpoints/resume.npz`
(weights, optimizer state and epoch state in one file: what `--resume` reads),
`checkpoints/{last,best}.weights.h5` (Keras weights, for export), `checkpoints/state.json`
(the resume state, readable), `run.json` (strategy, devices, XLA, precision, cache, versions:
see runtime.py), `metrics.csv`, `curves.png`, the run's log `train.log` and TensorBoard logs
under `tensorboard/`. Progress goes to `logging`; the `fingerspell` command shows it on stderr.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from fingerspell import features, metric
from fingerspell.data import pipeline, vocab
from fingerspell.config import Config
from fingerspell.files import atomic_path, atomic_write, atomic_write_json
from fingerspell.model.transformer import FingerspellTransformer, build_model
from fingerspell.training import multiworker
from fingerspell.training.runtime import Runtime, TrainingError, resolve_runtime, write_run_info
from fingerspell.training.optimizers import FusedAdam, FusedAdamW

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
RESUME_NAME = "resume.npz"
#: Variables AdamW leaves undecayed, as transformer recipes do: biases, LayerNorm scales/offsets, embeddings.
NO_WEIGHT_DECAY = ("bias", "gamma", "beta", "embeddings")
LOG_NAME = "train.log"
METRIC_FIELDS = ["epoch", "loss", "val_loss", "val_score", "learning_rate", "train_seconds",
                 "train_sequences_per_second", "eval_seconds"]


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to the peak rate, then cosine decay to 5% of it, over epochs.

    The optimizer's step is turned into epochs from where this session started
    (`start_step`, `start_epoch`, set after a checkpoint is restored), so a run resumed
    with another batch size continues at the same point of the curve. `total_epochs` is
    a variable so a run with a time budget can end the decay when the budget does (see
    `RunKeeper`) instead of stopping at a high rate.
    """

    def __init__(self, peak: float, warmup_epochs: float, total_epochs: float, steps_per_epoch: int):
        self.peak, self.warmup_epochs, self.steps_per_epoch = peak, warmup_epochs, max(steps_per_epoch, 1)
        self.total_epochs = tf.Variable(float(total_epochs), trainable=False, dtype=tf.float32)
        self.start_step = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        self.start_epoch = tf.Variable(0.0, trainable=False, dtype=tf.float32)

    def continue_from(self, step: int, epoch: float) -> None:
        self.start_step.assign(float(step))
        self.start_epoch.assign(float(epoch))

    def epoch_at(self, step: int) -> float:
        """Where on the curve `step` is, in (fractional) epochs: saved so a resume continues there exactly,
        also after an epoch that a time budget cut short."""
        return float(self.start_epoch.numpy() + (step - self.start_step.numpy()) / self.steps_per_epoch)

    def __call__(self, step):
        epoch = self.start_epoch + (tf.cast(step, tf.float32) - self.start_step) / self.steps_per_epoch
        # The first step runs at peak / steps of warmup, not at zero.
        warm = self.peak * (epoch + 1.0 / self.steps_per_epoch) / max(self.warmup_epochs, 1e-9)
        decay_epochs = tf.maximum(self.total_epochs - self.warmup_epochs, 1e-3)
        progress = tf.clip_by_value((epoch - self.warmup_epochs) / decay_epochs, 0.0, 1.0)
        cosine = self.peak * (0.05 + 0.95 * 0.5 * (1.0 + tf.cos(math.pi * progress)))
        return tf.where(epoch < self.warmup_epochs, tf.minimum(warm, self.peak), cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup_epochs": self.warmup_epochs,
                "total_epochs": float(self.total_epochs.numpy()), "steps_per_epoch": self.steps_per_epoch}


def make_optimizer(cfg: Config, steps_per_epoch: int) -> tuple[keras.optimizers.Optimizer, WarmupCosine | None]:
    """The optimizer (Adam, or AdamW with weight decay; their update fused into one op per variable, see
    training/optimizers.py) and, for the cosine schedule, the schedule (to fit it to a time budget)."""
    schedule = None
    rate = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        schedule = rate = WarmupCosine(cfg.learning_rate, cfg.warmup_epochs, cfg.training_epochs, steps_per_epoch)
    options = {"global_clipnorm": cfg.clipnorm} if cfg.clipnorm else {}  # one norm over all gradients
    if cfg.weight_decay:
        optimizer = FusedAdamW(rate, weight_decay=cfg.weight_decay, **options)
        optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
        return optimizer, schedule
    return FusedAdam(rate, **options), schedule


# --- greedy-decoded scoring -------------------------------------------------------------------

def make_generator(model: FingerspellTransformer):
    return tf.function(lambda frames: model.generate(frames), reduce_retracing=True)


def predict_phrases(generate, batches: tf.data.Dataset, limit: int = 0) -> tuple[list[str], list[str]]:
    """Greedy predictions and targets for (frames, phrase) batches."""
    targets, predictions = [], []
    for frames, phrases in batches:
        ids = generate(frames).numpy()
        predictions += [vocab.decode(row) for row in ids]
        targets += [p.decode("utf-8") for p in phrases.numpy()]
        if limit and len(targets) >= limit:
            break
    if limit:
        targets, predictions = targets[:limit], predictions[:limit]
    return targets, predictions


# --- checkpoints ------------------------------------------------------------------------------

def _atomic_save_weights(model: keras.Model, path: Path) -> None:
    with atomic_path(path, suffix=".weights.h5") as tmp:  # Keras picks the format from the suffix
        model.save_weights(tmp)


def base_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer whose state a checkpoint keeps: under mixed precision, the one inside the loss scaling."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def save_last(model: keras.Model, run_dir: Path, state: dict) -> None:
    """The resume checkpoint, then the same weights as `last.weights.h5` (for export) and `state.json` (to read).

    `resume.npz` holds the model's weights, the optimizer's state and the epoch state in
    one file written atomically, so a run killed at any moment resumes from one consistent
    epoch. The optimizer state is the base optimizer's (not the loss-scale wrapper's), so it
    restores under either precision.
    """
    optimizer = base_optimizer(model.optimizer)
    state = {**state, "step": int(optimizer.iterations.numpy())}
    arrays = {f"model/{i:05d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.weights)}
    arrays.update({f"optimizer/{i:05d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(optimizer.variables)})
    with atomic_path(run_dir / CHECKPOINTS / RESUME_NAME, suffix=".npz") as tmp:
        np.savez(tmp, state=np.array(json.dumps(state)), **arrays)
    _atomic_save_weights(model, run_dir / CHECKPOINTS / "last.weights.h5")
    atomic_write_json(run_dir / CHECKPOINTS / "state.json", state)


def read_state(run_dir: Path) -> dict:
    """The epoch, best score, optimizer step and timing of the `last` checkpoint."""
    resume_path = run_dir / CHECKPOINTS / RESUME_NAME
    if resume_path.exists():
        try:
            with np.load(resume_path) as saved:
                return json.loads(str(saved["state"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise TrainingError(f"{resume_path}: not a readable checkpoint ({type(err).__name__}: {err}); the "
                                f"weights of the last epoch are also in last.weights.h5") from None
    state_path = run_dir / CHECKPOINTS / "state.json"  # a run saved before resume.npz existed
    if not state_path.exists():
        raise TrainingError(f"{run_dir}: nothing to resume (no {CHECKPOINTS}/{RESUME_NAME})")
    return json.loads(state_path.read_text())


def _assign_saved(variables: list, saved, prefix: str, path: Path) -> None:
    names = sorted(k for k in saved.files if k.startswith(prefix + "/"))
    if len(names) != len(variables):
        raise TrainingError(f"{path}: holds {len(names)} {prefix} variables, this run has {len(variables)}: "
                            f"the checkpoint belongs to another model configuration")
    for variable, name in zip(variables, names):
        value = saved[name]
        if tuple(value.shape) != tuple(variable.shape):
            raise TrainingError(f"{path}: {prefix} variable {variable.path} has shape {tuple(variable.shape)}, "
                                f"the checkpoint {tuple(value.shape)}: another model configuration")
        variable.assign(value)


def restore_last(model: keras.Model, run_dir: Path) -> dict:
    """Load the `last` checkpoint into a compiled model, optimizer included; return its state.

    Refuses (TrainingError) when the optimizer's step after loading is not the saved one:
    a run must never continue silently with a fresh optimizer.
    """
    state = read_state(run_dir)
    optimizer = base_optimizer(model.optimizer)
    model.optimizer.build(model.trainable_variables)
    path = run_dir / CHECKPOINTS / RESUME_NAME
    if path.exists():
        with np.load(path) as saved:
            _assign_saved(model.weights, saved, "model", path)
            _assign_saved(optimizer.variables, saved, "optimizer", path)
    else:  # a run saved before resume.npz: Keras' file, which only loads under the precision it was saved with
        path = run_dir / CHECKPOINTS / "last.weights.h5"
        model.load_weights(path)
    restored = int(optimizer.iterations.numpy())
    expected = state.get("step", restored if restored else None)
    if expected is None or restored != expected:
        raise TrainingError(f"{path}: the optimizer state was not restored (step {restored}, expected "
                            f"{expected if expected is not None else 'more than 0'}); this checkpoint only resumes "
                            f"with the mixed_precision setting it was saved with")
    return state


def load_trained_model(run_dir: Path, checkpoint: str = "best") -> tuple[FingerspellTransformer, Config]:
    """The model of a finished (or running) run, with `best` or `last` weights."""
    run_dir = Path(run_dir)
    cfg = Config.load(run_dir / "config.json")
    path = run_dir / CHECKPOINTS / f"{checkpoint}.weights.h5"
    if not path.exists():
        raise TrainingError(f"{path}: checkpoint not found (has the run finished an epoch?)")
    model = build_model(cfg, features.feature_dim(cfg.normalization, cfg.landmark_set))
    model.load_weights(path)
    return model, cfg


# --- the per-epoch bookkeeping ------------------------------------------------------------------

class EpochTimer(keras.callbacks.Callback):
    """Training time per epoch (up to its last batch: without the validation pass or scoring),
    and an optional time budget checked every batch."""

    def __init__(self, budget_seconds: float = 0.0, total: float = 0.0):
        super().__init__()
        self.budget_seconds = budget_seconds
        self.total = total
        self.epoch_seconds = 0.0
        # With several workers, the slowest worker's epoch time: the schedule fitted to a time budget
        # must be the same on every worker (multiworker.largest).
        self.agree: Callable[[float], float] = lambda seconds: seconds

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.epoch_seconds = time.perf_counter() - self._start
        if self.budget_seconds and self.total + self.epoch_seconds > self.budget_seconds:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds = self.agree(self.epoch_seconds)
        self.total += self.epoch_seconds


class RunKeeper(keras.callbacks.Callback):
    """After each epoch: stop on NaN, score, checkpoint, log, plot - in that order.

    The loss is checked once per epoch, on Keras' epoch mean (a NaN batch makes it NaN):
    reading it every batch would wait for the device after every step.
    """

    def __init__(self, run_dir: Path, cfg: Config, eval_batches, timer: EpochTimer,
                 steps_per_epoch: int, schedule: WarmupCosine | None, state: dict):
        super().__init__()
        self.run_dir, self.cfg, self.eval_batches, self.timer = run_dir, cfg, eval_batches, timer
        self.steps_per_epoch, self.schedule, self.state = steps_per_epoch, schedule, state
        self.epochs_this_session = 0
        self.nan_epoch: int | None = None
        self.generate = None
        self.sequences_seen = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.sequences_seen = 0

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution, Keras calls this every N-th step with the last step's index.
        self.sequences_seen = (batch + 1) * self.cfg.batch_size

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if not math.isfinite(float(logs.get("loss", 0.0))):
            self.nan_epoch = epoch + 1
            self.model.stop_training = True
            return  # keep the last good checkpoint untouched
        row = {"epoch": epoch + 1, "loss": logs.get("loss"), "val_loss": logs.get("val_loss"),
               "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
               "train_seconds": round(self.timer.epoch_seconds, 2),
               "train_sequences_per_second": round(self.sequences_seen / max(self.timer.epoch_seconds, 1e-9), 1)}
        last_epoch = epoch + 1 >= self.cfg.training_epochs or self.model.stop_training
        scoring = (epoch + 1) % self.cfg.eval_every == 0 or last_epoch
        if scoring:
            row.update(self._score(epoch))
            logs["val_score"] = row["val_score"]
        self.epochs_this_session += 1
        self.fit_schedule_to_budget(epoch + 1)
        self.state.update(epoch=epoch + 1, train_seconds=round(self.timer.total, 2))
        if self.schedule is not None:
            step = int(base_optimizer(self.model.optimizer).iterations.numpy())
            self.state["schedule_epoch"] = round(self.schedule.epoch_at(step), 6)
        save_last(self.model, self.run_dir, self.state)
        append_metrics(self.run_dir, row)
        logger.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                          if k != "epoch" and v is not None))
        if scoring:
            plot_curves(self.run_dir)

    def fit_schedule_to_budget(self, epochs_done: int) -> None:
        """With a time budget, end the cosine decay where the budget is expected to end.

        Uses the latest epoch's speed; the first epoch of a session (XLA compilation,
        cache filling) is skipped. The value is saved in the checkpoint state for `--resume`.
        """
        if self.schedule is None or not self.cfg.time_budget_minutes or self.epochs_this_session < 2:
            return
        seconds_left = max(self.cfg.time_budget_minutes * 60 - self.timer.total, 0.0)
        total = float(min(self.cfg.training_epochs, epochs_done + seconds_left / max(self.timer.epoch_seconds, 1e-9)))
        self.schedule.total_epochs.assign(total)
        self.state["budget_total_epochs"] = total

    def _score(self, epoch: int) -> dict:
        start = time.perf_counter()
        self.generate = self.generate or make_generator(self.model)
        targets, predictions = predict_phrases(self.generate, self.eval_batches, self.cfg.eval_max_sequences)
        value = metric.score(targets, predictions)
        if value > self.state.get("best_score", -math.inf):
            self.state.update(best_score=value, best_epoch=epoch + 1)
            _atomic_save_weights(self.model, self.run_dir / CHECKPOINTS / "best.weights.h5")
        logger.info("epoch %d: validation score %.4f on %d sequences (best %.4f at epoch %d)", epoch + 1, value,
                    len(targets), self.state["best_score"], self.state["best_epoch"])
        if self.cfg.show_examples_every and (epoch + 1) % self.cfg.show_examples_every == 0:
            for target, prediction in list(zip(targets, predictions))[:5]:
                logger.info("  target: %-36r prediction: %r", target, prediction)
        return {"val_score": round(value, 5), "eval_seconds": round(time.perf_counter() - start, 2)}


def append_metrics(run_dir: Path, row: dict) -> None:
    """Add an epoch's row to metrics.csv, rewriting the (small) file atomically so it is never torn."""
    rows = read_metrics(run_dir) + [{k: row.get(k, "") for k in METRIC_FIELDS}]
    text = io.StringIO()
    writer = csv.DictWriter(text, METRIC_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(run_dir / "metrics.csv", text.getvalue())


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_curves(run_dir: Path) -> Path:
    """curves.png: training/validation loss and the validation score per epoch."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    rows = read_metrics(run_dir)

    def series(key):
        points = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in ("", None)]
        return [p[0] for p in points], [p[1] for p in points]

    fig = Figure(figsize=(10, 4))
    ax_loss, ax_score = fig.subplots(1, 2)
    for key in ("loss", "val_loss"):
        ax_loss.plot(*series(key), marker=".", label=key)
    ax_loss.set(xlabel="epoch", ylabel="masked cross-entropy", title="loss")
    ax_loss.legend()
    ax_score.plot(*series("val_score"), marker=".", color="tab:green")
    ax_score.set(xlabel="epoch", ylabel="(N - D) / N", title="validation score")
    fig.tight_layout()
    out = Path(run_dir) / "curves.png"
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    return out


# --- the run ------------------------------------------------------------------------------------

# Operational keys: how long, where and how fast to train, and how often to look; not what is trained.
RESUMABLE_CHANGES = ("epochs", "time_budget_minutes", "distribute", "jit_compile", "mixed_precision", "cache",
                     "cache_memory_gb", "steps_per_execution", "batch_size", "trim_padding", "eval_every",
                     "eval_batch_size", "eval_max_sequences", "show_examples_every")


def new_run_dir(run_dir: Path, cfg: Config) -> None:
    """Create a run directory; refuse one that already holds a run (nothing a user has is overwritten)."""
    refuse_used(run_dir)
    (run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    for name in ("split.json", pipeline.VALIDATION_RECORDS):  # from an aborted start: the split is made anew
        (run_dir / name).unlink(missing_ok=True)
    cfg.save(run_dir / "config.json")
    vocab.write_character_map(run_dir)


def resumed_config(run_dir: Path, changes: dict | None = None) -> Config:
    """The run's saved config with the changes a resumed run may take (`RESUMABLE_CHANGES`: more epochs or
    time, other devices, precision, batch sizes, caching, evaluation cadence); saved once the run restored."""
    saved = run_dir / "config.json"
    if not saved.exists():
        raise TrainingError(f"{run_dir}: cannot --resume, no config.json there")
    changes = dict(changes or {})
    if refused := sorted(set(changes) - set(RESUMABLE_CHANGES)):
        raise TrainingError(f"a resumed run keeps its config ({saved}); only {list(RESUMABLE_CHANGES)} "
                            f"may change, not {refused}")
    return Config.from_dict({**Config.load(saved).to_dict(), **changes})


def train(data_dir: Path, run_dir: Path, cfg: Config, callbacks: list[keras.callbacks.Callback] | None = None) -> dict:
    """Start a new run; returns a summary with the best validation score.

    Extra Keras `callbacks` run after the run's own bookkeeping (checkpoints, metrics).
    """
    run_dir = Path(run_dir)
    place = multiworker.placement(cfg.distribute)
    if not place.chief:  # the chief refuses a used RUN_DIR: so does every worker, instead of waiting for it
        refuse_used(run_dir)
    with multiworker.worker_run_dir(run_dir, place, resume=False) as out:
        new_run_dir(out, cfg)
        with run_log(out):
            return _as_worker(_run(Path(data_dir), out, cfg, resume=False, callbacks=callbacks, shared=run_dir),
                              run_dir, place)


def resume(data_dir: Path, run_dir: Path, changes: dict | None = None,
           callbacks: list[keras.callbacks.Callback] | None = None) -> dict:
    """Continue a run where its last checkpoint stopped: weights, optimizer, epoch, schedule, split."""
    run_dir = Path(run_dir)
    cfg = resumed_config(run_dir, changes)
    place = multiworker.placement(cfg.distribute)
    with multiworker.worker_run_dir(run_dir, place, resume=True) as out:
        with run_log(out):
            return _as_worker(_run(Path(data_dir), out, cfg, resume=True, callbacks=callbacks, shared=run_dir),
                              run_dir, place)


def holds_run(run_dir: Path) -> bool:
    """Whether RUN_DIR holds a run's checkpoint (what `--resume` continues)."""
    return any((Path(run_dir) / CHECKPOINTS / name).exists() for name in (RESUME_NAME, "state.json"))


def refuse_used(run_dir: Path) -> None:
    if holds_run(run_dir):
        raise TrainingError(f"{run_dir} already holds a run: pass --resume to continue it, or another --out")


def _as_worker(summary: dict, run_dir: Path, place: multiworker.Placement) -> dict:
    """A worker's summary names the run it trained (not its temporary directory) and its place."""
    if place.task == "local":
        return summary
    return {**summary, "run_dir": str(run_dir), "task": place.task, "chief": place.chief, "workers": place.workers}


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[Path]:
    """Copy the package's log records to RUN_DIR/train.log while a run lasts (a resume appends).

    The run's own record of what happened, whatever the caller does with logging;
    the handler is removed afterwards so later runs in the process do not write here.
    """
    package = logging.getLogger("fingerspell")
    path = Path(run_dir) / LOG_NAME
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = package.level
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    package.addHandler(handler)
    try:
        yield path
    finally:
        package.removeHandler(handler)
        handler.close()
        package.setLevel(level)


def _run(data_dir: Path, run_dir: Path, cfg: Config, resume: bool, callbacks, shared: Path | None = None) -> dict:
    state = read_state(run_dir) if resume else {}
    # A resumed run draws new shuffles and augmentations instead of replaying epoch 1's.
    keras.utils.set_random_seed(cfg.seed + state.get("epoch", 0))
    runtime = resolve_runtime(cfg)
    logger.info("%s with %d replica(s) on %s; XLA %s, mixed precision %s", type(runtime.strategy).__name__,
                runtime.replicas, ", ".join(runtime.devices), "on" if runtime.jit_compile else "off",
                "on" if runtime.mixed_precision else "off")
    policy = keras.mixed_precision.global_policy()
    if runtime.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _fit(data_dir, run_dir, cfg, runtime, resume, state, callbacks, shared or run_dir)
    finally:
        keras.mixed_precision.set_global_policy(policy)  # an export in this process stays float32


def steps_per_epoch(n_train: int, batch_size: int, per_execution: int) -> tuple[int, int]:
    """(steps per epoch, steps per execution): whole batches, in whole executions of the compiled step
    (Keras would otherwise run the last execution of an epoch past its end)."""
    steps = n_train // batch_size
    per_execution = max(1, min(per_execution, steps))
    return steps - steps % per_execution, per_execution


def _fit(data_dir: Path, run_dir: Path, cfg: Config, runtime: Runtime, resume: bool, state: dict,
         callbacks, shared: Path) -> dict:
    """`shared`: the run's RUN_DIR (`run_dir` is a temporary directory on a multi_worker worker not the chief)."""
    start_epoch = state.get("epoch", 0)
    try:
        data = pipeline.split_datasets(data_dir, cfg, run_dir, resume=resume)
    except ValueError as err:
        raise TrainingError(f"{data_dir}: {err}") from None
    n_train, n_valid, split = data.n_train, data.n_valid, data.split
    steps, per_execution = steps_per_epoch(n_train, cfg.batch_size, runtime.steps_per_execution)
    if steps < 1:
        raise TrainingError(f"{data_dir}: {n_train} training sequences, fewer than one batch of {cfg.batch_size}")
    if cfg.batch_size % runtime.replicas:
        raise TrainingError(f"batch_size={cfg.batch_size} does not split evenly over {runtime.replicas} replicas; "
                            f"use a multiple of {runtime.replicas}")
    shuffle_buffer = min(n_train, 16384) if data.cached else 4096
    multi_worker = cfg.distribute == "multi_worker"
    if not multi_worker:  # multi_worker builds each worker's own (worker_batches below)
        train_batches = pipeline.training_batches(data.train, cfg, True, cfg.batch_size, seed=cfg.seed + start_epoch,
                                                  shuffle_buffer=shuffle_buffer)
    # Keras builds a distributed model from the first batch's replica shards, which must have one shape:
    # the validation loss takes a multiple of the replica count (the score still uses every sequence).
    # multi_worker validates on each worker's own copy of the model, not distributed: every sequence.
    n_valid_loss = n_valid if multi_worker else n_valid - n_valid % runtime.replicas
    valid_loss_batches = pipeline.training_batches(data.valid.take(n_valid_loss), cfg, False, cfg.batch_size)
    valid_records = data.valid
    if cfg.eval_max_sequences:  # a fixed random subset, not the first files' signers
        valid_records = valid_records.shuffle(n_valid, seed=cfg.seed, reshuffle_each_iteration=False).take(
            cfg.eval_max_sequences)
    eval_batches = pipeline.evaluation_batches(valid_records, cfg, cfg.eval_batch_size)

    with runtime.strategy.scope():
        model = build_model(cfg, features.feature_dim(cfg.normalization, cfg.landmark_set))
        optimizer, schedule = make_optimizer(cfg, steps)
        model.compile(optimizer=optimizer, jit_compile=runtime.jit_compile, steps_per_execution=per_execution)
        if resume:
            restore_last(model, run_dir)
            cfg.save(run_dir / "config.json")  # the changes take effect only once the checkpoint restored
        if multi_worker:
            model.optimizer.build(model.trainable_variables)  # its variables, mirrored: not inside a step
    info = {"cache": "memory" if data.cached else "stream", "train_records_gb": round(data.train_bytes / 1e9, 3),
            "steps_per_epoch": steps, "steps_per_execution": 1 if multi_worker else per_execution,
            "global_batch": cfg.batch_size, "replica_batch": cfg.batch_size // runtime.replicas}
    if multi_worker:
        place = multiworker.placement(cfg.distribute)
        logger.info("task %s of %d worker(s)%s, writing %s", place.task, place.workers,
                    " (chief)" if place.chief else "", run_dir)
        spread = multiworker.agreement_spread(runtime.strategy)
        most = multiworker.largest(spread)
        plan = pipeline.plan_shards(pipeline.shard_training_counts(data_dir, data.shards, split), place.workers)
        # The chief wrote RUN_DIR/config.json before this first agreement, which is the barrier after which
        # the others read it (check_shared_run_dir: a second agreement).
        multiworker.check_same_start(spread, start_epoch, int(base_optimizer(model.optimizer).iterations.numpy()),
                                     {"config": cfg.to_dict(), "steps": steps, "n_train": n_train, "n_valid": n_valid,
                                      "split": split["validation"], "plan": plan.by, "records": plan.records,
                                      "shards": [[p.name for p in s] for s in plan.shards]})
        multiworker.check_shared_run_dir(spread, shared)
        info.update(workers=len(plan.shards), **plan.describe())
    # Recorded once the run can go on: a refused resume leaves run.json (and config.json) as they were.
    write_run_info(run_dir, runtime, data_dir, start_epoch, resume, data=info)
    if schedule is not None:
        schedule.continue_from(int(base_optimizer(model.optimizer).iterations.numpy()),
                               state.get("schedule_epoch", start_epoch))
        if "budget_total_epochs" in state:
            schedule.total_epochs.assign(state["budget_total_epochs"])
        elif "budget_total_steps" in state:  # a run saved before the schedule ran in epochs
            schedule.total_epochs.assign(state["budget_total_steps"] / steps)
    if start_epoch >= cfg.training_epochs:
        logger.info("%s: already trained for %d epochs (epochs=%d); nothing to do", run_dir, start_epoch, cfg.training_epochs)
        return summarize(run_dir, state, model, n_train, n_valid)
    logger.info("training on %d sequences, validating on %d (held-out %ss: %s); %s parameters; %d steps per epoch "
                "in executions of %d", n_train, n_valid, split["key"], split["validation"],
                f"{model.count_params():,}", steps, per_execution)
    timer = EpochTimer(cfg.time_budget_minutes * 60, total=state.get("train_seconds", 0.0))
    keeper = RunKeeper(run_dir, cfg, eval_batches, timer, steps, schedule, state)
    # The progress bar first: it ends its line before the run's own log lines of the epoch.
    callbacks = [keras.callbacks.ProgbarLogger(), timer, keeper,
                 keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False), *(callbacks or [])]
    verbose = 1 if sys.stdout.isatty() else 2
    if multi_worker:
        timer.agree = most

        def worker_batches(context: tf.distribute.InputContext) -> tf.data.Dataset:
            records = pipeline.worker_training_records(data, cfg, plan, context.input_pipeline_id)
            return pipeline.worker_training_batches(records, cfg, context.get_per_replica_batch_size(cfg.batch_size),
                                                    seed=cfg.seed + start_epoch, shuffle_buffer=shuffle_buffer,
                                                    pipeline_id=context.input_pipeline_id)

        multiworker.fit(model, runtime.strategy, worker_batches, valid_loss_batches, epochs=cfg.training_epochs,
                        initial_epoch=start_epoch, steps=steps, validation_freq=cfg.eval_every, clipnorm=cfg.clipnorm,
                        callbacks=callbacks, verbose=verbose, most=most,
                        stop_within_epoch=bool(cfg.time_budget_minutes))
    else:
        model.fit(train_batches, validation_data=valid_loss_batches, epochs=cfg.training_epochs, initial_epoch=start_epoch,
                  steps_per_epoch=steps, validation_steps=math.ceil(n_valid_loss / cfg.batch_size), shuffle=False,
                  validation_freq=cfg.eval_every, callbacks=callbacks, verbose=verbose)
    if keeper.nan_epoch is not None:
        good = state.get("epoch", start_epoch)
        raise TrainingError(
            f"loss became NaN in epoch {keeper.nan_epoch}: training stopped; the last good "
            f"checkpoint is {run_dir / CHECKPOINTS / RESUME_NAME} (epoch {good}). Try a lower learning_rate.")
    return summarize(run_dir, state, model, n_train, n_valid)


def summarize(run_dir: Path, state: dict, model: keras.Model, n_train: int, n_valid: int) -> dict:
    rows = read_metrics(run_dir)
    speeds = [float(r["train_sequences_per_second"]) for r in rows[1:] if r["train_sequences_per_second"]]
    summary = {"run_dir": str(run_dir), "epochs": state.get("epoch", 0), "best_score": state.get("best_score"),
               "best_epoch": state.get("best_epoch"), "train_seconds": state.get("train_seconds"),
               "train_sequences": n_train, "validation_sequences": n_valid, "parameters": model.count_params(),
               "train_sequences_per_second": round(float(np.median(speeds)), 1) if speeds else None}
    atomic_write_json(run_dir / "summary.json", summary)
    return summary
