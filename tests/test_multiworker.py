"""Training on several machines (distribute=multi_worker): TF_CONFIG, sharding, and two workers on localhost."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fingerspell.config import Config
from fingerspell.data import pipeline
from fingerspell.data.records import ShardWriter, serialize_sequence
from fingerspell.training.multiworker import Placement, placement
from fingerspell.training.runtime import TrainingError

REPO = Path(__file__).resolve().parent.parent
FILES, PER_FILE = 3, 8  # one file's signer is held out; each worker trains on one file of 8 sequences
# Each file its own phrases, of different lengths: the workers' batches hold different token counts.
PHRASES = [["abc", "hello", "12 main st", "fs", "zq", "ok go", "x", "yes"],
           ["a", "b", "cd", "e", "fg", "h", "ij", "k"],
           ["the quick brown fox jumps", "over the lazy dog now", "1600 pennsylvania ave nw", "lorem ipsum dolor",
            "sit amet consectetur", "adipiscing elit sed", "do eiusmod tempor", "incididunt ut labore"]]
# Dropout and augmentation draw random numbers per replica; off, a step is a pure function of its batch.
COMMON = ["num_hid=64", "ff_dim=128", "enc_layers=1", "batch_size=16", "show_examples_every=0", "dropout=0",
          *(f"{name}=0" for name in Config().augmentation_probabilities),
          "lr_schedule=constant", "eval_every=2"]
RECIPE = [*COMMON, "distribute=multi_worker"]


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker",
                                                                                       "index": index}})


def test_placement_reads_tf_config():
    assert placement("auto") == Placement("local", True, 1)
    assert placement("multi_worker", {}) == Placement("worker:0", True, 1)
    two = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
    assert placement("multi_worker", {"TF_CONFIG": json.dumps(two)}) == Placement("worker:1", False, 2)
    with_chief = {"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}
    assert placement("multi_worker", {"TF_CONFIG": json.dumps(with_chief)}) == Placement("worker:0", False, 3)
    with_chief["task"] = {"type": "chief", "index": 0}
    assert placement("multi_worker", {"TF_CONFIG": json.dumps(with_chief)}).chief
    with pytest.raises(TrainingError, match="chief` and `worker` tasks only"):
        placement("multi_worker", {"TF_CONFIG": json.dumps({"cluster": {"ps": ["a:1"]},
                                                            "task": {"type": "ps", "index": 0}})})
    with pytest.raises(TrainingError, match="not a cluster description"):
        placement("multi_worker", {"TF_CONFIG": "{"})


def test_shards_are_planned_by_file_balanced_or_by_data():
    counts = {Path(f"{i}.tfrecord"): n for i, n in enumerate([50, 10, 30, 0, 20])}
    plan = pipeline.plan_shards(counts, 2)
    assert plan.by == "file" and sorted(plan.records) == [50, 60]  # 50 | 30 + 20 + 10
    assert all(Path("3.tfrecord") not in s for s in plan.shards)  # no training records: not read
    by_data = pipeline.plan_shards(counts, 5)  # four useful shards for five workers: every n-th record
    assert by_data.by == "data" and by_data.records == [22, 22, 22, 22, 22]
    assert all(s == sorted(counts) for s in by_data.shards) and "4 shard(s)" in by_data.why
    # Files that cannot be balanced within 1.2x: by data, not oversampling the lighter worker's files.
    for loads, workers in (([50, 10, 30, 0, 20], 3), ([1000, 10], 2), ([100] * 4, 3)):
        plan = pipeline.plan_shards({Path(f"{i}.tfrecord"): n for i, n in enumerate(loads)}, workers)
        assert plan.by == "data" and "oversampled" in plan.describe()["sharding_why"], (loads, workers)
    assert pipeline.plan_shards({Path(f"{i}.tfrecord"): 100 for i in range(6)}, 3).by == "file"


def test_each_worker_augments_and_shuffles_its_own_way(tmp_path):
    """Every worker sets the same global seed, from which the augmentation's random ops take their seeds when
    the dataset's functions are traced: each worker's pipeline must trace them under its own; pipeline 0
    exactly as one process does. (The seeds, read from the dataset's graph: the values a parallel map draws
    are not reproducible from one build to the next anyway.)"""
    import tensorflow as tf
    from fingerspell.data import records

    shard = write_shards(tmp_path) / "train" / "100.tfrecord"
    cfg = Config()  # augmentation on

    def random_op_seeds(pipeline_id=None) -> list:
        tf.random.set_seed(7)
        ds = records.load_dataset([shard])
        if pipeline_id is None:
            batches = pipeline.training_batches(ds, cfg, True, 4, seed=1)
        else:
            batches = pipeline.worker_training_batches(ds, cfg, 4, seed=1, shuffle_buffer=4096, pipeline_id=pipeline_id)
        graph = tf.compat.v1.GraphDef.FromString(batches._as_serialized_graph().numpy())
        nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
        return sorted((n.op, n.attr["seed"].i, n.attr["seed2"].i) for n in nodes
                      if n.op.startswith("Random") or n.op == "ShuffleDatasetV3")

    one, zero, other = random_op_seeds(), random_op_seeds(0), random_op_seeds(1)
    assert len(one) >= 5 and zero == one
    assert {seed for _, seed, _ in other if seed}.isdisjoint({seed for _, seed, _ in one})
    assert tf.random.uniform([]).shape == []  # the global seed was set back: eager random ops still work


def test_a_non_finite_gradient_anywhere_is_non_finite_everywhere():
    """Without clipping, a worker whose gradients overflow makes every worker's NaN: Keras' loss-scale
    optimizer then skips the step on all of them (deciding apart, they would hang in the gradient all-reduce)."""
    import tensorflow as tf
    from fingerspell.training.multiworker import agree_finite

    finite = [tf.constant([1.0, 2.0]), tf.constant([3.0])]
    grads, loss = agree_finite(finite, tf.constant(0.5))
    assert float(loss) == 0.5 and all(np.isfinite(g.numpy()).all() for g in grads)
    grads, _ = agree_finite([tf.constant([1.0, np.inf]), tf.constant([3.0], tf.float16)], tf.constant(0.5))
    assert all(np.isnan(g.numpy()).all() for g in grads)


def test_workers_must_agree_on_start_config_and_run_dir(tmp_path):
    from fingerspell.training import multiworker

    def spread_with(other: dict):  # this worker's values, and another worker's where `other` says
        def spread(values):
            theirs = np.array([other.get(i, v) for i, v in enumerate(values)])
            return np.minimum(values, theirs), np.maximum(values, theirs)
        return spread

    settings = {"config": Config().to_dict(), "steps": 3}
    multiworker.check_same_start(spread_with({}), 2, 30, settings)
    with pytest.raises(TrainingError, match="epoch 1 to 2"):
        multiworker.check_same_start(spread_with({0: 1}), 2, 30, settings)
    with pytest.raises(TrainingError, match="config, data or shard plan"):
        other = multiworker.fingerprint({**settings, "steps": 4})
        multiworker.check_same_start(spread_with({2: other}), 2, 30, settings)
    (tmp_path / "config.json").write_text("{}")
    multiworker.check_shared_run_dir(spread_with({}), tmp_path)
    with pytest.raises(TrainingError, match="not one folder that every worker reads"):
        multiworker.check_shared_run_dir(spread_with({0: -1}), tmp_path)  # another worker cannot read it


def test_a_worker_copies_only_the_checkpoint_split_and_config(tmp_path):
    from fingerspell.training import multiworker

    run, into = tmp_path / "run", tmp_path / "into"
    for name in ("checkpoints/resume.npz", "checkpoints/last.weights.h5", "checkpoints/.tmp-resume.npz.x.npz",
                 "split.json", "config.json", "metrics.csv", "train.log", "tensorboard/events", ".tmp-split.json.y"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(name)
    into.mkdir()
    multiworker.copy_run(run, into)
    copied = sorted(str(p.relative_to(into)) for p in into.rglob("*") if p.is_file())
    assert copied == ["checkpoints/resume.npz", "config.json", "split.json"]
    assert (into / "checkpoints/resume.npz").read_text() == "checkpoints/resume.npz"


def test_auto_resume_keeps_a_longer_run_and_logs_its_changes(tmp_path, caplog):
    from fingerspell.cli import auto_resume_changes, build_parser

    Config().override(["epochs=60", "time_budget_minutes=90", "batch_size=32"]).save(tmp_path / "config.json")

    def changes(*overrides):
        args = build_parser().parse_args(["train", "--auto-resume", "--data-dir", str(tmp_path), "--out",
                                          str(tmp_path), *overrides])
        return auto_resume_changes(args)

    with caplog.at_level("INFO", logger="fingerspell"):
        assert changes("epochs=30", "time_budget_minutes=90", "batch_size=64") == {"batch_size": 64}
    assert "keeping the run's epochs=60" in caplog.text and "batch_size 32 -> 64" in caplog.text
    assert changes("epochs=80", "time_budget_minutes=0", "batch_size=32") == {"epochs": 80,
                                                                               "time_budget_minutes": 0.0}
    assert "time_budget_minutes" not in changes("epochs=60", "time_budget_minutes=30", "batch_size=32")
    # epochs=0 trains 30 epochs without a budget: with the budget gone too, the saved 60 stay
    assert changes("epochs=0", "time_budget_minutes=0", "batch_size=32") == {"time_budget_minutes": 0.0}


def test_auto_resume_never_lowers_the_epochs_of_a_budget_only_or_older_run(tmp_path):
    from fingerspell.cli import auto_resume_changes, build_parser

    def changes(*overrides):
        args = build_parser().parse_args(["train", "--auto-resume", "--data-dir", str(tmp_path), "--out",
                                          str(tmp_path), *overrides])
        return auto_resume_changes(args)

    Config().override(["time_budget_minutes=60"]).save(tmp_path / "config.json")
    assert changes("time_budget_minutes=60") == {}
    # without its budget the run would stop at 30 epochs: it keeps the cap the budget gave it
    assert changes() == {"time_budget_minutes": 0.0, "epochs": Config(time_budget_minutes=60).training_epochs}
    # a config.json written before presets (frame_len, boolean augmentations): the same command changes nothing
    old = {k: v for k, v in Config.from_dict({"preset": "seed"}).to_dict().items()
           if k not in ("preset", "max_frames", "padding_mask", "encoder", "ctc_weight", "decoder")}
    (tmp_path / "config.json").write_text(json.dumps({**old, "frame_len": 128}))
    assert changes() == {}


def test_batch_size_and_learning_rate_are_global():
    helps = {f.name: f.metadata["help"] for f in Config.__dataclass_fields__.values()}
    assert "global" in helps["batch_size"] and "global" in helps["learning_rate"]


def write_shards(root: Path) -> Path:
    """FILES shards of PER_FILE random sequences of its own phrases, one signer per file."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    for f in range(FILES):
        with ShardWriter(root / "train" / f"{100 + f}.tfrecord") as writer:
            for i, phrase in enumerate(PHRASES[f]):
                writer.write(serialize_sequence(rng.random((int(rng.integers(20, 60)), 156), dtype=np.float32),
                                                phrase, f * PER_FILE + i, f + 1, 100 + f))
    return root


def free_ports(n: int) -> list[int]:
    """Ports free now; a worker may still lose one to another process before it binds it (a small race:
    `two_workers` starts the pair again once when a worker could not bind)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "fingerspell", "train", *args], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


#: Generous (three TensorFlow processes share this machine's cores); a hang still fails.
TIMEOUT = 900
BIND_ERRORS = ("address already in use", "failed to bind", "could not start grpc server")


def finish(procs: list[subprocess.Popen], logs: list[Path], timeout: float = TIMEOUT) -> None:
    """Wait for every process; kill them all if one fails or hangs, and show its log."""
    deadline = time.monotonic() + timeout
    try:
        for proc, log in zip(procs, logs):
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, f"{log.name} exited {proc.returncode}:\n{log.read_text()[-4000:]}"
    except subprocess.TimeoutExpired:
        raise AssertionError(f"timed out: {[log.read_text()[-2000:] for log in logs]}") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def two_workers(data: Path, run: Path, extra: list[str], env: dict, tmp: Path, name: str) -> None:
    """Two workers, each with its own TMPDIR (tmp/NAME-tmpI): started again once if one could not bind its port."""
    for attempt in range(2):
        ports = free_ports(2)
        procs, logs = [], []
        for index in range(2):
            logs.append(tmp / f"{name}-worker{index}.log")
            own_tmp = tmp / f"{name}-tmp{index}"
            own_tmp.mkdir(exist_ok=True)
            procs.append(start(["--auto-resume", "--data-dir", str(data), "--out", str(run), *RECIPE, *extra],
                               {**env, "TF_CONFIG": tf_config(ports, index), "TMPDIR": str(own_tmp)}, logs[-1]))
        try:
            return finish(procs, logs)
        except AssertionError:
            if attempt or not any(e in log.read_text().lower() for log in logs for e in BIND_ERRORS):
                raise


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Two workers train 2 epochs of one step, stop, and are started again for a 3rd of two smaller steps;
    one process (the same loop, without TF_CONFIG) trains the same 2 epochs."""
    tmp = tmp_path_factory.mktemp("multiworker")
    data = write_shards(tmp / "data")
    one_tmp = tmp / "one-tmp"
    one_tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
           "TMPDIR": str(one_tmp)}
    env.pop("TF_CONFIG", None)
    # The same loop in one process (multi_worker without TF_CONFIG): Keras' own (distribute=none) feeds Adam
    # sparse embedding gradients, which differ from the second step on (README).
    one = start(["--data-dir", str(data), "--out", str(tmp / "one"), *RECIPE, "epochs=2"], env, tmp / "one.log")
    two_workers(data, tmp / "two", ["epochs=2"], env, tmp, "first")
    finish([one], [tmp / "one.log"])
    first = {"leftovers": sorted(os.listdir(tmp / "first-tmp1"))}
    two_workers(data, tmp / "two", ["epochs=3", "batch_size=8"], env, tmp, "restart")
    return {"one": tmp / "one", "two": tmp / "two", "first": first, "tmp": tmp}


def metrics(run: Path) -> list[dict]:
    from fingerspell.training.trainer import read_metrics
    return read_metrics(run)


@pytest.mark.slow
def test_two_workers_write_one_run_and_restart_from_its_checkpoint(runs):
    two, tmp = runs["two"], runs["tmp"]
    assert runs["first"]["leftovers"] == []  # worker 1 wrote into a temporary directory, removed at its end
    assert [int(r["epoch"]) for r in metrics(two)] == [1, 2, 3]
    info = json.loads((two / "run.json").read_text())
    assert info["replicas"] == 2 and info["workers"] == 2 and info["sharding"] == "file"
    assert info["worker_train_records"] == [8, 8]
    # The restart took the command's new batch size: two steps of 8 (4 per worker) in epoch 3.
    assert info["global_batch"] == 8 and info["replica_batch"] == 4 and info["steps_per_epoch"] == 2
    saved = json.loads((two / "config.json").read_text())
    assert saved["epochs"] == 3 and saved["batch_size"] == 8
    # The restarted workers continued from the checkpoint of epoch 2, at its optimizer step.
    assert info["start_epoch"] == 2 and [h["start_epoch"] for h in info["history"]] == [0]
    assert json.loads((two / "checkpoints" / "state.json").read_text())["step"] == 2 + 2
    assert np.isfinite(float(metrics(two)[-1]["loss"]))
    for index in range(2):  # each worker logged what --auto-resume changed
        log = (tmp / f"restart-worker{index}.log").read_text()
        assert "--auto-resume: batch_size 16 -> 8" in log and "--auto-resume: epochs 2 -> 3" in log
    log = (two / "train.log").read_text()
    assert "task worker:0 of 2 worker(s) (chief)" in log and "worker:1" not in log
    for name in ("checkpoints/resume.npz", "checkpoints/best.weights.h5", "split.json", "validation.tfrecord",
                 "curves.png", "config.json"):
        assert (two / name).exists(), name


@pytest.mark.slow
def test_two_workers_train_as_one_process_on_the_same_global_batch(runs):
    """Epochs 1-2 are one step each on all 16 training sequences (8 per worker, one file each, of different
    phrase lengths, so the workers hold different token counts): whatever the order, two workers and one
    process of the same loop (multi_worker without TF_CONFIG: one replica, nothing to reduce) see the same
    global batch and must give the same loss, and the same validation loss (every held-out sequence, on
    either). What this proves: the cross-worker reduction; the loss is the global token mean (a mean of the
    two per-worker means differs when the token counts do), gradients are summed and clipped by their global
    norm. What it does not: that the loop matches Keras' model.fit (distribute=none gives Adam sparse
    embedding gradients: 1.2e-5 apart in the validation loss after two steps here, see README), nor the order
    of batches over several steps, which differs between one process and two workers (epoch 3, two steps of
    4 sequences per worker, is only checked to run and to count its steps).

    Tolerance: the two differ only in the order float32 sums are taken: a relative error of a few float32
    epsilons (1.2e-7) per step, which Adam's normalised steps carry over; asserted: 1e-5, below what a
    wrong reduction gives (a mean of per-worker means, or gradients clipped per worker, moved the loss
    by 2e-5 to 6e-5 in epochs 2-3 even with equal token counts).
    """
    one, two = metrics(runs["one"]), metrics(runs["two"])
    assert [int(r["epoch"]) for r in one] == [1, 2]
    np.testing.assert_allclose([float(r["loss"]) for r in two[:2]], [float(r["loss"]) for r in one], rtol=1e-5)
    np.testing.assert_allclose(float(two[1]["val_loss"]), float(one[1]["val_loss"]), rtol=1e-5)
