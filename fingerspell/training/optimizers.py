"""Adam and AdamW whose moment and weight update is one fused TensorFlow op per variable.

Keras 3 builds Adam's update from about twenty small ops per variable (powers, square roots,
three assignments). With the conformer's ~150 variables that is thousands of ops in every
training step: on a 2-core CPU they cost about a third of the step and seconds of tracing
when a run starts. `ResourceApplyAdam` computes the same update in one kernel:

    m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,
    var <- var - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon),   t = iterations + 1,

Keras' own formula. Everything else stays Keras': weight decay (AdamW's, applied before the update),
gradient clipping, loss scaling, the optimizer's variables and so its checkpoints.

Keras' update runs unchanged for a sparse gradient (an embedding's slices, which Keras updates its
own way), and under a distribution strategy (mirrored replicas, several workers), where the update
runs on mirrored variables and a raw op would update one copy only.
"""
from __future__ import annotations

import keras
import tensorflow as tf


def _handle(variable) -> tf.Tensor:
    """The resource handle of a TensorFlow variable or of a Keras variable's TensorFlow variable."""
    return (variable if isinstance(variable, tf.Variable) else variable._value).handle


class _FusedAdamUpdate:
    """`update_step` of Adam as ResourceApplyAdam (mixed into Keras' Adam and AdamW)."""

    def update_step(self, gradient, variable, learning_rate):
        if tf.distribute.has_strategy() or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]), v=_handle(self._velocities[index]),
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype),
            beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(tf.convert_to_tensor(gradient), dtype))


class FusedAdam(_FusedAdamUpdate, keras.optimizers.Adam):
    """keras.optimizers.Adam (amsgrad off) with the fused update."""

    def __init__(self, *args, **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("FusedAdam has no amsgrad")
        super().__init__(*args, **kwargs)


class FusedAdamW(_FusedAdamUpdate, keras.optimizers.AdamW):
    """keras.optimizers.AdamW (amsgrad off) with the fused update."""

    def __init__(self, *args, **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("FusedAdamW has no amsgrad")
        super().__init__(*args, **kwargs)
