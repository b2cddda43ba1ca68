"""Per-sequence TFLite latency and model size for every preset x decoder, in both TFLite runtimes.

Each preset (seed, small, kaggle, large) is built with random weights (latency does not depend on
trained values) and exported through the library's own `convert` (fp16 by default, what a
submission uses) once per decoder (attention, ctc, joint; the seed preset has no CTC head). Random
weights would stop decoding at `>` by chance, so END's classifier bias is set to -1e4 (never
emitted) and the attention and joint decoders run exactly `--steps` steps (default 19: Kaggle's
mean phrase is 17.8 characters, + END); greedy CTC costs the same whatever it spells.

Input: the first `--sequences` sequences of a Kaggle-layout dataset (`--data-dir`), or random frames
whose lengths follow a fixed-seed lognormal fitted to Kaggle's (mean 160, median 148 frames, clipped
to 10..800), each hand missing in runs (~30% of frames). Sequences are fed one at a time, as the
grader does, to ai-edge-litert and to tflite-runtime 2.14.0 (Kaggle's 2023 grader), each model in a
child process per runtime: an old runtime may die of a signal, which becomes a row, not a traceback.

One extra row is the seed notebook's export path (63 full-prefix decoder passes, no early stop, its
own preprocessing, fp32 as it exported), the baseline the README cites; `--submission DIR` adds a
row for a trained export.

    python bench/bench_latency.py                                   # everything: ~20-25 min on 2 busy cores
    python bench/bench_latency.py --presets small --sequences 10    # smoke check: ~4 min (--no-seed-path: ~2)

Most of the time is conversion (~30 s a small model, ~1 min kaggle, 1-2 min large, ~1.5 min the seed
path) and the seed path in tflite-runtime (~1.5-3 s a sequence).
    python bench/bench_latency.py --data-dir DATASET --json latency.json
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's info lines would bury the progress lines

PRESETS = ("seed", "small", "kaggle", "large")
DECODERS = ("attention", "ctc", "joint")
RUNTIMES = {"litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}
RUNTIME_PACKAGES = {"litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime"}
#: (preset, decoder) -> p50 target in ms, from the issue.
TARGETS = {("kaggle", "ctc"): 50.0, ("kaggle", "attention"): 50.0, ("kaggle", "joint"): 150.0}
END_BIAS = -1e4  #: END's classifier bias: never emitted, and still finite in fp16
SEED_PATH = "seed notebook path"

# Kaggle's frames per sequence: mean 160, median 148 -> lognormal mu = ln 148, sigma^2 = 2 ln(160 / 148).
LENGTH_MEDIAN, LENGTH_MEAN, LENGTH_MIN, LENGTH_MAX = 148, 160, 10, 800
MISSING_SHARE, MISSING_RUN = 0.3, 8.0  #: share of frames a hand is missing, mean run of missing frames

#: Child process: time one model on the saved sequences in one runtime, print JSON on the last line.
MEASURE = """
import json, sys, time
import numpy as np
module, model, sequences, threads = sys.argv[1:]
Interpreter = __import__(module, fromlist=["Interpreter"]).Interpreter
data = np.load(sequences)
frames = np.split(data["frames"], np.cumsum(data["lengths"])[:-1])
runner = Interpreter(model_path=model, num_threads=int(threads)).get_signature_runner("serving_default")
runner(inputs=frames[0])  # warm-up: allocation and the first resize
ms, rows = [], []
for x in frames:
    start = time.perf_counter()
    out = runner(inputs=x)["outputs"]
    ms.append((time.perf_counter() - start) * 1000.0)
    rows.append(int(out.shape[0]))
print(json.dumps({"ms": ms, "rows": rows}))
"""


# --- sequences ----------------------------------------------------------------------------------

def random_sequences(n: int, seed: int = 0, landmarks: str = "hands_arms") -> list[np.ndarray]:
    """`n` raw [T, C] sequences of a landmark set's columns (156 for hands_arms): lengths from a lognormal
    fitted to Kaggle's (clipped 10..800), values uniform in [0, 1), each hand missing (NaN) in runs for ~30%
    of the frames. Sequence i depends on (seed, i) only: fewer sequences are the first ones of a longer run."""
    from fingerspell.data import schema

    selected = schema.landmark_set(landmarks)

    sigma = math.sqrt(2.0 * math.log(LENGTH_MEAN / LENGTH_MEDIAN))
    # Two-state chain per hand: leave a missing run with p 1/MISSING_RUN, start one so ~30% are missing.
    leave = 1.0 / MISSING_RUN
    enter = leave * MISSING_SHARE / (1.0 - MISSING_SHARE)
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        length = int(np.clip(np.rint(rng.lognormal(math.log(LENGTH_MEDIAN), sigma)), LENGTH_MIN, LENGTH_MAX))
        frames = rng.random((length, selected.n_columns), dtype=np.float32)
        for columns in (selected.left_hand_columns, selected.right_hand_columns):
            missing = rng.random() < MISSING_SHARE
            flips = rng.random(length)
            for t in range(length):
                if missing:
                    frames[t, columns] = np.nan
                missing = flips[t] >= leave if missing else flips[t] < enter
        out.append(frames)
    return out


def load_sequences(data_dir: Path, n: int, landmarks: str = "hands_arms") -> list[np.ndarray]:
    """The first `n` sequences of the dataset's train split, raw [T, C] (a landmark set's columns) as the
    grader sends them."""
    from fingerspell.data import schema
    from fingerspell.data.metadata import load_metadata
    from fingerspell.data.parquet import read_sequences

    meta = load_metadata(data_dir, "train")
    wanted: dict[str, list[int]] = {}
    for parquet, sequence_id in list(zip(meta.parquets, meta.sequence_ids.tolist()))[:n]:
        wanted.setdefault(parquet, []).append(sequence_id)
    out = []
    for parquet, ids in wanted.items():
        found = read_sequences(parquet, schema.landmark_set(landmarks).columns, ids)
        out += [found[s] for s in ids if s in found]
    return out


# --- models ---------------------------------------------------------------------------------------

class FixedSteps:
    """The model as `InferenceModule` uses it (its weights and `generate`), decoding exactly `steps`
    steps: `generate`'s max_steps, which the export leaves at max_target_len - 1."""

    def __init__(self, model, steps: int):
        self.model, self.steps = model, steps

    @property
    def weights(self):
        return self.model.weights

    def generate(self, frames, max_steps=None, decoder=None):
        return self.model.generate(frames, max_steps=self.steps, decoder=decoder)


def preset_model(preset: str, landmarks: str = "hands_arms"):
    """(config, model with random weights and END never emitted) for a preset reading a landmark set."""
    from fingerspell import features
    from fingerspell.config import Config
    from fingerspell.data import vocab
    from fingerspell.model.transformer import build_model

    cfg = Config.from_dict({"preset": preset, "landmarks": landmarks})
    model = build_model(cfg, features.feature_dim(cfg.normalization, cfg.landmark_set))
    bias = model.classifier.bias.numpy()
    bias[vocab.END] = END_BIAS
    model.classifier.bias.assign(bias)
    return cfg, model


def export(model, cfg, decoder: str, quantize: str, steps: int) -> bytes:
    from fingerspell.export.tflite import convert

    return convert(model if decoder == "ctc" else FixedSteps(model, steps), cfg, quantize, decoder)


def seed_path_tflite() -> tuple[bytes, int]:
    """The seed notebook's export path (fp32, as it exported) and its parameter count; random weights
    do not change its cost (always 63 steps)."""
    import tensorflow as tf

    from bench.seed_recipe import SEED_FEATURES, seed_config, seed_preprocess_frames
    from fingerspell.data import schema, vocab
    from fingerspell.model.transformer import build_model

    class SeedInference(tf.Module):
        """The seed notebook's TFLite module: 63 full-prefix decoder passes, no early stop."""

        def __init__(self, model, cfg):
            super().__init__()
            self.model, self.cfg = model, cfg
            self.weights = [v.value for v in model.weights]

        @tf.function(input_signature=[tf.TensorSpec([None, schema.N_SELECTED_COLUMNS], tf.float32, name="inputs")])
        def serve(self, inputs):
            frames = seed_preprocess_frames(inputs, self.cfg.max_frames)[None]
            encoded, mask = self.model.encode(frames)
            tokens = tf.fill([1, 1], vocab.START)
            for _ in range(self.cfg.max_target_len - 1):  # unrolled, as the seed's Python loop traces
                y = self.model.embed_tokens(tokens)
                for layer in self.model.decoder_layers:
                    y = layer(y, encoded, mask)
                last = tf.argmax(self.model.classifier(y)[:, -1], axis=-1, output_type=tf.int32)
                tokens = tf.concat([tokens, last[:, None]], axis=1)
            ids = tokens[0]
            end = tf.argmax(tf.cast(tf.equal(ids, vocab.END), tf.int32))
            end = tf.where(end < 1, tf.constant(2, end.dtype), end)
            return {"outputs": tf.one_hot(ids[1:end], vocab.N_CHARS)}

    cfg = seed_config()
    model = build_model(cfg, SEED_FEATURES)
    module = SeedInference(model, cfg)
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(module, saved, signatures={"serving_default": module.serve.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert(), model.count_params()


# --- measuring ------------------------------------------------------------------------------------

def export_failure(err: Exception) -> str:
    """A one-line reason for a failed conversion (the converter's message runs to pages of MLIR)."""
    text = str(err)
    select = [line.strip() for line in text.splitlines() if line.strip().startswith("TF Select ops:")]
    if select:
        return f"export failed: needs {select[0]}"
    lines = text.strip().splitlines()
    return f"export failed: {type(err).__name__}: {lines[0][:120] if lines else ''}"


def save_sequences(sequences: list[np.ndarray], path: Path) -> Path:
    np.savez(path, frames=np.concatenate(sequences).astype(np.float32), lengths=np.array([len(s) for s in sequences]))
    return path


def measure(runtime: str, model_path: Path, sequences_path: Path, threads: int, timeout: float) -> dict:
    """Time one model in one runtime in a child process: {"ms": [...], "rows": [...]} or {"error": why}."""
    command = [sys.executable, "-c", MEASURE, RUNTIMES[runtime], str(model_path), str(sequences_path), str(threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if done.returncode != 0:
        if done.returncode < 0:
            try:
                why = f"crashed ({signal.Signals(-done.returncode).name})"
            except ValueError:
                why = f"crashed (signal {-done.returncode})"
        else:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            why = f"failed: {lines[-1][:160] if lines else f'exit {done.returncode}'}"
        return {"error": why, "stderr": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def runtime_label(runtime: str) -> str:
    try:
        return f"{RUNTIME_PACKAGES[runtime]} {importlib.metadata.version(RUNTIME_PACKAGES[runtime])}"
    except importlib.metadata.PackageNotFoundError:
        return f"{RUNTIME_PACKAGES[runtime]} (not installed)"


def rows_for_model(name: str, decoder: str, params: int | None, tflite: bytes, runtimes: list[str],
                   sequences_path: Path, args, work: Path, expected_rows: int | None) -> list[dict]:
    path = work / f"{name}-{decoder}.tflite".replace(" ", "_")
    path.write_bytes(tflite)
    rows = []
    for runtime in runtimes:
        start = time.perf_counter()
        result = measure(runtime, path, sequences_path, args.threads, args.timeout)
        row = {"preset": name, "decoder": decoder, "params": params, "size_mb": len(tflite) / 1e6,
               "runtime": runtime_label(runtime), "seconds": round(time.perf_counter() - start, 1)}
        if "error" in result:
            row.update(error=result["error"], stderr=result.get("stderr", ""))
        else:
            ms = np.array(result["ms"])
            row.update(p50_ms=float(np.percentile(ms, 50)), p95_ms=float(np.percentile(ms, 95)),
                       mean_ms=float(ms.mean()), output_rows=[min(result["rows"]), max(result["rows"])])
            if expected_rows is not None and set(result["rows"]) != {expected_rows}:
                row["warning"] = f"decoded {row['output_rows']} characters, expected exactly {expected_rows}"
        rows.append(row)
        status = row.get("error") or f"p50 {row['p50_ms']:.1f} ms"
        print(f"  {name}/{decoder} on {row['runtime']}: {status} ({row['seconds']} s)", file=sys.stderr, flush=True)
    return rows


# --- report ---------------------------------------------------------------------------------------

def markdown_table(rows: list[dict]) -> str:
    lines = ["| preset | decoder | params | size MB | runtime | p50 ms | p95 ms | mean ms |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        params = f"{r['params'] / 1e6:.2f}M" if r.get("params") else "-"
        if "error" in r:
            timing = [r["error"], "-", "-"]
        else:
            timing = [f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['mean_ms']:.1f}"]
        size = "-" if r.get("size_mb") is None else f"{r['size_mb']:.1f}"
        lines.append(f"| {r['preset']} | {r['decoder']} | {params} | {size} | {r['runtime']} | "
                     + " | ".join(timing) + " |")
    return "\n".join(lines)


def target_lines(rows: list[dict]) -> list[str]:
    lines = []
    for (preset, decoder), limit in TARGETS.items():
        found = [r for r in rows if r["preset"] == preset and r["decoder"] == decoder]
        if not found:
            continue
        for r in found:
            if "error" in r:
                verdict = f"NOT MET ({r['error']})"
            else:
                verdict = f"{r['p50_ms']:.1f} ms: {'met' if r['p50_ms'] <= limit else 'NOT MET'}"
            lines.append(f"- target {preset} {decoder} p50 <= {limit:.0f} ms on {r['runtime']}: {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    parser.add_argument("--decoders", nargs="+", choices=DECODERS, default=list(DECODERS))
    parser.add_argument("--runtimes", nargs="+", choices=tuple(RUNTIMES), default=list(RUNTIMES),
                        help="litert (ai-edge-litert) and/or tflite-runtime (2.14.0, Kaggle's 2023 grader)")
    parser.add_argument("--quantize", choices=("none", "fp16", "dynamic"), default="fp16",
                        help="the export's quantization (fp16: what a submission uses)")
    parser.add_argument("--steps", type=int, default=19,
                        help="decoding steps of the attention and joint decoders (19: Kaggle's mean phrase + END)")
    parser.add_argument("--sequences", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, help="Kaggle-layout dataset to take sequences from "
                                                      "(default: random frames of Kaggle-like lengths)")
    parser.add_argument("--landmarks", choices=("hands_arms", "hands_arms_face", "all"), default="hands_arms",
                        help="the landmark set the models read (the seed path reads hands_arms only)")
    parser.add_argument("--no-seed-path", action="store_true", help="skip the seed notebook's export path row")
    parser.add_argument("--submission", type=Path, help="also time a trained export (a directory with model.tflite)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per model and runtime")
    parser.add_argument("--json", type=Path, help="save the rows and the settings here")
    args = parser.parse_args(argv)
    started, load_before = time.perf_counter(), os.getloadavg()

    sequences = (load_sequences(args.data_dir, args.sequences, args.landmarks) if args.data_dir
                 else random_sequences(args.sequences, landmarks=args.landmarks))
    lengths = np.array([len(s) for s in sequences])
    source = str(args.data_dir) if args.data_dir else "random frames (lognormal lengths, seed 0)"
    print(f"{len(sequences)} sequences from {source}: frames mean {lengths.mean():.0f}, median "
          f"{np.median(lengths):.0f}, max {lengths.max()}; {sequences[0].shape[1]} columns ({args.landmarks}); "
          f"{args.threads} threads; {args.quantize}; "
          f"attention/joint decode {args.steps} steps", file=sys.stderr, flush=True)

    from fingerspell.export.tflite import ExportError, check_decoder

    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sequences_path = save_sequences(sequences, work / "sequences.npz")
        for preset in args.presets:
            cfg, model = preset_model(preset, args.landmarks)
            for decoder in args.decoders:
                try:
                    check_decoder(decoder, cfg)
                except ExportError as err:
                    skipped.append(f"{preset}/{decoder}: {err}")
                    continue
                start = time.perf_counter()
                try:
                    tflite = export(model, cfg, decoder, args.quantize, args.steps)
                except Exception as err:  # noqa: BLE001 - a model that does not convert is a row of the report
                    why = export_failure(err)
                    print(f"{preset}/{decoder}: {why}", file=sys.stderr, flush=True)
                    rows.append({"preset": preset, "decoder": decoder, "params": model.count_params(),
                                 "size_mb": None, "runtime": "-", "error": why})
                    continue
                print(f"{preset}/{decoder}: converted in {time.perf_counter() - start:.0f} s, "
                      f"{len(tflite) / 1e6:.1f} MB", file=sys.stderr, flush=True)
                rows += rows_for_model(preset, decoder, model.count_params(), tflite, args.runtimes, sequences_path,
                                       args, work, None if decoder == "ctc" else args.steps)
        if not args.no_seed_path and args.landmarks == "hands_arms":
            start, decoder = time.perf_counter(), "attention, 63 full passes"
            try:
                tflite, params = seed_path_tflite()
            except Exception as err:  # noqa: BLE001
                why = export_failure(err)
                print(f"{SEED_PATH}: {why}", file=sys.stderr, flush=True)
                rows.append({"preset": SEED_PATH, "decoder": decoder, "params": None, "size_mb": None,
                             "runtime": "-", "error": why})
            else:
                print(f"{SEED_PATH}: converted in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
                rows += rows_for_model(SEED_PATH, decoder, params, tflite, args.runtimes, sequences_path, args, work,
                                       None)
        if args.submission:
            rows += rows_for_model(f"submission {args.submission.name}", "as exported", None,
                                   (args.submission / "model.tflite").read_bytes(), args.runtimes, sequences_path,
                                   args, work, None)

    total, load_after = time.perf_counter() - started, os.getloadavg()
    print(f"\n{len(sequences)} sequences ({source}; frames mean {lengths.mean():.0f}, median "
          f"{np.median(lengths):.0f}, max {lengths.max()}), {args.threads} threads, {args.quantize} export, "
          f"attention/joint decoders run {args.steps} steps, the seed path 63 steps (fp32).\n")
    print(markdown_table(rows))
    print()
    for line in target_lines(rows):
        print(line)
    for row in rows:
        if "warning" in row:
            print(f"- warning: {row['preset']}/{row['decoder']} on {row['runtime']}: {row['warning']}")
    for line in skipped:
        print(f"- skipped {line}")
    print(f"\ntotal {total / 60:.1f} min; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    if args.json:
        args.json.write_text(json.dumps({
            "sequences": len(sequences), "source": source, "frames_mean": float(lengths.mean()),
            "frames_median": float(np.median(lengths)), "frames_max": int(lengths.max()), "threads": args.threads,
            "quantize": args.quantize, "steps": args.steps, "seconds": round(total, 1),
            "load_average": [load_before[0], load_after[0]], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
