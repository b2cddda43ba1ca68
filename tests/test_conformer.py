"""Conformer blocks: padding invariance, relative rotary positions, T=1, XLA, mixed precision, TFLite."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from fingerspell.config import Config
from fingerspell.model.conformer import ConformerBlock, apply_rotary, rotary_cos_sin

CFG = Config(num_hid=32, num_heads=4, ff_dim=64, conv_module_kernel=5, dropout=0.1)


def make_blocks(cfg: Config = CFG, n: int = 2, seed: int = 0) -> list[ConformerBlock]:
    """Built blocks whose biases, LayerNorm scales and offsets are random too (init leaves them 0 or 1)."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    blocks = [ConformerBlock(cfg, name=f"block{i}") for i in range(n)]
    for block in blocks:
        block.build((None, None, cfg.num_hid))
        for weight in block.weights:
            if len(weight.shape) == 1:
                weight.assign(weight.numpy() + rng.normal(0.0, 0.2, weight.shape).astype(np.float32))
    return blocks


def run_blocks(blocks, x, mask, training=False):
    for block in blocks:
        x = block(x, mask, training=training)
    return x


def test_real_positions_do_not_depend_on_the_padding_that_follows():
    blocks = make_blocks()
    rng = np.random.default_rng(1)
    lengths, padded_len = (7, 12), 16
    x = rng.normal(0.0, 1.0, (2, padded_len, CFG.num_hid)).astype(np.float32)
    garbage = rng.normal(0.0, 30.0, x.shape).astype(np.float32)
    mask = np.arange(padded_len)[None] < np.array(lengths)[:, None]
    x = np.where(mask[..., None], x, garbage)
    batched = run_blocks(blocks, tf.constant(x), tf.constant(mask)).numpy()
    for row, n in enumerate(lengths):
        alone = run_blocks(blocks, tf.constant(x[row:row + 1, :n]), tf.ones([1, n], tf.bool)).numpy()
        np.testing.assert_allclose(batched[row, :n], alone[0], atol=1e-5)
        assert (batched[row, n:] == 0).all()  # padding leaves every block as zeros


def test_rotary_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(2)
    dim = 16
    q, k = (tf.constant(rng.normal(size=(1, dim)), tf.float32) for _ in range(2))

    def score(m: int, n: int) -> float:
        cos_m, sin_m = rotary_cos_sin(tf.constant([m]), dim)
        cos_n, sin_n = rotary_cos_sin(tf.constant([n]), dim)
        return float(tf.reduce_sum(apply_rotary(q, cos_m, sin_m) * apply_rotary(k, cos_n, sin_n)))

    for m, n in ((0, 0), (3, 7), (9, 2), (40, 1)):
        for shift in (1, 5, 100):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-4)
    assert score(3, 7) != pytest.approx(score(3, 8), abs=1e-3)  # but relative position does matter
    cos, sin = rotary_cos_sin(tf.range(3), dim)
    rotated = apply_rotary(tf.tile(q, [3, 1]), cos, sin)
    np.testing.assert_allclose(tf.norm(rotated, axis=-1), tf.norm(q), rtol=1e-5)  # a rotation keeps lengths


def test_dynamic_length_in_graph_mode_and_under_xla_including_t1():
    blocks = make_blocks()
    spec = [tf.TensorSpec([None, None, CFG.num_hid]), tf.TensorSpec([None, None], tf.bool)]
    graph = tf.function(lambda x, mask: run_blocks(blocks, x, mask), input_signature=spec)
    xla = tf.function(lambda x, mask: run_blocks(blocks, x, mask), jit_compile=True)
    rng = np.random.default_rng(3)
    for length in (1, 5):
        x = tf.constant(rng.normal(size=(2, length, CFG.num_hid)), tf.float32)
        mask = tf.constant(np.arange(length)[None] < np.array([[length], [1]]))
        eager = run_blocks(blocks, x, mask).numpy()
        assert eager.shape == (2, length, CFG.num_hid) and np.isfinite(eager).all()
        np.testing.assert_allclose(graph(x, mask), eager, atol=1e-5)  # one trace serves every T
        if length == 1:  # each XLA shape is a compile of seconds: T=1 is the edge case
            np.testing.assert_allclose(xla(x, mask), eager, atol=1e-4)
    # Dropout is live in training and changes the output; padding still comes out as zeros.
    x = tf.constant(rng.normal(size=(2, 6, CFG.num_hid)), tf.float32)
    mask = tf.sequence_mask([6, 3], 6)
    trained = run_blocks(blocks, x, mask, training=True).numpy()
    assert not np.allclose(trained, run_blocks(blocks, x, mask).numpy()) and (trained[1, 3:] == 0).all()


def test_mixed_float16_policy():
    reference = make_blocks()
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        half = make_blocks()
        for ref, blk in zip(reference, half):
            for mine, theirs in zip(blk.weights, ref.weights):
                mine.assign(theirs)  # same weights as the float32 blocks
                assert mine.dtype == "float32"  # variables stay float32, compute is float16
        rng = np.random.default_rng(4)
        x = tf.constant(rng.normal(size=(2, 200, CFG.num_hid)), tf.float32)
        mask = tf.sequence_mask([200, 70], 200)
        expected = run_blocks(reference, x, mask).numpy()
        xla = tf.function(lambda x, mask: run_blocks(half, x, mask), jit_compile=True)
        for out in (run_blocks(half, x, mask), xla(x, mask)):
            assert out.dtype == tf.float16
            out = out.numpy().astype(np.float32)
            assert np.isfinite(out).all() and (out[1, 70:] == 0).all()
            np.testing.assert_allclose(out, expected, atol=0.05)
    finally:
        keras.mixed_precision.set_global_policy(previous)


class OneSequence(tf.Module):
    """Blocks over one unpadded sequence [T, D], as the Kaggle export runs the encoder."""

    def __init__(self, blocks: list[ConformerBlock]):
        super().__init__()
        self.blocks = blocks
        # Keras 3 layers are not tracked by tf.Module: without these the converter writes no weights.
        self.weights = [v.value for block in blocks for v in block.weights]

    @tf.function(input_signature=[tf.TensorSpec([None, CFG.num_hid], tf.float32, name="inputs")])
    def serve(self, inputs):
        x = inputs[None]
        return {"outputs": run_blocks(self.blocks, x, tf.ones(tf.shape(x)[:2], tf.bool))[0]}


def to_tflite(module: OneSequence) -> bytes:
    """Builtin ops only, as Kaggle's runtime requires (straight from the function: no SavedModel on disk)."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


#: Runs in a child process: tflite-runtime 2.14.0 may die of a signal on an op it mishandles.
OLD_RUNTIME = """
import sys, numpy as np
from tflite_runtime.interpreter import Interpreter
run = Interpreter(model_path=sys.argv[1]).get_signature_runner("serving_default")
for path in sys.argv[2:]:
    np.save(f"{path}.out.npy", run(inputs=np.load(path))["outputs"])
"""


def test_tflite_builtins_match_keras_in_litert_and_in_kaggles_2023_runtime(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    blocks = make_blocks()
    flatbuffer = to_tflite(OneSequence(blocks))
    runner = Interpreter(model_content=flatbuffer).get_signature_runner("serving_default")
    rng = np.random.default_rng(5)
    inputs = {n: rng.normal(size=(n, CFG.num_hid)).astype(np.float32) for n in (1, 5, 40)}
    expected = {n: run_blocks(blocks, x[None], tf.ones([1, n], tf.bool)).numpy()[0] for n, x in inputs.items()}
    for n, x in inputs.items():
        np.testing.assert_allclose(runner(inputs=x)["outputs"], expected[n], atol=1e-4, err_msg=f"T={n}")

    if importlib.util.find_spec("tflite_runtime") is None:
        pytest.skip("tflite_runtime (Kaggle's 2023 runtime, tflite-runtime 2.14.0) is not installed")
    model_path = tmp_path / "blocks.tflite"
    model_path.write_bytes(flatbuffer)
    paths = []
    for n in (1, 40):
        paths.append(tmp_path / f"t{n}.npy")
        np.save(paths[-1], inputs[n])
    done = subprocess.run([sys.executable, "-c", OLD_RUNTIME, str(model_path), *map(str, paths)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (f"tflite-runtime exit {done.returncode} (negative: the signal that killed it)\n"
                                  f"{done.stderr[-2000:]}")
    for n, path in zip((1, 40), paths):
        np.testing.assert_allclose(np.load(f"{path}.out.npy"), expected[n], atol=1e-4, err_msg=f"T={n}")
