"""CTC on the encoder: the loss, greedy CTC decoding, and a CTC prefix scorer for joint decoding.

The CTC head has `N_CTC = 60` outputs per encoder position: the 59 characters (0..58) and the
blank, last (`BLANK = 59`). Everything here is TensorFlow ops, so it runs in training steps,
in validation graphs and inside the TFLite export (builtin ops only).

Joint CTC/attention decoding (Watanabe et al. 2017, as in ESPnet's `CTCPrefixScore`) keeps,
for the prefix h decoded so far, the CTC forward variables over encoder positions t:

    r^n_t(h): probability that frames 0..t emit h and frame t is h's last character (not blank)
    r^b_t(h): probability that frames 0..t emit h and frame t is blank

From them, for every character c at once, psi(h + c) = P(the label sequence starts with h + c)
and p(h) = r^n_{T-1}(h) + r^b_{T-1}(h) = P(the label sequence is exactly h). Since
sum_c psi(h + c) + p(h) = psi(h), the ratios psi(h + c) / psi(h) and p(h) / psi(h) are CTC's
distribution over the next token (a character or END), which greedy decoding mixes with the
attention decoder's. The forward variables are kept in log space; "zero probability" is
`NEG = -1e30` instead of -inf (no inf - inf = NaN, and TFLite kernels never see inf), and values
are clamped at NEG so sums of several NEG stay finite.

Cost of one decoding step for T' encoder positions: O(T' * 59) vectorised work for all the
candidates' scores, and two parallel prefix scans over T' (ceil(log2 T') rounds) for the chosen
character's forward variables; no TensorList ops, so the TFLite export needs no converter flags.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf

from fingerspell.data import vocab

N_CTC = vocab.N_CHARS + 1  #: CTC head outputs: the characters, then the blank
BLANK = vocab.N_CHARS  #: the blank's index (59, numerically equal to PAD)
NEG = -1e30  #: log of "impossible", finite in float32


# --- loss -------------------------------------------------------------------------------------

def labels_from_targets(targets) -> tuple[tf.Tensor, tf.Tensor]:
    """Decoder targets [B, L] (characters, END, PAD...) -> (labels [B, L] with 0 after the phrase,
    label lengths [B]): the characters before the first token that is not a character."""
    targets = tf.convert_to_tensor(targets, tf.int32)
    is_char = tf.cast(tf.logical_and(targets >= 0, targets < vocab.N_CHARS), tf.int32)
    in_label = tf.math.cumprod(is_char, axis=1)  # 1 up to the first END/PAD/START, 0 from there on
    labels = targets * in_label
    return labels, tf.reduce_sum(in_label, axis=1)


def required_positions(labels, label_length) -> tf.Tensor:
    """Encoder positions CTC needs for each row [B]: its length plus one blank between every pair
    of equal adjacent characters."""
    labels = tf.convert_to_tensor(labels, tf.int32)
    inside = tf.range(1, tf.shape(labels)[1])[None, :] < label_length[:, None]  # pair (i-1, i) inside the label
    repeats = tf.logical_and(tf.equal(labels[:, 1:], labels[:, :-1]), inside)
    return label_length + tf.reduce_sum(tf.cast(repeats, tf.int32), axis=1)


def ctc_loss(targets, logits, logit_lengths) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-row CTC negative log-likelihoods [B] (float32) and the `feasible` mask [B] (bool).

    `targets` [B, L] int32 are the decoder's targets (characters, END, PAD...), `logits`
    [B, T', N_CTC] the CTC head's outputs (any float dtype; computed in float32), `logit_lengths`
    [B] the valid encoder positions per row (padding at the end). A row that CTC cannot align
    (fewer positions than `required_positions`, or none at all) gives loss 0 and zero gradient:
    it is computed with an empty label (a finite all-blank path) and multiplied by 0. Average as
    `sum(losses) / max(count(feasible), 1)`.
    """
    logits = tf.cast(logits, tf.float32)
    logit_lengths = tf.cast(logit_lengths, tf.int32)
    labels, label_length = labels_from_targets(targets)
    feasible = tf.logical_and(logit_lengths >= required_positions(labels, label_length), logit_lengths > 0)
    losses = tf.nn.ctc_loss(labels=labels, logits=logits,
                            label_length=tf.where(feasible, label_length, 0),
                            logit_length=tf.maximum(logit_lengths, 1),
                            logits_time_major=False, blank_index=BLANK)
    return losses * tf.cast(feasible, tf.float32), feasible


# --- greedy CTC -----------------------------------------------------------------------------------

def ctc_greedy(logits, length) -> tf.Tensor:
    """Best-path decoding of ONE sequence: logits [T', N_CTC], valid length (scalar) -> character ids
    [n] int32 (argmax per position over the first `length` positions, repeats collapsed, blanks
    dropped). Builtin TFLite ops only."""
    best = tf.argmax(logits[:length], axis=-1, output_type=tf.int32)
    previous = tf.concat([tf.constant([-1], tf.int32), best[:-1]], axis=0)
    keep = tf.logical_and(tf.not_equal(best, BLANK), tf.not_equal(best, previous))
    return tf.gather(best, tf.reshape(tf.where(keep), [-1]))


def ctc_greedy_batch(logits, lengths, max_len: int | None = None) -> tf.Tensor:
    """Best-path decoding of a batch: logits [B, T', N_CTC], lengths [B] -> ids [B, n] padded with PAD,
    where n = the longest decoded row (or `max_len`: longer rows are cut). No END is appended;
    `vocab.decode` reads the rows as they are."""
    best = tf.argmax(logits, axis=-1, output_type=tf.int32)  # [B, T']
    shape = tf.shape(best)
    batch, steps = shape[0], shape[1]
    previous = tf.concat([tf.fill([batch, 1], -1), best[:, :-1]], axis=1)
    valid = tf.range(steps)[None, :] < tf.cast(lengths, tf.int32)[:, None]
    keep = tf.logical_and(valid, tf.logical_and(tf.not_equal(best, BLANK), tf.not_equal(best, previous)))
    slot = tf.cumsum(tf.cast(keep, tf.int32), axis=1) - 1
    slot = tf.where(keep, slot, steps)  # dropped positions go to a spare column, sliced off below
    rows = tf.broadcast_to(tf.range(batch)[:, None], shape)
    out = vocab.PAD + tf.scatter_nd(tf.stack([rows, slot], axis=-1), best - vocab.PAD,
                                    tf.stack([batch, steps + 1]))
    width = tf.reduce_max(tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)) if max_len is None else max_len
    out = out[:, :tf.minimum(width, steps)]
    if max_len is not None:
        out = tf.pad(out, [[0, 0], [0, max_len - tf.shape(out)[1]]], constant_values=vocab.PAD)
    return out


# --- prefix scoring -------------------------------------------------------------------------------

def _clamp(x):
    return tf.maximum(x, NEG)


def _logaddexp(a, b, clamp: bool = True):
    """log(e^a + e^b) for finite a, b (NEG stands for -inf): no log1p, which TFLite lacks."""
    high = tf.maximum(a, b)
    out = high + tf.math.log(1.0 + tf.exp(tf.minimum(a, b) - high))
    return _clamp(out) if clamp else out


def log_linear_recurrence(a, b) -> tf.Tensor:
    """x_t = log(e^(x_{t-1} + a_t) + e^(b_t)) along axis 0, from x_{-1} = -inf (a, b: [T, ...]).

    A parallel prefix scan (Hillis-Steele) of the affine maps x -> x + a_t (+) b_t: ceil(log2 T)
    rounds of whole-tensor ops in a tf.while_loop instead of T sequential steps. (In TFLite a
    `tf.scan` over T is T interpreter iterations whose TensorList writes are lowered to
    slice+concat copies of the whole output, O(T^2); this loop carries fixed-shape tensors only,
    needs no TensorList ops and no converter flags.) Each element combines the log-probabilities of
    its own segment: no differences of long cumulative sums, so no float32 cancellation.
    """
    steps = tf.shape(a)[0]
    # element 0 is the identity map (x -> x + 0 (+) NEG), which every gather before the start reads;
    # gathers keep every shape fixed from round to round (old runtimes reallocate a body whose shapes change)
    a = tf.concat([tf.zeros_like(a[:1]), a], axis=0)
    b = tf.concat([tf.zeros_like(b[:1]) + NEG, b], axis=0)
    index = tf.range(steps + 1)

    def combine(d, a, b):  # element t absorbs element t - d: the map of (t-2d, t-d], then that of (t-d, t]
        earlier = tf.maximum(index - d, 0)
        # no clamping inside: a >= T * NEG and b only grows, so everything stays finite
        return d * 2, tf.gather(a, earlier) + a, _logaddexp(tf.gather(b, earlier) + a, b, clamp=False)

    return _clamp(tf.while_loop(lambda d, a, b: d < steps, combine, (tf.constant(1), a, b))[2][1:])


class PrefixState(NamedTuple):
    """The CTC state of one prefix h per row (a nested structure tf.while_loop carries).

    r: [T', B, 2] log r^n_t(h) and log r^b_t(h), time-major; log_psi: [B] log psi(h) (0 for the
    empty prefix); last: [B] int32, h's last character, -1 for the empty prefix.
    """
    r: tf.Tensor
    log_psi: tf.Tensor
    last: tf.Tensor


class CTCPrefixScorer:
    """CTC prefix scores of every next character, for a batch of sequences (B = 1 in the export).

    Built from the CTC head's log-probabilities [B, T', N_CTC] (or logits: they are normalised
    again, which leaves log-probabilities unchanged) and valid lengths [B] (>= 1; default T').

    `score_candidates` gives log psi(h + c) for all 59 characters at once without any recursion:
    psi(h + c) = sum_t phi_{t-1}(c) y_t(c) (y: the CTC probabilities), where phi_t(c) = r^n_t(h) +
    r^b_t(h), or only r^b_t(h) when c repeats h's last character, and phi_{-1} = 1 for the empty
    prefix (0 otherwise). Only the chosen character needs the forward variables of h + c, which
    `select` computes with two `log_linear_recurrence`s over [T', B]:
        r^n_t(h + c) = (r^n_{t-1}(h + c) + phi_{t-1}(c)) y_t(c)
        r^b_t(h + c) = (r^b_{t-1}(h + c) + r^n_{t-1}(h + c)) y_t(blank)
    """

    def __init__(self, log_probs, lengths=None):
        log_probs = _clamp(tf.nn.log_softmax(tf.cast(log_probs, tf.float32), axis=-1))
        log_probs = tf.transpose(log_probs, [1, 0, 2])  # [T', B, C]
        shape = tf.shape(log_probs)
        self.steps, self.batch = shape[0], shape[1]
        self.x_chars = log_probs[:, :, :vocab.N_CHARS]  # [T', B, 59]
        self.x_blank = log_probs[:, :, BLANK]  # [T', B]
        lengths = self.steps * tf.ones([self.batch], tf.int32) if lengths is None else tf.cast(lengths, tf.int32)
        self.lengths = tf.clip_by_value(lengths, 1, self.steps)
        positions = tf.range(self.steps)[:, None]
        self.valid = positions < self.lengths[None, :]  # [T', B]
        self.last_position = tf.cast(tf.equal(positions, self.lengths[None, :] - 1), tf.float32)  # [T', B]
        self.p_chars = tf.exp(self.x_chars) * tf.cast(self.valid, tf.float32)[:, :, None]  # [T', B, 59], 0 past length

    def init_state(self) -> PrefixState:
        """The empty prefix: r^n = 0 (NEG), r^b_t = the probability of t + 1 blanks."""
        blanks = _clamp(tf.cumsum(self.x_blank, axis=0))
        r = tf.stack([tf.zeros_like(blanks) + NEG, blanks], axis=-1)
        zero = tf.zeros_like(self.x_blank[0])  # [B]
        return PrefixState(r, zero, tf.cast(zero, tf.int32) - 1)

    def full_score(self, state: PrefixState) -> tf.Tensor:
        """log p(h) [B]: the probability that the whole label sequence is h."""
        total = _logaddexp(state.r[..., 0], state.r[..., 1])  # [T', B]
        return tf.reduce_sum(total * self.last_position, axis=0)

    @staticmethod
    def _start(state: PrefixState) -> tf.Tensor:
        """phi_{-1} [1, B]: 1 for the empty prefix (a character may start at frame 0), else 0."""
        return tf.where(state.last < 0, 0.0, NEG)[None] + tf.zeros_like(state.r[:1, :, 0])

    def _emitted_after(self, phi_before) -> tf.Tensor:
        """log sum_t e^phi_{t-1} y_t(c) over valid t, for all c: [B, 59] from phi_{t-1} [T', B].

        phi is scaled by its maximum and the sum taken against the probabilities computed once
        (exp only over [T', B] per call, none over [T', B, 59]); a zero sum gives NEG.
        """
        phi_before = tf.where(self.valid, phi_before, NEG)
        top = tf.reduce_max(phi_before, axis=0)  # [B]
        weights = tf.exp(phi_before - top[None])  # [T', B], at most 1
        total = tf.reduce_sum(weights[:, :, None] * self.p_chars, axis=0)  # [B, 59]
        positive = total > 0
        return tf.where(positive, _clamp(top[:, None] + tf.math.log(tf.where(positive, total, 1.0))), NEG)

    def score_candidates(self, state: PrefixState) -> tuple[tf.Tensor, tf.Tensor]:
        """(log psi(h + c) for c = 0..58 [B, 59], log p(h) [B])."""
        r_n, r_b = state.r[..., 0], state.r[..., 1]  # [T', B]
        start = self._start(state)
        after_any = self._emitted_after(tf.concat([start, _logaddexp(r_n, r_b)[:-1]], axis=0))
        after_blank = self._emitted_after(tf.concat([start, r_b[:-1]], axis=0))  # c repeats h's last character
        repeat = tf.equal(tf.range(vocab.N_CHARS)[None, :], state.last[:, None])  # [B, 59]
        return tf.where(repeat, after_blank, after_any), self.full_score(state)

    def select(self, state: PrefixState, token, prefix_scores) -> PrefixState:
        """The state of h + token for rows whose `token` [B] is a character; other rows keep `state`.
        `prefix_scores` are `score_candidates`' first output for `state` (log psi(h + token))."""
        is_char = tf.logical_and(token >= 0, token < vocab.N_CHARS)
        char = tf.where(is_char, token, 0)
        pick = tf.one_hot(char, vocab.N_CHARS)  # [B, 59]
        x_char = tf.reduce_sum(self.x_chars * pick[None], axis=2)  # [T', B]
        r_n, r_b = state.r[..., 0], state.r[..., 1]  # [T', B]
        phi = tf.where(tf.equal(char, state.last)[None], r_b, _logaddexp(r_n, r_b))
        phi_before = tf.concat([self._start(state), phi[:-1]], axis=0)
        r_n = log_linear_recurrence(x_char, phi_before + x_char)
        r_n_before = tf.concat([tf.zeros_like(r_n[:1]) + NEG, r_n[:-1]], axis=0)
        r_b = log_linear_recurrence(self.x_blank, r_n_before + self.x_blank)
        r = tf.stack([r_n, r_b], axis=-1)
        log_psi = tf.reduce_sum(prefix_scores * pick, axis=1)
        new = PrefixState(tf.where(is_char[None, :, None], r, state.r), tf.where(is_char, log_psi, state.log_psi),
                          tf.where(is_char, token, state.last))
        for tensor, old in zip(new, state):  # the static shapes that entered the while loop
            tensor.set_shape(old.shape)
        return new


# --- joint greedy decoding ------------------------------------------------------------------------

#: (token [B] int32, step scalar int32, cache) -> (log-probabilities [B, N_CLASSES] float32, new cache);
#: `cache` is any nested structure of tensors whose shapes stay fixed from step to step.
AttentionStep = Callable[[tf.Tensor, tf.Tensor, object], tuple[tf.Tensor, object]]


def joint_greedy(attention_step: AttentionStep, cache, ctc_log_probs, ctc_lengths=None, ctc_weight=0.3,
                 max_steps: int = vocab.MAX_TARGET_LEN - 1) -> tf.Tensor:
    """Greedy joint CTC/attention decoding: token ids [B, max_steps], PAD after END (like `generate`).

    Step t feeds the previous token (START first) and t to `attention_step`, which must return
    log-probabilities (a log_softmax: the two scores are mixed on one scale), and scores each
    character c as (1 - w) log p_att(c | h) + w (log psi(h + c) - log psi(h)) and END as
    (1 - w) log p_att(END | h) + w (log p(h) - log psi(h)), w = `ctc_weight` (a float or a scalar
    tensor); PAD and START are never emitted. Stops when every row has emitted END, or after
    `max_steps`.
    `ctc_log_probs` [B, T', N_CTC] are the CTC head's outputs (logits or log-probabilities) and
    `ctc_lengths` [B] their valid positions (default: all).
    """
    scorer = CTCPrefixScorer(ctc_log_probs, ctc_lengths)
    batch = scorer.batch
    weight = tf.cast(ctc_weight, tf.float32)
    banned = tf.constant([[i in (vocab.PAD, vocab.START) for i in range(vocab.N_CLASSES)]])

    def body(t, token, done, out, cache, state):
        att, cache = attention_step(token, t, cache)
        att = _clamp(tf.cast(att, tf.float32))
        prefix, full = scorer.score_candidates(state)
        ctc = tf.concat([prefix - state.log_psi[:, None], tf.fill([batch, 2], NEG),
                         (full - state.log_psi)[:, None]], axis=1)  # [B, 62]: characters, PAD, START, END
        scores = tf.where(banned, NEG, (1.0 - weight) * att + weight * ctc)
        token = tf.where(done, vocab.PAD, tf.argmax(scores, axis=-1, output_type=tf.int32))
        out = tf.where(tf.equal(tf.range(max_steps), t)[None], token[:, None], out)
        state = scorer.select(state, token, prefix)
        return t + 1, token, tf.logical_or(done, tf.equal(token, vocab.END)), out, cache, state

    def running(t, token, done, out, cache, state):
        return tf.logical_and(t < max_steps, tf.logical_not(tf.reduce_all(done)))

    start = (tf.constant(0), tf.fill([batch], vocab.START), tf.zeros([batch], tf.bool),
             tf.fill([batch, max_steps], vocab.PAD), cache, scorer.init_state())
    return tf.while_loop(running, body, start)[3]
