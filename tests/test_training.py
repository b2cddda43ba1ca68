"""Training: the tf.data pipeline, the learning proof on 16 sequences, runs, resume and errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from bench.seed_recipe import seed_config
from fingerspell import metric
from fingerspell.data import pipeline, records, vocab
from fingerspell import features
from fingerspell.config import Config
from fingerspell.model.transformer import build_model
from fingerspell.training.trainer import (TrainingError, make_generator, make_optimizer, predict_phrases, read_metrics,
                                         restore_last, resume, steps_per_epoch, train)

from tests.deterministic import run_deterministic

TINY = ["num_hid=64", "ff_dim=128", "enc_layers=1", "eval_batch_size=64", "batch_size=16",
        "jit_compile=false", "show_examples_every=0"]


def tiny_config(*overrides: str) -> Config:
    return Config().override(TINY + list(overrides))


def test_training_batches_have_the_model_layout(preprocessed_small):
    cfg = tiny_config("aug_token_mask_p=0")  # decoder inputs are then the targets shifted by one
    ds = pipeline.training_batches(records.load_dataset(preprocessed_small), cfg, training=True, batch_size=4)
    (frames, dec_in), targets = next(iter(ds))
    assert frames.shape[0] == 4 and frames.shape[2] == 78 and frames.shape[1] % features.FRAME_BUCKET == 0
    rows = ~np.isnan(frames.numpy()).all(axis=2)  # NaN rows are padding, only at the end; the rest is finite
    assert np.isfinite(frames.numpy()[rows]).all() and (np.diff(rows.astype(int), axis=1) <= 0).all()
    assert dec_in.shape == targets.shape and dec_in.shape[0] == 4  # trimmed to the longest phrase
    assert (dec_in.numpy()[:, 0] == vocab.START).all()
    np.testing.assert_array_equal(dec_in.numpy()[:, 1:], targets.numpy()[:, :-1])  # shifted by one


def test_tokenize_matches_vocab_encode():
    table = pipeline._char_table()
    phrase = "https://www.keainfo.gr"
    np.testing.assert_array_equal(pipeline.tokenize(tf.constant(phrase), table, 64).numpy(), vocab.encode(phrase))


def test_validation_split_holds_out_whole_participants(preprocessed_small, tmp_path):
    cfg = tiny_config()
    data = pipeline.split_datasets(preprocessed_small, cfg, tmp_path)
    split = data.split
    train_ids = [int(r["participant_id"]) for r in data.train.as_numpy_iterator()]
    valid_ids = [int(r["participant_id"]) for r in data.valid.as_numpy_iterator()]
    assert (len(train_ids), len(valid_ids)) == (data.n_train, data.n_valid)
    train_ids, valid_ids = set(train_ids), set(valid_ids)
    assert valid_ids == set(split["validation"]) and train_ids and not train_ids & valid_ids
    assert json.loads((tmp_path / "split.json").read_text())["validation"] == split["validation"]
    by_file = pipeline.choose_validation({1: 10, 2: 10, 3: 10}, 0.3, seed=0)
    assert len(by_file) == 1


def test_the_manifest_gives_the_same_inventory_as_a_scan_of_the_records(preprocessed_small):
    shards = records.shard_paths(preprocessed_small)
    for key in ("participant_id", "file_id"):
        from_manifest = pipeline.inventory_from_manifest(preprocessed_small, shards, key)
        scanned = pipeline.scan_inventory(shards, key)
        assert from_manifest is not None and len(from_manifest.sequences) > 1
        assert (from_manifest.sequences, from_manifest.frames) == (scanned.sequences, scanned.frames)
        assert from_manifest.longest_phrase["characters"] == scanned.longest_phrase["characters"]


def test_validation_reads_its_own_copy_never_the_shards(preprocessed_small, tmp_path):
    data_dir = tmp_path / "pre"
    shutil.copytree(preprocessed_small, data_dir)
    data = pipeline.split_datasets(data_dir, tiny_config(), tmp_path / "run_dir_files")
    copy = tmp_path / "run_dir_files" / pipeline.VALIDATION_RECORDS
    assert copy.exists()
    expected = sorted(int(r["sequence_id"]) for r in records.load_dataset(data_dir).as_numpy_iterator()
                      if int(r["participant_id"]) in data.split["validation"])
    shutil.rmtree(data_dir)  # validation no longer needs the shards
    assert sorted(int(r["sequence_id"]) for r in data.valid.as_numpy_iterator()) == expected
    assert len(expected) == data.n_valid > 0
    # Another split made in the same folder copies its own held-out records, never reusing the old copy.
    by_file = pipeline.split_datasets(preprocessed_small, tiny_config("val_split=file"), tmp_path / "run_dir_files")
    held = {int(r["file_id"]) for r in by_file.valid.as_numpy_iterator()}
    assert held == set(by_file.split["validation"]) and sum(1 for _ in by_file.valid) == by_file.n_valid


def test_cache_auto_streams_what_does_not_fit_the_memory(preprocessed_small, tmp_path, monkeypatch):
    from fingerspell import machine

    assert pipeline.decide_cache("auto", 3 * 10**9, 2 * 10**9) is False
    assert pipeline.decide_cache("auto", 10**9, 2 * 10**9) is True
    assert pipeline.decide_cache("auto", 1, None) is False  # unknown memory: stream
    assert pipeline.decide_cache("on", 3 * 10**9, 0) is True and pipeline.decide_cache("off", 1, 10**9) is False
    monkeypatch.setattr(machine, "available_memory", lambda: 10_000)  # a container with ~no memory left
    tight = pipeline.split_datasets(preprocessed_small, tiny_config(), tmp_path / "a")
    assert not tight.cached and tight.train_bytes > 5_000
    monkeypatch.setattr(machine, "available_memory", lambda: 64 * 10**9)
    roomy = pipeline.split_datasets(preprocessed_small, tiny_config(), tmp_path / "b")
    assert roomy.cached and roomy.train_bytes == tight.train_bytes
    # An explicit budget wins over the available memory.
    budget = pipeline.split_datasets(preprocessed_small, tiny_config(f"cache_memory_gb={tight.train_bytes / 2e9}"),
                                     tmp_path / "c")
    assert not budget.cached
    # Streamed or cached, training sees the same records.
    ids = [sorted(int(r["sequence_id"]) for r in d.train.as_numpy_iterator()) for d in (tight, roomy)]
    assert ids[0] == ids[1] and len(ids[0]) == tight.n_train


OVERFIT_ROUNDS, OVERFIT_STEPS = 10, 60  # at most 600 steps; it needs far fewer


def overfit_16(data_dir: str) -> dict:
    """Train the default model on 16 sequences, scoring every 60 steps until >= 0.9 (child process)."""
    cfg = Config(dropout=0.0, **{name: 0.0 for name in Config().augmentation_probabilities},
                 lr_schedule="constant", learning_rate=1e-3, weight_decay=0.0)
    sixteen = records.load_dataset(Path(data_dir)).take(16).cache()
    batches = pipeline.training_batches(sixteen, cfg, training=True, batch_size=16)
    model = build_model(cfg, 78)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), jit_compile=True)
    generate = make_generator(model)
    evaluation = pipeline.evaluation_batches(sixteen, cfg, 16)
    scores = []
    for _ in range(OVERFIT_ROUNDS):
        model.fit(batches, steps_per_epoch=OVERFIT_STEPS, epochs=1, verbose=0)
        targets, predictions = predict_phrases(generate, evaluation)
        scores.append(metric.score(targets, predictions))
        if scores[-1] >= 0.9:
            break
    return {"sequences": len(targets), "steps": OVERFIT_STEPS * len(scores), "scores": scores,
            "examples": list(zip(targets, predictions))[:4]}


@pytest.mark.slow
def test_overfits_16_sequences(preprocessed_small):
    """The proof CI keeps: the default model learns 16 sequences to a score >= 0.9.

    Fixed seeds and op determinism (in a child process) give the same steps and scores on every run.
    """
    result = run_deterministic("tests.test_training:overfit_16", str(preprocessed_small))
    print(f"overfit: {result['steps']} steps, scores {result['scores']}")
    assert result["sequences"] == 16
    assert result["scores"][-1] >= 0.9, result


class StopAfter(keras.callbacks.Callback):
    """Stops a run after `epochs` epochs, as an interruption would."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.epochs:
            self.model.stop_training = True


@pytest.mark.slow
def test_run_directory_and_exact_resume(preprocessed_small, tmp_path):
    cfg = tiny_config("epochs=4", "eval_every=1")
    run = tmp_path / "run"
    summary = train(preprocessed_small, run, cfg, callbacks=[StopAfter(2)])
    assert summary["epochs"] == 2 and summary["best_score"] is not None
    for name in ("config.json", "character_to_prediction_index.json", "split.json", "metrics.csv", "curves.png",
                 "summary.json", "checkpoints/last.weights.h5", "checkpoints/best.weights.h5",
                 "checkpoints/state.json"):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert Config.load(run / "config.json") == cfg
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    steps, _ = steps_per_epoch(summary["train_sequences"], cfg.batch_size, cfg.steps_per_execution)
    assert state["step"] == 2 * steps

    with pytest.raises(TrainingError, match="already holds a run"):
        train(preprocessed_small, run, cfg)

    # --resume restores the weights and the optimizer state exactly...
    restored = build_model(cfg, 78)
    restored.compile(optimizer=make_optimizer(cfg, steps)[0])
    assert restore_last(restored, run) == state
    assert int(restored.optimizer.iterations.numpy()) == 2 * steps
    moments = [v.numpy() for v in restored.optimizer.variables if "momentum" in v.path]
    assert moments and all(np.abs(m).sum() > 0 for m in moments[:3])
    # ...and continues the epochs and the learning-rate schedule of an uninterrupted run, whose
    # rate after epoch e is the 4-epoch schedule's at step e * steps (what its metrics.csv logs).
    resumed = resume(preprocessed_small, run)
    assert resumed["epochs"] == 4
    rates = [float(r["learning_rate"]) for r in read_metrics(run)]
    schedule = make_optimizer(cfg, steps)[1]
    expected = [float(schedule(epoch * steps)) for epoch in (1, 2, 3, 4)]
    assert [int(r["epoch"]) for r in read_metrics(run)] == [1, 2, 3, 4]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    assert rates[3] < rates[1]
    # A resumed run keeps its model and data config: only operational keys (epochs, devices, ...) may change.
    with pytest.raises(TrainingError, match="only .*epochs.* may change, not \\['num_hid'\\]"):
        resume(preprocessed_small, run, {"num_hid": 128})
    assert resume(preprocessed_small, run, {"epochs": 5})["epochs"] == 5


class FakeClock:
    """`time.perf_counter` that advances `tick` seconds per call: training time that is the same on every run."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


@pytest.mark.slow
def test_time_budget_stops_the_run_and_fits_the_schedule(preprocessed_small, tmp_path, monkeypatch):
    from fingerspell.training import trainer

    # The trainer reads the clock when an epoch begins and after each batch: each batch "takes" 1 s.
    monkeypatch.setattr(trainer, "time", FakeClock(tick=1.0))
    run = tmp_path / "run"
    cfg = tiny_config("epochs=1000", "time_budget_minutes=0.3", "eval_every=50", "steps_per_execution=1")
    summary = train(preprocessed_small, run, cfg)
    steps, budget = summary["train_sequences"] // 16, 0.3 * 60  # 18 s: a few epochs of `steps` s
    assert 2 * steps <= budget
    assert 2 <= summary["epochs"] < 1000 and summary["best_score"] is not None  # scored when the budget ends
    # It stops at the first batch past the budget, counting that last, partial epoch.
    assert summary["train_seconds"] == budget + 1 and summary["epochs"] == budget // steps + 1
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["budget_total_epochs"] < 1000  # the cosine decay ends near the budget


def test_validation_split_by_file(preprocessed_small, tmp_path):
    data = pipeline.split_datasets(preprocessed_small, tiny_config("val_split=file"), tmp_path)
    split = data.split
    assert split["key"] == "file_id" and len(split["validation"]) == 1
    assert {int(r["file_id"]) for r in data.valid.as_numpy_iterator()} == set(split["validation"])
    assert not {int(r["file_id"]) for r in data.train.as_numpy_iterator()} & set(split["validation"])


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(preprocessed_small, tmp_path):
    run = tmp_path / "run"
    train(preprocessed_small, run, tiny_config("epochs=1", "clipnorm=0"))
    last = (run / "checkpoints" / "last.weights.h5").read_bytes()
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(learning_rate=1e35)  # a user's edit that diverges
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TrainingError, match="NaN .* last good checkpoint"):
        resume(preprocessed_small, run, {"epochs": 3})
    assert (run / "checkpoints" / "last.weights.h5").read_bytes() == last
    assert json.loads((run / "checkpoints" / "state.json").read_text())["epoch"] == 1


def run_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow
def test_cli_errors_are_clear(preprocessed_small, tmp_path, subprocess_env):
    missing = run_cli("--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), env=subprocess_env)
    assert missing.returncode == 2 and "nope" in missing.stderr and "does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_cli("--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), env=subprocess_env)
    assert empty.returncode == 2 and "no .tfrecord shards" in empty.stderr
    unknown = run_cli("--data", str(preprocessed_small), "--out", str(tmp_path / "r"), "num_hidden=3",
                      env=subprocess_env)
    assert unknown.returncode == 2 and "unknown config key 'num_hidden'" in unknown.stderr
    bad_file = tmp_path / "cfg.json"
    bad_file.write_text("{not json")
    bad = run_cli("--data", str(preprocessed_small), "--out", str(tmp_path / "r"), "--config", str(bad_file),
                  env=subprocess_env)
    assert bad.returncode == 2 and "cfg.json: not valid JSON" in bad.stderr


def test_records_of_another_layout_are_refused(tmp_path):
    from fingerspell.data.records import RecordFormatError, ShardWriter, serialize_sequence

    (tmp_path / "train").mkdir()
    with ShardWriter(tmp_path / "train" / "1.tfrecord") as writer:
        writer.write(serialize_sequence(np.zeros((5, 156), np.float32), "ab", 1, 1, 1))
    # A shard from another column selection: patch n_columns in a valid record's bytes.
    good = serialize_sequence(np.zeros((4, 156), np.float32), "ab", 3, 1, 1)
    example = tf.train.Example.FromString(good)
    example.features.feature["n_columns"].int64_list.value[:] = [120]
    with ShardWriter(tmp_path / "train" / "2.tfrecord") as writer:
        writer.write(example.SerializeToString())
    with pytest.raises(RecordFormatError, match="2.tfrecord"):
        pipeline.split_datasets(tmp_path, tiny_config())


def test_a_phrase_longer_than_the_targets_is_refused_before_training(preprocessed_small, tmp_path):
    with pytest.raises(TrainingError, match=r"sequence \d+ has a phrase of \d+ characters, longer than "
                                            r"max_target_len - 2 = 6; raise max_target_len"):
        train(preprocessed_small, tmp_path / "run", tiny_config("max_target_len=8"))


def test_trimming_padding_columns_changes_no_loss(preprocessed_small):
    cfg = tiny_config()
    table = pipeline._char_table()
    recs = list(records.load_dataset(preprocessed_small).take(8))
    frames = pipeline.model_batch([r["landmarks"] for r in recs], cfg)
    tokens = tf.stack([pipeline.tokenize(r["phrase"], table, cfg.max_target_len) for r in recs])
    dec_in, targets = tokens[:, :-1], tokens[:, 1:]
    (_, short_in), short_targets = pipeline.trim_padding((frames, dec_in), targets)
    width = short_targets.shape[1]
    assert width % pipeline.TRIM_STEP == 0 and width < targets.shape[1]
    assert (targets.numpy()[:, width:] == vocab.PAD).all()
    model = build_model(cfg, 78)
    full = float(model.masked_loss(targets, model((frames, dec_in))))
    trimmed = float(model.masked_loss(short_targets, model((frames, short_in))))
    assert trimmed == pytest.approx(full, rel=1e-5)
    (_, batch_in), _ = next(iter(pipeline.training_batches(records.load_dataset(preprocessed_small), cfg, True, 8)))
    assert batch_in.shape[1] % pipeline.TRIM_STEP == 0 and batch_in.shape[1] < cfg.max_target_len - 1


def test_the_seed_recipe_keeps_full_width_targets(preprocessed_small):
    cfg = seed_config()
    assert not cfg.trim_padding  # the seed notebook always decodes 63 positions
    (_, dec_in), targets = next(iter(pipeline.training_batches(records.load_dataset(preprocessed_small), cfg, True, 4)))
    assert dec_in.shape[1] == targets.shape[1] == cfg.max_target_len - 1
