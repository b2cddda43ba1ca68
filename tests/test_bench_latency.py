"""bench/bench_latency.py: its synthetic sequences, its child-process timing and its report."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from bench import bench_latency as bench
from fingerspell.data import schema


def test_random_sequences_are_deterministic_and_kaggle_like():
    sequences = bench.random_sequences(1000)
    again = bench.random_sequences(3)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(sequences, again))
    lengths = np.array([len(s) for s in sequences])
    assert lengths.min() >= bench.LENGTH_MIN and lengths.max() <= bench.LENGTH_MAX
    assert abs(lengths.mean() - bench.LENGTH_MEAN) < 8 and abs(np.median(lengths) - bench.LENGTH_MEDIAN) < 8
    frames = np.concatenate(sequences)
    assert frames.shape[1] == schema.N_SELECTED_COLUMNS
    for hand in (schema.SELECTED_LEFT_HAND_COLUMNS, schema.SELECTED_RIGHT_HAND_COLUMNS):
        missing = np.isnan(frames[:, hand])
        assert (missing.all(axis=1) == missing.any(axis=1)).all()  # a whole hand is missing, as in MediaPipe
        assert 0.25 < missing[:, 0].mean() < 0.35
    hands = np.concatenate([schema.SELECTED_LEFT_HAND_COLUMNS, schema.SELECTED_RIGHT_HAND_COLUMNS])
    assert not np.isnan(np.delete(frames, hands, axis=1)).any()  # the arm is always there


@pytest.mark.parametrize("body,expected", [
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "crashed (SIGSEGV)"),
    ("raise ImportError('no such runtime')", "failed: ImportError: no such runtime"),
])
def test_a_runtime_that_dies_becomes_an_error_not_a_traceback(tmp_path, monkeypatch, body, expected):
    (tmp_path / "dying_runtime.py").write_text(body + "\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setitem(bench.RUNTIMES, "dying", "dying_runtime")
    sequences = bench.save_sequences(bench.random_sequences(2), tmp_path / "sequences.npz")
    result = bench.measure("dying", tmp_path / "model.tflite", sequences, threads=1, timeout=60)
    assert result["error"] == expected


def test_report_shows_failures_as_rows_and_judges_the_targets():
    rows = [
        {"preset": "kaggle", "decoder": "ctc", "params": 6_740_000, "size_mb": 11.9, "runtime": "rt",
         "p50_ms": 20.0, "p95_ms": 30.0, "mean_ms": 22.0},
        {"preset": "kaggle", "decoder": "attention", "params": 6_740_000, "size_mb": 13.8, "runtime": "rt",
         "p50_ms": 51.0, "p95_ms": 60.0, "mean_ms": 52.0},
        {"preset": "kaggle", "decoder": "joint", "params": 6_740_000, "size_mb": 13.9, "runtime": "old",
         "error": "crashed (SIGFPE)"},
    ]
    table = bench.markdown_table(rows).splitlines()
    assert table[0] == "| preset | decoder | params | size MB | runtime | p50 ms | p95 ms | mean ms |"
    assert table[2] == "| kaggle | ctc | 6.74M | 11.9 | rt | 20.0 | 30.0 | 22.0 |"
    assert table[4] == "| kaggle | joint | 6.74M | 13.9 | old | crashed (SIGFPE) | - | - |"
    assert bench.target_lines(rows) == [
        "- target kaggle ctc p50 <= 50 ms on rt: 20.0 ms: met",
        "- target kaggle attention p50 <= 50 ms on rt: 51.0 ms: NOT MET",
        "- target kaggle joint p50 <= 150 ms on old: NOT MET (crashed (SIGFPE))",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["litert", "tflite-runtime"])
def test_the_timing_child_runs_a_submission_shaped_model(tmp_path, runtime):
    """The child feeds each sequence whole, in order, and reports one time and one output length per sequence."""
    if importlib.util.find_spec(bench.RUNTIMES[runtime].split(".")[0]) is None:
        pytest.skip(f"{runtime} is not installed")
    import tensorflow as tf

    class Echo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, schema.N_SELECTED_COLUMNS], tf.float32, name="inputs")])
        def serve(self, inputs):  # one output row per input frame
            return {"outputs": tf.one_hot(tf.zeros([tf.shape(inputs)[0]], tf.int32), 59)}

    module = Echo()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    (tmp_path / "model.tflite").write_bytes(converter.convert())
    sequences = bench.random_sequences(4)
    saved = bench.save_sequences(sequences, tmp_path / "sequences.npz")
    result = bench.measure(runtime, tmp_path / "model.tflite", saved, threads=1, timeout=120)
    assert "error" not in result, result
    assert result["rows"] == [len(s) for s in sequences] and len(result["ms"]) == 4
    assert all(ms > 0 for ms in result["ms"])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
