"""CTC loss, greedy CTC and joint CTC/attention decoding, checked against brute force over alignments
and in TFLite (ai-edge-litert here, tflite-runtime 2.14.0 - Kaggle's 2023 grader - in a child process)."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from fingerspell.data import vocab
from fingerspell.model import ctc

A, B, C = 3, 7, 11  # the characters of the small alphabets below ("a", "b", "c")
BLANK = ctc.BLANK


def small_alphabet_logits(rng, steps: int, symbols=(A, B, C), batch: int = 1, scale: float = 2.0) -> np.ndarray:
    """[batch, steps, N_CTC] logits: random over `symbols` and the blank, -30 for every other class
    (their alignments weigh < 1e-10 of the total, below the tolerances)."""
    logits = np.full((batch, steps, ctc.N_CTC), -30.0, np.float32)
    for s in (*symbols, BLANK):
        logits[:, :, s] = rng.normal(size=(batch, steps)) * scale
    return logits


def collapse(path) -> tuple[int, ...]:
    out, previous = [], None
    for p in path:
        if p != BLANK and p != previous:
            out.append(p)
        previous = p
    return tuple(out)


def label_probabilities(log_probs: np.ndarray, symbols=(A, B, C)) -> dict[tuple[int, ...], float]:
    """Brute force: P(label sequence) for one sequence [T, N_CTC], summed over every alignment."""
    probs: dict[tuple[int, ...], float] = {}
    lp = log_probs.astype(np.float64)
    for path in itertools.product((*symbols, BLANK), repeat=len(lp)):
        label = collapse(path)
        probs[label] = probs.get(label, 0.0) + float(np.exp(sum(lp[t, p] for t, p in enumerate(path))))
    return probs


def prefix_probability(probs, prefix) -> float:
    return sum(p for label, p in probs.items() if label[:len(prefix)] == tuple(prefix))


def log_softmax(x: np.ndarray) -> np.ndarray:
    return tf.nn.log_softmax(tf.constant(x)).numpy()


def targets_for(*labels, width: int = 8) -> np.ndarray:
    """Decoder targets as the model has them: characters, END, PAD..."""
    rows = [list(label) + [vocab.END] + [vocab.PAD] * (width - len(label) - 1) for label in labels]
    return np.array(rows, np.int32)


# --- loss -------------------------------------------------------------------------------------------

def test_labels_and_required_positions():
    targets = targets_for((A, A), (A, B, B, B), (), (C,))
    labels, lengths = ctc.labels_from_targets(targets)
    assert lengths.numpy().tolist() == [2, 4, 0, 1]
    assert labels.numpy()[1].tolist() == [A, B, B, B, 0, 0, 0, 0]
    assert ctc.required_positions(labels, lengths).numpy().tolist() == [3, 6, 0, 1]


@pytest.mark.parametrize("steps", [4, 5])
def test_ctc_loss_equals_the_sum_over_all_alignments(steps):
    rng = np.random.default_rng(steps)
    label_sets = [(A, A), (A, B), (A, B, A), (A,), (C, B, A), (B, B)]
    logits = small_alphabet_logits(rng, steps, batch=len(label_sets))
    losses, feasible = ctc.ctc_loss(targets_for(*label_sets), logits, np.full(len(label_sets), steps))
    assert feasible.numpy().all() and losses.dtype == tf.float32
    for row, label in enumerate(label_sets):
        expected = -np.log(label_probabilities(log_softmax(logits[row]))[label])
        np.testing.assert_allclose(losses.numpy()[row], expected, rtol=1e-5, err_msg=str(label))


def test_ctc_loss_respects_each_rows_length():
    """Positions past a row's length (padding) do not count: the loss equals that of the cut sequence."""
    rng = np.random.default_rng(1)
    logits = small_alphabet_logits(rng, 5, batch=2)
    losses, _ = ctc.ctc_loss(targets_for((A, B), (A, A)), logits, np.array([3, 4]))
    for row, (label, steps) in enumerate([((A, B), 3), ((A, A), 4)]):
        expected = -np.log(label_probabilities(log_softmax(logits[row, :steps]))[label])
        np.testing.assert_allclose(losses.numpy()[row], expected, rtol=1e-5)


def test_infeasible_rows_give_zero_loss_and_finite_gradients():
    rng = np.random.default_rng(2)
    logits = tf.constant(rng.normal(size=(5, 6, ctc.N_CTC)).astype(np.float32))
    # "aa" needs 3 positions: 2 is too few, 3 is enough; "abc" in 2; a row with no positions at all
    targets = targets_for((A, A), (A, A), (A, B, C), (B,), (A, B))
    lengths = tf.constant([2, 3, 2, 0, 6])

    @tf.function(jit_compile=False)
    def loss_and_gradient(logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            losses, feasible = ctc.ctc_loss(targets, logits, lengths)
            mean = tf.reduce_sum(losses) / tf.maximum(tf.reduce_sum(tf.cast(feasible, tf.float32)), 1.0)
        return losses, feasible, tape.gradient(mean, logits)

    losses, feasible, gradient = (x.numpy() for x in loss_and_gradient(logits))
    assert feasible.tolist() == [False, True, False, False, True]
    assert np.isfinite(losses).all() and np.isfinite(gradient).all()
    assert (losses[~feasible] == 0).all() and (losses[feasible] > 0).all()
    per_row = np.abs(gradient).sum(axis=(1, 2))
    assert (per_row[~feasible] == 0).all() and (per_row[feasible] > 0).all()
    half, _ = ctc.ctc_loss(targets, tf.cast(logits, tf.float16), lengths)  # mixed precision logits
    assert half.dtype == tf.float32 and np.allclose(half.numpy(), losses, rtol=1e-3)


# --- greedy CTC -------------------------------------------------------------------------------------

def one_hot_logits(path, scale: float = 10.0) -> np.ndarray:
    return (np.eye(ctc.N_CTC, dtype=np.float32)[list(path)] * scale).astype(np.float32)


def test_ctc_greedy_collapses_repeats_and_keeps_blank_separated_doubles():
    path = [A, A, BLANK, A, B, B, BLANK, BLANK, C, C]
    logits = one_hot_logits(path)
    assert ctc.ctc_greedy(logits, 10).numpy().tolist() == [A, A, B, C]
    assert ctc.ctc_greedy(logits, 8).numpy().tolist() == [A, A, B]  # length cuts trailing positions off
    assert ctc.ctc_greedy(logits, 1).numpy().tolist() == [A]
    assert ctc.ctc_greedy(logits, 0).numpy().tolist() == []
    assert ctc.ctc_greedy(one_hot_logits([BLANK, A, A, A]), 4).numpy().tolist() == [A]


def test_ctc_greedy_batch_pads_with_pad():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 9, ctc.N_CTC)).astype(np.float32)
    logits[1] = one_hot_logits([A, A, BLANK, A, B, B, BLANK, BLANK, C])
    lengths = np.array([9, 8, 0, 3], np.int32)
    rows = [ctc.ctc_greedy(logits[i], lengths[i]).numpy().tolist() for i in range(4)]
    assert rows[1] == [A, A, B]
    batch = ctc.ctc_greedy_batch(logits, lengths).numpy()
    assert batch.shape == (4, max(map(len, rows)))
    for row, ids in zip(batch, rows):
        assert row.tolist() == ids + [vocab.PAD] * (batch.shape[1] - len(ids))
    assert ctc.ctc_greedy_batch(logits, lengths, max_len=12).numpy().shape == (4, 12)
    assert ctc.ctc_greedy_batch(logits, lengths, max_len=2).numpy()[1].tolist() == [A, A]


# --- prefix scoring ---------------------------------------------------------------------------------

def test_log_linear_recurrence_equals_the_sequential_recursion():
    rng = np.random.default_rng(4)
    for steps in (1, 2, 3, 7, 16, 17):
        a = rng.normal(size=(steps, 3)).astype(np.float32) - 1
        b = rng.normal(size=(steps, 3)).astype(np.float32) - 1
        b[0, 0] = ctc.NEG  # impossible inputs stay finite
        x, expected = np.full(3, -np.inf), []
        for t in range(steps):
            x = np.logaddexp(x + a[t], b[t])
            expected.append(x)
        np.testing.assert_allclose(ctc.log_linear_recurrence(a, b).numpy(), np.array(expected), rtol=1e-5)


@pytest.mark.parametrize("steps,chain", [(1, [A]), (3, [A, B]), (4, [A, A, B]), (5, [B, A, A, C])])
def test_prefix_scores_equal_brute_force_along_a_chain_of_selects(steps, chain):
    rng = np.random.default_rng(steps)
    log_probs = log_softmax(small_alphabet_logits(rng, steps))
    probs = label_probabilities(log_probs[0])
    scorer = ctc.CTCPrefixScorer(log_probs)
    state, prefix = scorer.init_state(), []
    for char in chain + [None]:
        psi, full = (x.numpy()[0] for x in scorer.score_candidates(state))
        np.testing.assert_allclose(np.exp(full), probs.get(tuple(prefix), 0.0), rtol=1e-4, atol=1e-12)
        np.testing.assert_allclose(np.exp(state.log_psi.numpy()[0]), prefix_probability(probs, prefix), rtol=1e-4)
        for c in (A, B, C):
            np.testing.assert_allclose(np.exp(psi[c]), prefix_probability(probs, prefix + [c]), rtol=1e-4,
                                       atol=1e-12, err_msg=f"prefix {prefix} + {c}")
        assert np.exp(psi).sum() - np.exp(psi[[A, B, C]]).sum() < 1e-9  # the other characters: ~0
        if char is not None:
            state = scorer.select(state, tf.constant([char]), psi[None])
            prefix.append(char)


def test_next_token_scores_sum_to_one_over_all_classes():
    """sum_c psi(h + c) + p(h) = psi(h), with random logits over all 60 classes."""
    rng = np.random.default_rng(5)
    log_probs = log_softmax(rng.normal(size=(1, 7, ctc.N_CTC)).astype(np.float32) * 2)
    scorer = ctc.CTCPrefixScorer(log_probs)
    state = scorer.init_state()
    for char in (10, 10, 20):
        psi, full = scorer.score_candidates(state)
        total = np.exp(psi.numpy()[0]).sum() + np.exp(full.numpy()[0])
        np.testing.assert_allclose(total, np.exp(state.log_psi.numpy()[0]), rtol=1e-4)
        state = scorer.select(state, tf.constant([char]), psi)


def test_a_batch_with_lengths_scores_each_row_as_its_own_cut_sequence():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(3, 6, ctc.N_CTC)).astype(np.float32) * 2
    lengths = np.array([6, 2, 4], np.int32)
    batched = ctc.CTCPrefixScorer(logits, lengths)
    singles = [ctc.CTCPrefixScorer(logits[i:i + 1, :n]) for i, n in enumerate(lengths)]
    state, states = batched.init_state(), [s.init_state() for s in singles]
    for chars in ([5, 5, 9], [5, vocab.END, 9]):  # the second row stops; the others go on
        psi, full = batched.score_candidates(state)
        for i, (single, own) in enumerate(zip(singles, states)):
            own_psi, own_full = single.score_candidates(own)
            np.testing.assert_allclose(psi.numpy()[i], own_psi.numpy()[0], rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(full.numpy()[i], own_full.numpy()[0], rtol=1e-4)
            states[i] = single.select(own, tf.constant([chars[i]]), own_psi)
        state = batched.select(state, tf.constant(chars), psi)


# --- joint greedy decoding --------------------------------------------------------------------------

MAX_STEPS = 12


class FakeAttention(tf.Module):
    """An attention step from TF ops: fixed logits per step plus a term for the previous token, and a
    cache (a step counter per row) that flows through the decoding loop."""

    def __init__(self, seed: int = 0, steps: int = MAX_STEPS, uniform: bool = False):
        super().__init__()
        rng = np.random.default_rng(seed)
        scale = 0.0 if uniform else 1.0
        self.table = tf.Variable(rng.normal(size=(steps, vocab.N_CLASSES)).astype(np.float32) * scale)
        self.previous = tf.Variable(rng.normal(size=(vocab.N_CLASSES, vocab.N_CLASSES)).astype(np.float32) * scale)
        self.decode = tf.function(self._decode, input_signature=[  # traced once for every shape
            tf.TensorSpec([None, None, ctc.N_CTC], tf.float32), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([], tf.float32)])

    def _decode(self, log_probs, lengths, weight):
        cache = tf.zeros([tf.shape(log_probs)[0]])
        return ctc.joint_greedy(self, cache, log_probs, lengths, weight, MAX_STEPS)

    def __call__(self, token, t, cache):
        tf.debugging.assert_equal(cache, tf.cast(t, tf.float32))
        logits = tf.gather(self.table, t)[None] + tf.gather(self.previous, token)
        return tf.nn.log_softmax(logits), cache + 1.0

    def greedy(self) -> list[int]:
        """Attention-only greedy decoding in numpy, the reference."""
        token, out = vocab.START, []
        for t in range(MAX_STEPS):
            logits = self.table.numpy()[t] + self.previous.numpy()[token]
            logits[[vocab.PAD, vocab.START]] = -np.inf
            token = int(np.argmax(logits))
            out.append(token)
            if token == vocab.END:
                break
        return out + [vocab.PAD] * (MAX_STEPS - len(out))


def decode(attention, log_probs, weight, lengths=None) -> np.ndarray:
    lengths = np.full(len(log_probs), log_probs.shape[1], np.int32) if lengths is None else lengths
    return attention.decode(tf.constant(log_probs), tf.constant(lengths, tf.int32), tf.constant(weight)).numpy()


def test_joint_greedy_without_ctc_is_attention_greedy():
    rng = np.random.default_rng(7)
    attention = FakeAttention()
    for seed in range(3):
        other = FakeAttention(seed)
        attention.table.assign(other.table)
        attention.previous.assign(other.previous)
        ids = decode(attention, rng.normal(size=(1, 9, ctc.N_CTC)).astype(np.float32), 0.0)
        assert ids[0].tolist() == attention.greedy()


def test_joint_greedy_with_only_ctc_spells_the_ctc_best_path():
    path = [BLANK, A, A, BLANK, A, B, B, BLANK, C, C, BLANK]
    logits = one_hot_logits(path, scale=8.0)[None]
    ids = decode(FakeAttention(uniform=True), logits, 1.0)[0].tolist()
    assert ids == [A, A, B, C, vocab.END] + [vocab.PAD] * (MAX_STEPS - 5)
    assert ctc.ctc_greedy(logits[0], len(path)).numpy().tolist() == [A, A, B, C]


def test_joint_greedy_on_a_batch_equals_each_row_alone():
    rng = np.random.default_rng(8)
    logits = (rng.normal(size=(3, 10, ctc.N_CTC)) * 3).astype(np.float32)
    lengths = np.array([10, 3, 7], np.int32)
    attention = FakeAttention(1)
    batch = decode(attention, logits, 0.5, lengths)
    for i, n in enumerate(lengths):
        assert batch[i].tolist() == decode(attention, logits[i:i + 1, :n], 0.5)[0].tolist()
    assert {vocab.PAD, vocab.START}.isdisjoint(batch[:, 0])


# --- TFLite -----------------------------------------------------------------------------------------

class JointModule(tf.Module):
    """What the export does for one sequence: joint decoding (the fake attention, weight 0.5) and
    greedy CTC, with the variables referenced from the module so the converter keeps them."""

    def __init__(self):
        super().__init__()
        self.attention = FakeAttention(2, steps=30)
        self.variables_kept = [self.attention.table, self.attention.previous]

    @tf.function(input_signature=[tf.TensorSpec([None, ctc.N_CTC], tf.float32, name="log_probs")])
    def serve(self, log_probs):
        joint = ctc.joint_greedy(self.attention, tf.zeros([1]), log_probs[None], None, 0.5, 30)[0]
        return {"joint": joint, "greedy": ctc.ctc_greedy(log_probs, tf.shape(log_probs)[0])}


TFLITE_STEPS = (1, 7, 60)


def tflite_inputs() -> dict[int, np.ndarray]:
    rng = np.random.default_rng(9)
    return {steps: log_softmax((rng.normal(size=(steps, ctc.N_CTC)) * 3).astype(np.float32))
            for steps in TFLITE_STEPS}


#: `python -c`: an old runtime dies of a signal instead of raising, so it runs in its own process.
RUNNER = """
import json, sys, numpy as np
path, runtime, inputs = sys.argv[1:]
module = "ai_edge_litert.interpreter" if runtime == "ai-edge-litert" else "tflite_runtime.interpreter"
runner = __import__(module, fromlist=["Interpreter"]).Interpreter(model_path=path).get_signature_runner()
data = np.load(inputs)
print(json.dumps({name: {key: value.tolist() for key, value in runner(log_probs=data[name]).items()}
                  for name in data.files}))
"""


@pytest.fixture(scope="module")
def joint_tflite(tmp_path_factory):
    module = JointModule()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no converter flags needed
    path = tmp_path_factory.mktemp("ctc") / "joint.tflite"
    path.write_bytes(converter.convert())
    expected = {steps: {key: value.numpy().tolist() for key, value in module.serve(tf.constant(x)).items()}
                for steps, x in tflite_inputs().items()}
    return path, expected


def test_tflite_joint_decoding_equals_tf_in_litert(joint_tflite):
    from ai_edge_litert.interpreter import Interpreter

    path, expected = joint_tflite
    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    for steps, x in tflite_inputs().items():
        got = {key: value.tolist() for key, value in runner(log_probs=x).items()}
        assert got == expected[steps], steps
        assert vocab.END in got["joint"] or steps == 60


@pytest.mark.parametrize("runtime", ["ai-edge-litert", "tflite-runtime"])
def test_tflite_joint_decoding_in_a_child_process(joint_tflite, runtime, tmp_path):
    if runtime == "tflite-runtime":
        pytest.importorskip("tflite_runtime", reason="tflite-runtime 2.14.0: wheels for Linux x86_64, Python <= 3.11")
    path, expected = joint_tflite
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **{str(steps): x for steps, x in tflite_inputs().items()})
    done = subprocess.run([sys.executable, "-c", RUNNER, str(path), runtime, str(inputs)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{runtime}: exit {done.returncode} (negative: killed by that signal)\n" \
                                 f"{done.stderr[-2000:]}"
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert {int(k): v for k, v in got.items()} == expected
