"""The fused Adam/AdamW update: Keras' formula in one op per variable."""
from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

from fingerspell.training.optimizers import FusedAdam, FusedAdamW


def trained_weights(make_optimizer: Callable[[], keras.optimizers.Optimizer], embedding: bool = False,
                    steps: int = 4, strategy: tf.distribute.Strategy | None = None) -> list[np.ndarray]:
    """A small model's weights after `steps` training steps with the optimizer `make_optimizer` makes (same
    data and start; the optimizer is made in the strategy's scope)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, (16, 5)) if embedding else rng.normal(size=(16, 6)).astype(np.float32)
    y = rng.normal(size=(16, 3)).astype(np.float32)
    with strategy.scope() if strategy else tf.init_scope():
        layers = [keras.layers.Embedding(20, 4), keras.layers.Flatten()] if embedding else []
        model = keras.Sequential([keras.Input(x.shape[1:]), *layers, keras.layers.Dense(8, activation="tanh"),
                                  keras.layers.LayerNormalization(), keras.layers.Dense(3)])
        model.compile(optimizer=make_optimizer(), loss="mse")
    model.fit(x, y, batch_size=8, epochs=steps // 2, verbose=0, shuffle=False)
    return [w.numpy() for w in model.weights]


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)  # float32 rounding: one kernel vs many ops


@pytest.mark.parametrize("fused, keras_optimizer, options", [
    (FusedAdam, keras.optimizers.Adam, {"global_clipnorm": 0.5}),
    (FusedAdamW, keras.optimizers.AdamW, {"weight_decay": 0.1, "global_clipnorm": 0.5}),
    (FusedAdamW, keras.optimizers.AdamW, {"weight_decay": 0.1, "beta_1": 0.8, "epsilon": 1e-4}),
])
def test_the_fused_update_is_keras_update(fused, keras_optimizer, options):
    ours = trained_weights(lambda: fused(learning_rate=0.05, **options))
    theirs = trained_weights(lambda: keras_optimizer(learning_rate=0.05, **options))
    assert_same(ours, theirs)
    assert np.abs(ours[0] - trained_weights(lambda: fused(learning_rate=0.05, **options), steps=2)[0]).max() > 1e-3


def test_a_sparse_gradient_gets_kerass_update():
    """The embedding's gradient arrives as slices with repeated tokens: Keras updates those its own way."""
    assert_same(trained_weights(lambda: FusedAdam(learning_rate=0.05), embedding=True),
                trained_weights(lambda: keras.optimizers.Adam(learning_rate=0.05), embedding=True))


def mirrored_differences() -> list[float]:
    """In a child process (two logical CPU devices must be set before TensorFlow starts, and stand for two
    GPUs): the largest weight difference between FusedAdamW and Keras' AdamW under a MirroredStrategy."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    ours = trained_weights(lambda: FusedAdamW(learning_rate=0.05, weight_decay=0.1), strategy=strategy)
    theirs = trained_weights(lambda: keras.optimizers.AdamW(learning_rate=0.05, weight_decay=0.1), strategy=strategy)
    start = trained_weights(lambda: keras.optimizers.SGD(learning_rate=0.0), strategy=strategy)
    return [float(np.abs(a - b).max()) for a, b in zip(ours, theirs)] + [float(np.abs(ours[0] - start[0]).max())]


def test_under_a_mirrored_strategy_every_replica_is_updated():
    """A raw op would update one copy of a mirrored variable: there the Keras update runs."""
    from tests.deterministic import run_deterministic

    *differences, moved = run_deterministic("tests.test_optimizers:mirrored_differences")
    assert max(differences) < 1e-6 and moved > 1e-3
