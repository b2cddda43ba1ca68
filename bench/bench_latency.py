"""Per-sequence TFLite latency: our export against the seed notebook's export path.

(a) ours: a trained run exported with `python -m export` (cached greedy decoding that stops
    at `>`, key_dim = num_hid // heads);
(b) the seed's path: the same sizes with key_dim = num_hid, always 63 decode steps that
    re-run the whole decoder on the growing prefix, no early stop (its `generate`).
Both are fed the same raw sequences through `ai_edge_litert`, one at a time, as the grader does.

    python bench/bench_latency.py --submission SUB_DIR --data-dir DATASET [--sequences 200] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tensorflow as tf  # noqa: E402

from bench.seed_recipe import SEED_FEATURES, seed_config, seed_preprocess_frames  # noqa: E402
from fingerspell.data import schema, vocab  # noqa: E402
from fingerspell.config import Config  # noqa: E402
from fingerspell.data.metadata import load_metadata  # noqa: E402
from fingerspell.data.parquet import read_sequences  # noqa: E402
from fingerspell.model.transformer import FingerspellTransformer, build_model  # noqa: E402


class SeedInference(tf.Module):
    """The seed notebook's TFLite module: 63 full-prefix decoder passes, no early stop."""

    def __init__(self, model: FingerspellTransformer, cfg: Config):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.weights = [v.value for v in model.weights]

    @tf.function(input_signature=[tf.TensorSpec([None, schema.N_SELECTED_COLUMNS], tf.float32, name="inputs")])
    def serve(self, inputs):
        frames = seed_preprocess_frames(inputs, self.cfg.frame_len)[None]
        encoded = self.model.encode(frames)
        tokens = tf.fill([1, 1], vocab.START)
        for _ in range(self.cfg.max_target_len - 1):  # unrolled, as the seed's Python loop traces
            y = self.model.embed_tokens(tokens)
            for layer in self.model.decoder_layers:
                y = layer(y, encoded)
            last = tf.argmax(self.model.classifier(y)[:, -1], axis=-1, output_type=tf.int32)
            tokens = tf.concat([tokens, last[:, None]], axis=1)
        ids = tokens[0]
        end = tf.argmax(tf.cast(tf.equal(ids, vocab.END), tf.int32))
        end = tf.where(end < 1, tf.constant(2, end.dtype), end)
        return {"outputs": tf.one_hot(ids[1:end], vocab.N_CHARS)}


def seed_tflite(out: Path) -> Path:
    """Convert the seed path; its weights are random, which does not change its cost (always 63 steps)."""
    cfg = seed_config()
    model = build_model(cfg, SEED_FEATURES)
    module = SeedInference(model, cfg)
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(module, saved, signatures={"serving_default": module.serve.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        out.write_bytes(converter.convert())
    return out


def latencies(model_path: Path, sequences: list[np.ndarray], threads: int) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(model_path), num_threads=threads).get_signature_runner("serving_default")
    runner(inputs=sequences[0])  # warm-up
    times = []
    for frames in sequences:
        start = time.perf_counter()
        runner(inputs=frames)
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000.0


def load_sequences(data_dir: Path, n: int) -> list[np.ndarray]:
    """The first `n` sequences of the dataset's train split, raw [T, 156] as the grader sends them."""
    meta = load_metadata(data_dir, "train")
    wanted: dict[str, list[int]] = {}
    for parquet, sequence_id in list(zip(meta.parquets, meta.sequence_ids.tolist()))[:n]:
        wanted.setdefault(parquet, []).append(sequence_id)
    out = []
    for parquet, ids in wanted.items():
        found = read_sequences(parquet, schema.SELECTED_COLUMNS, ids)
        out += [found[s] for s in ids if s in found]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submission", type=Path, required=True, help="our export (a directory with model.tflite)")
    parser.add_argument("--data-dir", type=Path, required=True, help="Kaggle-layout dataset to take sequences from")
    parser.add_argument("--sequences", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    sequences = load_sequences(args.data_dir, args.sequences)
    with tempfile.TemporaryDirectory() as tmp:
        seed_model = seed_tflite(Path(tmp) / "seed.tflite")
        results = {"ours": latencies(args.submission / "model.tflite", sequences, args.threads),
                   "seed": latencies(seed_model, sequences, args.threads)}
    print(f"{len(sequences)} sequences, {args.threads} threads (mean {np.mean([len(s) for s in sequences]):.0f} frames)")
    for name, ms in results.items():
        print(f"{name:5} p50 {np.percentile(ms, 50):7.2f} ms  p95 {np.percentile(ms, 95):7.2f} ms  "
              f"mean {ms.mean():7.2f} ms")
    ratio = np.percentile(results["seed"], 50) / np.percentile(results["ours"], 50)
    print(f"speed-up (p50 seed / p50 ours): {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
