"""The Conv1D-embedded encoder-decoder model, with a CTC head and cached greedy decoding.

Landmark frames [B, T, F] (rows of NaN are padding) -> strided Conv1D stack -> encoder
layers (conformer blocks with rotary positions, or the seed's transformer layers with
learned positions) -> a CTC head, and decoder layers (causal self-attention,
cross-attention) -> 62-way classifier. Every layer masks the padding, so a sequence
gives the same result alone or in a padded batch. Greedy decoding keeps each decoder
layer's self-attention keys and values in a fixed-size cache, so a step costs one
token's work, and it stops as soon as every sequence has produced `>`. Both the TFLite
export and validation use it.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from fingerspell.config import Config
from fingerspell.data import vocab
from fingerspell.model import ctc


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

    def call(self, x, mask, training=False):
        attended = self.attention(x, x, allowed=key_mask(mask), training=training)
        x = self.norm1(x + self.drop1(attended, training=training))
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

    def _after_self_attention(self, y, attended, cross_kv, visible, training):
        y = self.norms[0](y + self.drops[0](attended, training=training))
        crossed = self.cross_attention.attend(y, *cross_kv, allowed=visible, training=training)
        y = self.norms[1](y + self.drops[1](crossed, training=training))
        return self.norms[2](y + self.drops[2](self.ffn(y), training=training))

    def call(self, y, encoded, encoded_mask, training=False):
        n = tf.shape(y)[1]
        causal = tf.range(n)[:, None] >= tf.range(n)[None, :]
        attended = self.self_attention(y, y, allowed=causal[None, None], training=training)
        cross_kv = self.cross_attention.keys_values(encoded)
        return self._after_self_attention(y, attended, cross_kv, key_mask(encoded_mask), training)

    def step(self, y_t, position, cache, cross_kv, encoded_visible):
        """One decoding step for token embeddings y_t [B, 1, D] at `position`.

        `cache` holds this layer's self-attention keys/values [B, H, max_len, d]; the new
        token's are written at `position` with a one-hot blend (TFLite has no in-place update).
        `encoded_visible` [B, 1, 1, T'] marks the encoder positions that are not padding.
        """
        keys, values = cache
        new_k, new_v = self.self_attention.keys_values(y_t)
        max_len = tf.shape(keys)[2]
        slot = tf.cast(tf.equal(tf.range(max_len), position), keys.dtype)[None, None, :, None]
        keys = keys * (1.0 - slot) + new_k * slot
        values = values * (1.0 - slot) + new_v * slot
        visible = (tf.range(max_len) <= position)[None, None, None, :]
        attended = self.self_attention.attend(y_t, keys, values, allowed=visible)
        return self._after_self_attention(y_t, attended, cross_kv, encoded_visible, False), (keys, values)


def frame_mask(frames: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Frames [B, T, F] with NaN rows as padding -> (frames with padding 0, mask [B, T], True = a frame).

    The preprocessing turns every missing point into 0, so only padding is NaN: one tensor carries
    both, and the Keras model, validation and the export all take the same input.
    """
    mask = tf.logical_not(tf.math.is_nan(frames[..., 0]))
    return tf.where(mask[..., None], frames, tf.zeros_like(frames)), mask


def subsampled_mask(mask: tf.Tensor, stride: int) -> tf.Tensor:
    """The mask of a "same"-padded strided convolution's output: ceil(length / stride) positions."""
    lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    positions = (tf.shape(mask)[1] + stride - 1) // stride
    return tf.range(positions)[None, :] < ((lengths + stride - 1) // stride)[:, None]


def key_mask(mask: tf.Tensor) -> tf.Tensor:
    """[B, T] -> [B, 1, 1, T], to mask attention keys. expand_dims, not `mask[:, None, None, :]`: with an
    unknown batch size that slice converts to a TFLite op outside the builtins."""
    return tf.expand_dims(tf.expand_dims(mask, 1), 1)


def zero_padding(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    return x * tf.cast(mask, x.dtype)[..., None]


class LandmarkEmbedding(layers.Layer):
    """Strided Conv1D stack over frames, zeroing the padding after each layer (so the next one sees
    exactly the zeros of its own "same" padding, whatever the batch's length), then, for the
    transformer encoder, a learned position embedding that is actually added."""

    def __init__(self, cfg: Config, **kwargs):
        super().__init__(**kwargs)
        self.stride = cfg.conv_stride
        self.convs = [
            layers.Conv1D(cfg.num_hid, cfg.conv_kernel, strides=cfg.conv_stride, padding="same",
                          activation="relu", name=f"conv{i}")
            for i in range(cfg.conv_layers)
        ]
        self.positions = (layers.Embedding(cfg.encoder_positions(), cfg.num_hid)
                          if cfg.encoder == "transformer" else None)

    def call(self, x, mask):
        for conv in self.convs:
            mask = subsampled_mask(mask, self.stride)
            x = zero_padding(conv(x), mask)
        if self.positions is not None:
            x = x + self.positions(tf.range(tf.shape(x)[1]))[None]
        return x, mask


class TokenEmbedding(layers.Layer):
    def __init__(self, cfg: Config, **kwargs):
        super().__init__(**kwargs)
        self.tokens = layers.Embedding(vocab.N_CLASSES, cfg.num_hid)
        self.positions = layers.Embedding(cfg.max_target_len, cfg.num_hid)

    def call(self, ids, start: int | tf.Tensor = 0):
        n = tf.shape(ids)[1]
        return self.tokens(ids) + self.positions(tf.range(n) + start)[None]


class FingerspellTransformer(keras.Model):
    """Encoder-decoder with a CTC head on the encoder, trained on a weighted sum of the two losses."""

    def __init__(self, cfg: Config, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.embed_frames = LandmarkEmbedding(cfg, name="landmark_embedding")
        if cfg.encoder == "conformer":
            from fingerspell.model.conformer import ConformerBlock

            self.encoder_layers = [ConformerBlock(cfg, name=f"conformer_{i}") for i in range(cfg.enc_layers)]
        else:
            self.encoder_layers = [EncoderLayer(cfg, name=f"encoder_{i}") for i in range(cfg.enc_layers)]
        self.embed_tokens = TokenEmbedding(cfg, name="token_embedding")
        self.decoder_layers = [DecoderLayer(cfg, name=f"decoder_{i}") for i in range(cfg.dec_layers)]
        # float32 logits under mixed precision: a float16 softmax over 62 classes loses the small
        # probabilities that label smoothing and the loss depend on.
        self.classifier = layers.Dense(vocab.N_CLASSES, name="classifier", dtype="float32")
        self.ctc_head = (layers.Dense(ctc.N_CTC, name="ctc_head", dtype="float32") if cfg.ctc_weight > 0 else None)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def build(self, input_shape):
        """The sublayers build on their first call; the CTC head, which `call` does not reach, here."""
        if self.ctc_head is not None:
            self.ctc_head.build((None, None, self.cfg.num_hid))
        self.built = True

    def encode(self, frames, training=False) -> tuple[tf.Tensor, tf.Tensor]:
        """Frames [B, T, F] (NaN rows = padding) -> (encoded [B, T', D], mask [B, T'])."""
        frames, mask = frame_mask(frames)
        x, mask = self.embed_frames(frames, mask)
        for layer in self.encoder_layers:
            x = layer(x, mask, training=training)
        return x, mask

    def decode(self, encoded, mask, tokens, training=False):
        y = self.embed_tokens(tokens)
        for layer in self.decoder_layers:
            y = layer(y, encoded, mask, training=training)
        return self.classifier(y)

    def call(self, inputs, training=False):
        """Teacher-forced logits [B, L, 62] for (frames [B, T, F], decoder input ids [B, L])."""
        frames, tokens = inputs
        encoded, mask = self.encode(frames, training=training)
        return self.decode(encoded, mask, tokens, training=training)

    def ctc_logits(self, encoded, mask) -> tuple[tf.Tensor, tf.Tensor]:
        """CTC logits [B, T', 60] (blank last) and the valid positions per row [B]."""
        return self.ctc_head(encoded), tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)

    # --- training -------------------------------------------------------------------------
    def loss_terms(self, frames, dec_in, targets, training=False) -> dict[str, tf.Tensor]:
        """The losses summed over the batch and what each is averaged over: `attention` over target
        tokens, `ctc` over the characters of the sequences CTC can align (several workers divide by
        global counts). Both per character: the two terms have the same scale, so `ctc_weight` means
        what it says, and a sequence's CTC loss (a sum over its characters) does not overflow float16
        gradients at the usual loss scale."""
        encoded, mask = self.encode(frames, training=training)
        terms = {}
        if self.cfg.ctc_weight < 1.0:
            terms["attention"] = self.token_loss_sum(targets, self.decode(encoded, mask, dec_in, training=training))
            terms["attention_count"] = token_count(targets)
        if self.ctc_head is not None:
            losses, feasible = ctc.ctc_loss(targets, *self.ctc_logits(encoded, mask))
            _, label_length = ctc.labels_from_targets(targets)
            terms["ctc"] = tf.reduce_sum(losses)
            terms["ctc_count"] = tf.reduce_sum(tf.cast(label_length, tf.float32) * tf.cast(feasible, tf.float32))
        return terms

    def combined_loss(self, terms: dict[str, tf.Tensor], counts: dict[str, tf.Tensor] | None = None) -> tf.Tensor:
        """(1 - ctc_weight) x attention loss per token + ctc_weight x CTC loss per character; `counts`
        (default: the batch's own) are the global counts when several replicas share a step."""
        counts = counts or terms
        weight = self.cfg.ctc_weight
        loss = tf.constant(0.0)
        if "attention" in terms:
            loss += (1.0 - weight) * terms["attention"] / tf.maximum(counts["attention_count"], 1.0)
        if "ctc" in terms:
            loss += weight * terms["ctc"] / tf.maximum(counts["ctc_count"], 1.0)
        return loss

    def masked_loss(self, targets, logits):
        """The attention decoder's loss per target token (padding excluded)."""
        return self.token_loss_sum(targets, logits) / tf.maximum(token_count(targets), 1.0)

    def token_loss_sum(self, targets, logits):
        """The label-smoothed cross-entropy summed over non-padding target positions (a float32 scalar).

        The smoothing mass goes only to classes that can be a target (the characters and `>`),
        never to PAD or START, which the decoder must never emit.
        """
        one_hot = tf.one_hot(targets, vocab.N_CLASSES, dtype=tf.float32)
        smoothing = self.cfg.label_smoothing
        soft = (1.0 - smoothing) * one_hot + smoothing * TARGET_CLASSES / float(TARGET_CLASSES.sum())
        losses = -tf.reduce_sum(soft * tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1), axis=-1)
        return tf.reduce_sum(losses * tf.cast(tf.not_equal(targets, vocab.PAD), tf.float32))

    def train_step(self, data):
        (frames, dec_in), targets = data
        replicas = tf.distribute.get_strategy().num_replicas_in_sync  # gradients are summed over replicas
        with tf.GradientTape() as tape:
            loss = self.combined_loss(self.loss_terms(frames, dec_in, targets, training=True))
            scaled = self.optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        (frames, dec_in), targets = data
        self.loss_tracker.update_state(self.combined_loss(self.loss_terms(frames, dec_in, targets)))
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker]

    # --- inference ------------------------------------------------------------------------
    def generate(self, frames, max_steps: int | None = None, decoder: str | None = None) -> tf.Tensor:
        """Greedy decoding: frames [B, T, F] -> token ids [B, max_steps] (PAD after `>`), with the
        attention decoder or the CTC head (`decoder`, default the config's).

        Never emits PAD or START; stops when every sequence has emitted END.
        """
        max_steps = max_steps or self.cfg.max_target_len - 1
        encoded, mask = self.encode(frames, training=False)
        decoder = decoder or self.cfg.decoder
        if decoder == "ctc":
            return ctc.ctc_greedy_batch(*self.ctc_logits(encoded, mask), max_steps)
        if decoder == "joint":
            return self.greedy_joint(encoded, mask, max_steps)
        return self.greedy_attention(encoded, mask, max_steps)

    def attention_stepper(self, encoded, mask):
        """(step, empty caches) for decoding one token at a time: step(token [B], t, caches) ->
        (decoder logits [B, 62] float32, caches). Each decoder layer's self-attention keys and values
        live in a cache of max_target_len slots, so a step costs one token's work."""
        batch = tf.shape(encoded)[0]
        visible = key_mask(mask)
        cross_kv = [layer.cross_attention.keys_values(encoded) for layer in self.decoder_layers]
        head_shape = [batch, self.cfg.num_heads, self.cfg.max_target_len, self.cfg.attention_key_dim]
        caches = [(tf.zeros(head_shape, encoded.dtype), tf.zeros(head_shape, encoded.dtype))
                  for _ in self.decoder_layers]

        def step(token, t, caches):
            y = self.embed_tokens(token[:, None], start=t)
            new_caches = []
            for layer, cross, cache in zip(self.decoder_layers, cross_kv, caches):
                y, cache = layer.step(y, t, cache, cross, visible)
                new_caches.append(cache)
            return tf.cast(self.classifier(y)[:, 0], tf.float32), new_caches
        return step, caches

    def greedy_attention(self, encoded, mask, max_steps: int) -> tf.Tensor:
        batch = tf.shape(encoded)[0]
        step_logits, caches = self.attention_stepper(encoded, mask)
        banned = tf.constant([i in (vocab.PAD, vocab.START) for i in range(vocab.N_CLASSES)])

        def step(t, token, done, out, caches):
            logits, caches = step_logits(token, t, caches)
            logits = tf.where(banned[None], tf.fill(tf.shape(logits), -1e9), logits)
            token = tf.where(done, vocab.PAD, tf.argmax(logits, axis=-1, output_type=tf.int32))
            out = tf.where(tf.equal(tf.range(max_steps), t)[None], token[:, None], out)
            done = tf.logical_or(done, tf.equal(token, vocab.END))
            return t + 1, token, done, out, caches

        def running(t, token, done, out, caches):
            return tf.logical_and(t < max_steps, tf.logical_not(tf.reduce_all(done)))

        start = (tf.constant(0), tf.fill([batch], vocab.START), tf.zeros([batch], tf.bool),
                 tf.fill([batch, max_steps], vocab.PAD), caches)
        _, _, _, out, _ = tf.while_loop(running, step, start)
        return out

    def greedy_joint(self, encoded, mask, max_steps: int) -> tf.Tensor:
        """Greedy decoding of the attention decoder rescored by the CTC prefix score (weight ctc_weight)."""
        step_logits, caches = self.attention_stepper(encoded, mask)

        def step(token, t, caches):
            logits, caches = step_logits(token, t, caches)
            return tf.nn.log_softmax(logits, axis=-1), caches
        ctc_logits, lengths = self.ctc_logits(encoded, mask)
        return ctc.joint_greedy(step, caches, ctc_logits, lengths, self.cfg.ctc_weight, max_steps)


def token_count(targets) -> tf.Tensor:
    """Non-padding target positions in a batch, as float32 (what the loss averages over)."""
    return tf.reduce_sum(tf.cast(tf.not_equal(targets, vocab.PAD), tf.float32))


def build_model(cfg: Config, feature_dim: int) -> FingerspellTransformer:
    """A model with its weights created (so checkpoints load and counts are known)."""
    model = FingerspellTransformer(cfg)
    frames = tf.zeros([1, cfg.max_frames, feature_dim])
    model((frames, tf.zeros([1, cfg.max_target_len - 1], tf.int32)))
    return model
