"""Training on several machines: `distribute=multi_worker`, a `tf.distribute.MultiWorkerMirroredStrategy`
configured by `TF_CONFIG`, driven by a small training loop of our own instead of `model.fit`.

Why not `model.fit`: with Keras 3.15.1 on TensorFlow 2.19.1 it fails under this strategy before the first
step, where Keras reduces the first batch across workers to build the model ("Attempt to convert a value
(PerReplica:...) ... to a Tensor", keras-team/keras#20585), and, past that, where it reduces the scalar
loss along axis 0 ("Invalid reduction dimension 0 for input with 0 dimensions", tensorflow#72388). This
loop runs the model's own loss under `strategy.run`, as TensorFlow's multi-worker guide does, and drives
the run's Keras callbacks (checkpoints, metrics, time budget) itself, so nothing else changes.

Every worker runs the same program. The chief (task `chief`, or `worker` 0 when there is none) writes the
run directory; any other worker writes the same files into a temporary directory that is removed at the
end, and on `--resume` starts from a copy of the chief's checkpoint, which it must be able to read (one
RUN_DIR on shared storage: checked at the start, `check_shared_run_dir`). Nothing a worker does alone (saving, validation, greedy decoding) is a
collective operation: each reads its own copy of the mirrored variables. What must be equal on every worker
(when to stop, an epoch's time for the time budget, the checkpoint it started from, the config, the data and
the shard plan) is agreed through an all-reduce; a mismatch stops every worker with the same error instead of
leaving them in collectives that never match.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from fingerspell.model.transformer import FingerspellTransformer
from fingerspell.training.runtime import TrainingError

logger = logging.getLogger(__name__)

#: What a non-chief worker copies from the chief's run directory when it resumes: the checkpoint (one
#: self-contained file, replaced atomically, so one epoch's weights, optimizer and state together; or, from a
#: run saved before it existed, the weights and state), the split and the config. Nothing the chief rewrites
#: piecemeal (metrics, curves, logs) and none of atomic_path's temporary files.
COPIED = ("checkpoints/resume.npz", "split.json", "config.json", "validation.tfrecord")
COPIED_OLD_RUN = ("checkpoints/last.weights.h5", "checkpoints/state.json")
COPY_ATTEMPTS = 5


@dataclass(frozen=True)
class Placement:
    """This process's place in the cluster that `TF_CONFIG` describes."""

    task: str  # "chief:0", "worker:1"; "local" without multi_worker
    chief: bool  # writes the run directory
    workers: int  # processes that train (chief and workers)


def placement(distribute: str, environ: dict | None = None) -> Placement:
    """Where this process trains: from `TF_CONFIG` with `distribute=multi_worker`, else one local process."""
    if distribute != "multi_worker":
        return Placement("local", True, 1)
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw:  # MultiWorkerMirroredStrategy without TF_CONFIG trains as one worker
        return Placement("worker:0", True, 1)
    try:
        spec = json.loads(raw)
        cluster, task = spec["cluster"], spec["task"]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise TrainingError(f"TF_CONFIG is not a cluster description ({type(err).__name__}: {err}); expected "
                            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
                            ) from None
    if kind not in ("chief", "worker") or set(cluster) - {"chief", "worker"}:
        raise TrainingError(f"TF_CONFIG: multi_worker trains with `chief` and `worker` tasks only, not "
                            f"{sorted(set(cluster) | {kind})}")
    if index >= len(cluster.get(kind, [])):
        raise TrainingError(f"TF_CONFIG: task {kind}:{index} is not in the cluster {cluster}")
    chief = kind == "chief" or (kind == "worker" and index == 0 and not cluster.get("chief"))
    return Placement(f"{kind}:{index}", chief, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


@contextlib.contextmanager
def worker_run_dir(run_dir: Path, place: Placement, resume: bool) -> Iterator[Path]:
    """The directory this worker writes: RUN_DIR for the chief; for any other worker a temporary one (removed
    afterwards) that, on resume, starts as a copy of the chief's checkpoint, split and config (`copy_run`)."""
    if place.chief:
        yield run_dir
        return
    temporary = Path(tempfile.mkdtemp(prefix=f"fingerspell-{place.task.replace(':', '')}-"))
    try:
        if resume:
            copy_run(run_dir, temporary)
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def copy_run(run_dir: Path, into: Path, attempts: int = COPY_ATTEMPTS) -> None:
    """Copy what a resumed run reads (`COPIED`) from the chief's RUN_DIR, which the chief may be writing
    (a worker restarted alone): each file is read once from its start (a file the chief replaces meanwhile
    is read whole, old or new), and a copy that fails (a file renamed away mid-read, storage without atomic
    renames) is tried again. The checkpoint is one file, so the copy never mixes epochs; whether it is the
    chief's latest is checked with every other worker at the start (`check_same`)."""
    names = COPIED if (run_dir / COPIED[0]).exists() else COPIED[1:] + COPIED_OLD_RUN
    for name in names:
        source, target = run_dir / name, into / name
        for attempt in range(attempts):
            try:
                if not source.exists():
                    break  # validation.tfrecord is rewritten from the shards; a missing checkpoint is reported later
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                break
            except OSError as err:
                if attempt == attempts - 1:
                    raise TrainingError(f"cannot copy {source} from the chief's run directory ({err})") from None
                logger.warning("copying %s failed (%s); trying again", source, err)
                time.sleep(1.0 + attempt)


# --- agreement between workers --------------------------------------------------------------------

def largest(spread: Callable[[list[float]], tuple[np.ndarray, np.ndarray]]) -> Callable[[float], float]:
    """`most(x)`: the largest `x` over all workers, through `spread` (`agreement_spread`: every worker must
    call it, in the same order)."""
    return lambda value: float(spread([value])[1][0])


def agreement_spread(strategy: tf.distribute.Strategy) -> Callable[[list[float]], tuple[np.ndarray, np.ndarray]]:
    """`spread(values)`: (the smallest, the largest) of each value over all workers, in one all-gather (every
    worker must call it, in the same order, with as many values). float64: integers below 2^53 are exact."""
    @tf.function(reduce_retracing=True)
    def extremes(values):
        def replica(v):  # ReduceOp has no MAX: gather every replica's values
            both = tf.distribute.get_replica_context().all_gather(tf.stack([v, -v])[None], axis=0)
            return tf.reduce_max(both, axis=0)
        return strategy.experimental_local_results(strategy.run(replica, args=(values,)))[0]

    def spread(values):
        high, negated_low = extremes(tf.constant(values, tf.float64)).numpy()
        return -negated_low, high
    return spread


def fingerprint(value) -> int:
    """A 52-bit hash of `value` (JSON with sorted keys, or bytes): exact in float64, for `agreement_spread`."""
    data = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True, default=str).encode()
    return int(hashlib.sha256(data).hexdigest()[:13], 16)


def check_same(spread, values: dict[str, float], advice: str) -> None:
    """Stop every worker (the same TrainingError everywhere) unless each of `values` is equal on all."""
    low, high = spread([float(v) for v in values.values()])
    differ = [f"{name} {lo:.0f} to {hi:.0f}" if name in ("epoch", "optimizer step") else name
              for name, lo, hi in zip(values, low, high) if lo != hi]
    if differ:
        raise TrainingError(f"the workers disagree on {', '.join(differ)}: {advice}")


def check_same_start(spread, epoch: int, step: int, settings: dict) -> None:
    """Refuse a start where workers restored different checkpoints (RUN_DIR not shared, copied by hand, or a
    worker restarted alone read an older one) or run different configs or data (a job spec updated on some
    workers only: different epochs or clipnorm would run different collectives and hang; a different batch
    size or data would train on a wrong global batch). The first agreement of a run: also its barrier (the
    chief has written RUN_DIR/config.json before it, see `check_shared_run_dir`)."""
    check_same(spread, {"epoch": epoch, "optimizer step": step, "config, data or shard plan": fingerprint(settings)},
               "every worker must run the same command on the same --data-dir, and read the chief's RUN_DIR "
               "(one folder on shared storage); if a worker was restarted alone, restart them all")


def check_shared_run_dir(spread, run_dir: Path) -> None:
    """After `check_same_start` (so the chief has written it): every worker hashes RUN_DIR/config.json as it
    reads it there, and they must agree: a RUN_DIR that is not shared is found now, not after a crash."""
    try:
        seen = fingerprint((Path(run_dir) / "config.json").read_bytes())
    except OSError:
        seen = -1
    check_same(spread, {"RUN_DIR/config.json": seen},
               f"{run_dir} is not one folder that every worker reads (shared storage: NFS, Filestore, /gcs), "
               f"or shows some workers a stale copy")


# --- the step and the loop --------------------------------------------------------------------------

def make_train_step(model: FingerspellTransformer, strategy: tf.distribute.Strategy, clipnorm: float):
    """One optimizer step on the next global batch; returns its loss.

    The loss: each replica sums its tokens' (and its sequences' CTC) losses and divides by the token (and
    alignable sequence) count of the whole global batch, so the loss and its gradient are those of the
    global batch, however it is split (a mean of per-replica means would weigh a replica with short phrases
    more). The optimizer sums the replicas'
    gradients. They are dense: the embedding tables' sparse gradients would reach Adam as rows gathered from
    every replica, which Keras squares row by row, so a row two replicas share would count twice in its
    second moment. Global-norm clipping: Keras' optimizer clips each replica's gradient before the sum,
    so the step clips itself, by the norm of the summed gradient (`clip_global_norm`).
    """
    variables = model.trainable_variables
    optimizer = model.optimizer
    base = getattr(optimizer, "inner_optimizer", optimizer)
    base.global_clipnorm = None  # clipped below, on the global gradient
    add = tf.distribute.ReduceOp.SUM

    def replica_step(batch):
        (frames, dec_in), targets = batch
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            terms = model.loss_terms(frames, dec_in, targets, training=True)
            counts = {k: v for k, v in terms.items() if k.endswith("_count")}
            loss = model.combined_loss(terms, context.all_reduce(add, counts))
            scaled = optimizer.scale_loss(loss)
        # ZERO: with ctc_weight=1 the decoder gets no gradient (Keras' own loop drops such variables)
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(
            scaled, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)]
        if clipnorm:  # the gradients are of the scaled loss (mixed precision): so is their norm
            grads, loss = clip_global_norm(grads, loss, clipnorm * optimizer.scale_loss(tf.constant(1.0)))
        else:
            grads, loss = agree_finite(grads, loss)
        optimizer.apply(grads, variables)
        return loss

    @tf.function
    def step(iterator):
        return strategy.experimental_local_results(strategy.run(replica_step, args=(next(iterator),)))[0]
    return step


def clip_global_norm(grads: list[tf.Tensor], loss: tf.Tensor, clipnorm: tf.Tensor) -> tuple[list, tf.Tensor]:
    """This replica's gradients times `clipnorm / norm` (at most 1), `norm` being the global norm of the
    gradients summed over replicas: Keras' formula, on the gradient one process would clip. Costs one more
    all-reduce of the gradients (the loss is summed with them); a non-finite norm gives NaN, as in Keras."""
    summed, loss = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, (grads, loss))
    norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in summed]))
    scale = clipnorm * tf.minimum(1.0 / norm, 1.0 / clipnorm) + (norm - norm)
    return [g * scale for g in grads], loss


def agree_finite(grads: list[tf.Tensor], loss: tf.Tensor) -> tuple[list, tf.Tensor]:
    """Without clipping: this replica's gradients, made NaN when any replica's are not finite, and the summed
    loss (one all-reduce of two scalars). Keras' LossScaleOptimizer decides from this replica's own gradients
    whether to apply them (and all-reduce them) or skip the step: workers deciding apart (one overflowing
    while the loss scale drops) would leave one in an all-reduce the others never join. Clipping does the
    same through the global norm."""
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
    bad, loss = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, (1.0 - tf.cast(finite, tf.float32), loss))
    poison = tf.where(bad > 0, tf.constant(float("nan")), tf.constant(0.0))
    return [g + tf.cast(poison, g.dtype) for g in grads], loss


def validation_loss(model: FingerspellTransformer, batches: tf.data.Dataset) -> float:
    """The mean of the batches' losses (as Keras' evaluation reports it), on this worker's copy of the model."""
    @tf.function(reduce_retracing=True)
    def batch_loss(inputs, targets):
        return model.combined_loss(model.loss_terms(*inputs, targets))

    losses = [float(batch_loss(inputs, targets)) for inputs, targets in batches]
    return float(np.float32(np.mean(losses))) if losses else float("nan")


def fit(model: FingerspellTransformer, strategy: tf.distribute.Strategy,
        batches_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset], validation: tf.data.Dataset, *,
        epochs: int, initial_epoch: int, steps: int, validation_freq: int, clipnorm: float,
        callbacks: list[keras.callbacks.Callback], verbose: int, most: Callable[[float], float],
        stop_within_epoch: bool = False) -> None:
    """`model.fit` for this strategy: `steps` global batches per epoch from `batches_fn`'s per-worker datasets
    (endless, so every worker runs the same number of steps), the validation loss every `validation_freq`
    epochs, the callbacks at the same points as Keras calls them. A stop asked by any worker's callback
    (time budget, NaN loss) stops every worker after the same step (`most`: `largest(agreement_spread(strategy))`): agreed
    after every step with `stop_within_epoch` (a time budget), else once per epoch, at its end (a stop asked
    within an epoch then takes effect there: one collective less per step)."""
    step = make_train_step(model, strategy, clipnorm)
    iterator = iter(strategy.distribute_datasets_from_function(batches_fn))
    hooks = keras.callbacks.CallbackList(callbacks, model=model, verbose=verbose, epochs=epochs, steps=steps)

    def stop_agreed() -> bool:
        model.stop_training = most(float(model.stop_training)) > 0
        return model.stop_training

    model.stop_training = False
    hooks.on_train_begin()
    logs: dict = {}
    for epoch in range(initial_epoch, epochs):
        hooks.on_epoch_begin(epoch)
        total = 0.0
        for batch in range(steps):
            hooks.on_train_batch_begin(batch)
            total += float(step(iterator))  # the progress bar shows the loss after every batch
            logs = {"loss": total / (batch + 1)}
            hooks.on_train_batch_end(batch, logs)
            if stop_within_epoch and stop_agreed():
                break
        if (epoch + 1) % validation_freq == 0:
            logs["val_loss"] = validation_loss(model, validation)
        hooks.on_epoch_end(epoch, logs)
        if stop_agreed():
            break
    hooks.on_train_end(logs)
