"""The Conv1D-embedded encoder-decoder transformer, with cached greedy decoding.

Landmark frames [B, frame_len, F] -> strided Conv1D stack (+ learned positions) ->
encoder layers -> decoder layers (causal self-attention, cross-attention) -> 62-way
classifier. Greedy decoding keeps each decoder layer's self-attention keys and values
in a fixed-size cache, so a step costs one token's work, and it stops as soon as every
sequence in the batch has produced `>`. Both the TFLite export and validation use it.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from fingerspell.data import vocab
from fingerspell.config import Config


#: 1 for the classes a target position can hold (characters and END), 0 for PAD and START.
TARGET_CLASSES = np.array([0.0 if i in (vocab.PAD, vocab.START) else 1.0 for i in range(vocab.N_CLASSES)],
                          np.float32)

class Attention(layers.Layer):
    """Multi-head attention whose key/value projections can be computed once and reused."""

    def __init__(self, num_heads: int, key_dim: int, out_dim: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.key_dim = num_heads, key_dim
        width = num_heads * key_dim
        self.query = layers.Dense(width, name="query")
        self.key = layers.Dense(width, name="key")
        self.value = layers.Dense(width, name="value")
        self.out = layers.Dense(out_dim, name="out")
        self.drop = layers.Dropout(dropout)

    def split_heads(self, x: tf.Tensor) -> tf.Tensor:
        """[B, T, H*d] -> [B, H, T, d]."""
        shape = tf.shape(x)
        x = tf.reshape(x, [shape[0], shape[1], self.num_heads, self.key_dim])
        return tf.transpose(x, [0, 2, 1, 3])

    def keys_values(self, source: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return self.split_heads(self.key(source)), self.split_heads(self.value(source))

    def attend(self, query_source, keys, values, allowed=None, training=False) -> tf.Tensor:
        """Attention of `query_source` [B, Tq, D] over split keys/values; `allowed` [.., Tq, Tk] True = visible."""
        q = self.split_heads(self.query(query_source)) * (self.key_dim ** -0.5)
        scores = tf.matmul(q, keys, transpose_b=True)  # [B, H, Tq, Tk]
        if allowed is not None:
            scores = tf.where(allowed, scores, tf.cast(-1e9, scores.dtype) * tf.ones_like(scores))
        weights = self.drop(tf.nn.softmax(scores, axis=-1), training=training)
        context = tf.transpose(tf.matmul(weights, values), [0, 2, 1, 3])
        shape = tf.shape(context)
        context = tf.reshape(context, [shape[0], shape[1], self.num_heads * self.key_dim])
        return self.out(context)

    def call(self, query_source, source, allowed=None, training=False):
        keys, values = self.keys_values(source)
        return self.attend(query_source, keys, values, allowed=allowed, training=training)


def feed_forward(ff_dim: int, out_dim: int, name: str) -> keras.Sequential:
    return keras.Sequential([layers.Dense(ff_dim, activation="relu"), layers.Dense(out_dim)], name=name)


class EncoderLayer(layers.Layer):
    def __init__(self, cfg: Config, **kwargs):
        super().__init__(**kwargs)
        self.attention = Attention(cfg.num_heads, cfg.attention_key_dim, cfg.num_hid, name="self_attention")
        self.ffn = feed_forward(cfg.ff_dim, cfg.num_hid, "ffn")
        self.norm1 = layers.LayerNormalization(epsilon=1e-6)
        self.norm2 = layers.LayerNormalization(epsilon=1e-6)
        self.drop1 = layers.Dropout(cfg.dropout)
        self.drop2 = layers.Dropout(cfg.dropout)

    def call(self, x, training=False):
        x = self.norm1(x + self.drop1(self.attention(x, x, training=training), training=training))
        return self.norm2(x + self.drop2(self.ffn(x), training=training))


class DecoderLayer(layers.Layer):
    """Causal self-attention, cross-attention to the encoder, feed-forward; post-norm."""

    def __init__(self, cfg: Config, **kwargs):
        super().__init__(**kwargs)
        key_dim = cfg.attention_key_dim
        self.self_attention = Attention(cfg.num_heads, key_dim, cfg.num_hid, name="self_attention")
        self.cross_attention = Attention(cfg.num_heads, key_dim, cfg.num_hid, name="cross_attention")
        self.ffn = feed_forward(cfg.ff_dim, cfg.num_hid, "ffn")
        self.norms = [layers.LayerNormalization(epsilon=1e-6, name=f"norm{i}") for i in range(3)]
        self.drops = [layers.Dropout(cfg.dropout) for _ in range(3)]

    def build(self, *shapes):
        """Sublayers build on first call (the decoder is called in two ways)."""
        self.built = True

    def _after_self_attention(self, y, attended, cross_kv, training):
        y = self.norms[0](y + self.drops[0](attended, training=training))
        crossed = self.cross_attention.attend(y, *cross_kv, training=training)
        y = self.norms[1](y + self.drops[1](crossed, training=training))
        return self.norms[2](y + self.drops[2](self.ffn(y), training=training))

    def call(self, y, encoded, training=False):
        n = tf.shape(y)[1]
        causal = tf.range(n)[:, None] >= tf.range(n)[None, :]
        attended = self.self_attention(y, y, allowed=causal[None, None], training=training)
        cross_kv = self.cross_attention.keys_values(encoded)
        return self._after_self_attention(y, attended, cross_kv, training)

    def step(self, y_t, position, cache, cross_kv):
        """One decoding step for token embeddings y_t [B, 1, D] at `position`.

        `cache` holds this layer's self-attention keys/values [B, H, max_len, d]; the new
        token's are written at `position` with a one-hot blend (TFLite has no in-place update).
        """
        keys, values = cache
        new_k, new_v = self.self_attention.keys_values(y_t)
        max_len = tf.shape(keys)[2]
        slot = tf.cast(tf.equal(tf.range(max_len), position), keys.dtype)[None, None, :, None]
        keys = keys * (1.0 - slot) + new_k * slot
        values = values * (1.0 - slot) + new_v * slot
        visible = (tf.range(max_len) <= position)[None, None, None, :]
        attended = self.self_attention.attend(y_t, keys, values, allowed=visible)
        return self._after_self_attention(y_t, attended, cross_kv, False), (keys, values)


class LandmarkEmbedding(layers.Layer):
    """Strided Conv1D stack over frames, then a learned position embedding that is actually added."""

    def __init__(self, cfg: Config, **kwargs):
        super().__init__(**kwargs)
        self.convs = [
            layers.Conv1D(cfg.num_hid, cfg.conv_kernel, strides=cfg.conv_stride, padding="same",
                          activation="relu", name=f"conv{i}")
            for i in range(cfg.conv_layers)
        ]
        self.positions = layers.Embedding(cfg.frame_len // cfg.conv_stride ** cfg.conv_layers, cfg.num_hid)

    def call(self, x):
        for conv in self.convs:
            x = conv(x)
        return x + self.positions(tf.range(tf.shape(x)[1]))[None]


class TokenEmbedding(layers.Layer):
    def __init__(self, cfg: Config, **kwargs):
        super().__init__(**kwargs)
        self.tokens = layers.Embedding(vocab.N_CLASSES, cfg.num_hid)
        self.positions = layers.Embedding(cfg.max_target_len, cfg.num_hid)

    def call(self, ids, start: int | tf.Tensor = 0):
        n = tf.shape(ids)[1]
        return self.tokens(ids) + self.positions(tf.range(n) + start)[None]


class FingerspellTransformer(keras.Model):
    """Encoder-decoder transformer with a masked, label-smoothed training step."""

    def __init__(self, cfg: Config, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.embed_frames = LandmarkEmbedding(cfg, name="landmark_embedding")
        self.encoder_layers = [EncoderLayer(cfg, name=f"encoder_{i}") for i in range(cfg.enc_layers)]
        self.embed_tokens = TokenEmbedding(cfg, name="token_embedding")
        self.decoder_layers = [DecoderLayer(cfg, name=f"decoder_{i}") for i in range(cfg.dec_layers)]
        # float32 logits under mixed precision: a float16 softmax over 62 classes loses the small
        # probabilities that label smoothing and the loss depend on.
        self.classifier = layers.Dense(vocab.N_CLASSES, name="classifier", dtype="float32")
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def encode(self, frames, training=False):
        x = self.embed_frames(frames)
        for layer in self.encoder_layers:
            x = layer(x, training=training)
        return x

    def call(self, inputs, training=False):
        """Teacher-forced logits [B, L, 62] for (frames [B, frame_len, F], decoder input ids [B, L])."""
        frames, tokens = inputs
        encoded = self.encode(frames, training=training)
        y = self.embed_tokens(tokens)
        for layer in self.decoder_layers:
            y = layer(y, encoded, training=training)
        return self.classifier(y)

    # --- training -------------------------------------------------------------------------
    def masked_loss(self, targets, logits):
        """Label-smoothed cross-entropy averaged over non-padding target positions.

        The smoothing mass goes only to classes that can be a target (the characters and `>`),
        never to PAD or START, which the decoder must never emit.
        """
        return self.token_loss_sum(targets, logits) / tf.maximum(token_count(targets), 1.0)

    def token_loss_sum(self, targets, logits):
        """The label-smoothed cross-entropy summed over non-padding target positions (a float32 scalar):
        several workers divide their sums by the token count of the whole global batch."""
        one_hot = tf.one_hot(targets, vocab.N_CLASSES, dtype=tf.float32)
        smoothing = self.cfg.label_smoothing
        soft = (1.0 - smoothing) * one_hot + smoothing * TARGET_CLASSES / float(TARGET_CLASSES.sum())
        losses = -tf.reduce_sum(soft * tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1), axis=-1)
        return tf.reduce_sum(losses * tf.cast(tf.not_equal(targets, vocab.PAD), tf.float32))

    def train_step(self, data):
        (frames, dec_in), targets = data
        replicas = tf.distribute.get_strategy().num_replicas_in_sync  # gradients are summed over replicas
        with tf.GradientTape() as tape:
            loss = self.masked_loss(targets, self((frames, dec_in), training=True))
            scaled = self.optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        (frames, dec_in), targets = data
        self.loss_tracker.update_state(self.masked_loss(targets, self((frames, dec_in), training=False)))
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker]

    # --- inference ------------------------------------------------------------------------
    def generate(self, frames, max_steps: int | None = None) -> tf.Tensor:
        """Greedy decoding: [B, frame_len, F] -> token ids [B, max_steps] (PAD after `>`).

        Never emits PAD or START; stops when every sequence has emitted END.
        """
        max_len = self.cfg.max_target_len
        max_steps = max_steps or max_len - 1
        encoded = self.encode(frames, training=False)
        batch = tf.shape(frames)[0]
        cross_kv = [layer.cross_attention.keys_values(encoded) for layer in self.decoder_layers]
        dtype = encoded.dtype
        head_shape = [batch, self.cfg.num_heads, max_len, self.cfg.attention_key_dim]
        caches = [(tf.zeros(head_shape, dtype), tf.zeros(head_shape, dtype)) for _ in self.decoder_layers]
        banned = tf.constant([i in (vocab.PAD, vocab.START) for i in range(vocab.N_CLASSES)])

        def step(t, token, done, out, caches):
            y = self.embed_tokens(token[:, None], start=t)
            new_caches = []
            for layer, cross, cache in zip(self.decoder_layers, cross_kv, caches):
                y, cache = layer.step(y, t, cache, cross)
                new_caches.append(cache)
            logits = tf.cast(self.classifier(y)[:, 0], tf.float32)
            logits = tf.where(banned[None], tf.fill(tf.shape(logits), -1e9), logits)
            token = tf.where(done, vocab.PAD, tf.argmax(logits, axis=-1, output_type=tf.int32))
            out = tf.where(tf.equal(tf.range(max_steps), t)[None], token[:, None], out)
            done = tf.logical_or(done, tf.equal(token, vocab.END))
            return t + 1, token, done, out, new_caches

        def running(t, token, done, out, caches):
            return tf.logical_and(t < max_steps, tf.logical_not(tf.reduce_all(done)))

        start = (tf.constant(0), tf.fill([batch], vocab.START), tf.zeros([batch], tf.bool),
                 tf.fill([batch, max_steps], vocab.PAD), caches)
        _, _, _, out, _ = tf.while_loop(running, step, start)
        return out


def token_count(targets) -> tf.Tensor:
    """Non-padding target positions in a batch, as float32 (what the loss averages over)."""
    return tf.reduce_sum(tf.cast(tf.not_equal(targets, vocab.PAD), tf.float32))


def build_model(cfg: Config, feature_dim: int) -> FingerspellTransformer:
    """A model with its weights created (so checkpoints load and counts are known)."""
    model = FingerspellTransformer(cfg)
    model((tf.zeros([1, cfg.frame_len, feature_dim]), tf.zeros([1, cfg.max_target_len - 1], tf.int32)))
    return model
