"""Masked Conformer encoder blocks with rotary positions, for the landmark encoder.

A block is the Conformer's macaron: ½ feed-forward, rotary self-attention, convolution
module, ½ feed-forward, LayerNorm (pre-norm residuals throughout). Two rules make a
padded batch give, at each row's real positions, what that row gives alone, which is
what lets training batch sequences of any length while the export runs one unpadded
sequence:

* padding only ever follows the real positions of a row, positions count from 0 at its
  start (rotary angles come from `tf.range(T)`, so no maximum length exists), and
  padded keys get a large negative score before the softmax;
* padded positions are zeroed before the depthwise convolution (so "same" padding sees
  the zeros it would see at the end of an unpadded row) and at the block output.

No normalisation takes statistics across positions (LayerNorm only, never BatchNorm),
so padding cannot leak in through them either. Every op is a TFLite builtin.
"""
from __future__ import annotations

import tensorflow as tf
from keras import layers

from fingerspell.config import Config

#: Score of a padded key: exp() of it underflows to exactly 0 in the float32 softmax.
MASKED_SCORE = -1e9
ROTARY_BASE = 10000.0


def rotary_cos_sin(positions: tf.Tensor, dim: int, dtype: tf.DType | str = tf.float32) -> tuple[tf.Tensor, tf.Tensor]:
    """cos and sin [T, dim // 2] of the rotary angles of `positions` [T].

    Computed in float32 and cast afterwards: float16 angles lose whole radians beyond a
    few hundred positions.
    """
    positions = tf.cast(positions, tf.float32)
    inverse_freq = ROTARY_BASE ** (-tf.range(0, dim // 2, dtype=tf.float32) / float(dim // 2))
    angles = tf.expand_dims(positions, 1) * tf.expand_dims(inverse_freq, 0)
    return tf.cast(tf.cos(angles), dtype), tf.cast(tf.sin(angles), dtype)


def apply_rotary(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor) -> tf.Tensor:
    """Rotate each pair (x[i], x[i + d/2]) of x [..., T, d] by its position's angle.

    <rot(q, m), rot(k, n)> then depends on m - n only, so attention sees relative positions.
    Halves, not interleaved pairs: two slices and a concat convert to plain TFLite ops.
    """
    first, second = tf.split(x, 2, axis=-1)
    return tf.concat([first * cos - second * sin, second * cos + first * sin], axis=-1)


class FeedForwardModule(layers.Layer):
    """LayerNorm -> Dense(ff_dim, swish) -> dropout -> Dense(D) -> dropout (the residual is the block's)."""

    def __init__(self, cfg: Config, **kwargs):
        super().__init__(**kwargs)
        self.norm = layers.LayerNormalization(epsilon=1e-5, name="norm")
        self.inner = layers.Dense(cfg.ff_dim, activation="silu", name="inner")
        self.outer = layers.Dense(cfg.num_hid, name="outer")
        self.drop = layers.Dropout(cfg.dropout)

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.inner.build(input_shape)
        self.outer.build((*input_shape[:-1], self.inner.units))
        self.built = True

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        hidden = self.drop(self.inner(self.norm(x)), training=training)
        return self.drop(self.outer(hidden), training=training)


class RotarySelfAttention(layers.Layer):
    """Pre-norm multi-head self-attention with rotary queries and keys and a key-padding mask."""

    def __init__(self, cfg: Config, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.key_dim = cfg.num_heads, cfg.attention_key_dim
        if self.key_dim % 2:
            raise ValueError(f"rotary embeddings need an even attention key size, got {self.key_dim}")
        self.norm = layers.LayerNormalization(epsilon=1e-5, name="norm")
        self.qkv = layers.Dense(3 * self.num_heads * self.key_dim, name="qkv")  # one matmul for all three
        self.out = layers.Dense(cfg.num_hid, name="out")
        self.drop = layers.Dropout(cfg.dropout)

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.qkv.build(input_shape)
        self.out.build((*input_shape[:-1], self.num_heads * self.key_dim))
        self.built = True

    def _split_heads(self, x: tf.Tensor) -> tf.Tensor:
        """[B, T, H*d] -> [B, H, T, d]."""
        shape = tf.shape(x)
        return tf.transpose(tf.reshape(x, [shape[0], shape[1], self.num_heads, self.key_dim]), [0, 2, 1, 3])

    def call(self, x: tf.Tensor, allowed: tf.Tensor, training: bool = False) -> tf.Tensor:
        """x [B, T, D], allowed [B, 1, 1, T] (True = a real key) -> [B, T, D]."""
        q, k, v = (self._split_heads(t) for t in tf.split(self.qkv(self.norm(x)), 3, axis=-1))
        cos, sin = rotary_cos_sin(tf.range(tf.shape(x)[1]), self.key_dim, q.dtype)
        q = apply_rotary(q * tf.cast(self.key_dim ** -0.5, q.dtype), cos, sin)
        k = apply_rotary(k, cos, sin)
        # Scores and softmax in float32: under mixed precision float16 scores overflow easily
        # and cannot hold the mask value; in a float32 model the casts vanish.
        scores = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32)  # [B, H, T, T]
        scores = tf.where(allowed, scores, MASKED_SCORE)
        weights = tf.cast(tf.nn.softmax(scores, axis=-1), v.dtype)
        context = tf.transpose(tf.matmul(weights, v), [0, 2, 1, 3])
        shape = tf.shape(context)
        context = tf.reshape(context, [shape[0], shape[1], self.num_heads * self.key_dim])
        return self.drop(self.out(context), training=training)


class ConvolutionModule(layers.Layer):
    """LayerNorm -> pointwise conv + GLU -> zero padding -> depthwise conv -> LayerNorm -> swish -> pointwise -> dropout.

    Pointwise convolutions are Dense layers (the same maths, a FULLY_CONNECTED in TFLite).
    The norm after the depthwise conv is a LayerNorm, not the paper's BatchNorm, whose
    batch statistics would mix in padded positions and other rows.
    """

    def __init__(self, cfg: Config, **kwargs):
        super().__init__(**kwargs)
        self.norm = layers.LayerNormalization(epsilon=1e-5, name="norm")
        self.expand = layers.Dense(2 * cfg.num_hid, name="pointwise_glu")
        self.depthwise = layers.DepthwiseConv1D(cfg.conv_module_kernel, padding="same", name="depthwise")
        self.depthwise_norm = layers.LayerNormalization(epsilon=1e-5, name="depthwise_norm")
        self.project = layers.Dense(cfg.num_hid, name="pointwise_out")
        self.drop = layers.Dropout(cfg.dropout)

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.expand.build(input_shape)
        for layer in (self.depthwise, self.depthwise_norm, self.project):
            layer.build(input_shape)
        self.built = True

    def call(self, x: tf.Tensor, keep: tf.Tensor, training: bool = False) -> tf.Tensor:
        """x [B, T, D], keep [B, T, 1] (1 = real, 0 = padding, x's dtype) -> [B, T, D]."""
        values, gates = tf.split(self.expand(self.norm(x)), 2, axis=-1)
        x = values * tf.sigmoid(gates) * keep  # GLU; zeroed padding is what "same" sees past a row's end
        x = tf.nn.silu(self.depthwise_norm(self.depthwise(x)))
        return self.drop(self.project(x), training=training)


class ConformerBlock(layers.Layer):
    """One masked Conformer block: x + ½FF, + MHSA, + Conv, + ½FF, LayerNorm, padding zeroed.

    The ½ scaling of the two feed-forward residuals is the Conformer paper's macaron rule:
    together they add one full feed-forward step.
    """

    def __init__(self, cfg: Config, **kwargs):
        super().__init__(**kwargs)
        self.ff_first = FeedForwardModule(cfg, name="ff_first")
        self.attention = RotarySelfAttention(cfg, name="attention")
        self.conv = ConvolutionModule(cfg, name="conv")
        self.ff_second = FeedForwardModule(cfg, name="ff_second")
        self.norm = layers.LayerNormalization(epsilon=1e-5, name="norm")

    def build(self, input_shape):
        for layer in (self.ff_first, self.attention, self.conv, self.ff_second, self.norm):
            layer.build(input_shape)
        self.built = True

    def call(self, x: tf.Tensor, mask: tf.Tensor, training: bool = False) -> tf.Tensor:
        """x [B, T, D], mask [B, T] bool (True = real; padding only at the end of a row) -> [B, T, D].

        Outputs at padded positions are 0.
        """
        x = tf.cast(x, self.compute_dtype)
        mask = tf.cast(mask, tf.bool)
        # expand_dims, not mask[:, None]: with a dynamic batch the converter keeps that as tf.StridedSlice,
        # which is no TFLite builtin.
        keep = tf.expand_dims(tf.cast(mask, x.dtype), -1)  # [B, T, 1]
        allowed = tf.expand_dims(tf.expand_dims(mask, 1), 1)  # [B, 1, 1, T]
        x = x + 0.5 * self.ff_first(x, training=training)
        x = x + self.attention(x, allowed, training=training)
        x = x + self.conv(x, keep, training=training)
        x = x + 0.5 * self.ff_second(x, training=training)
        return self.norm(x) * keep
