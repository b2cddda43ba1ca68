"""The letters classifier's figures: training time, held-out and cross-signer accuracy, model size, latency.

Everything goes through the real library code:

1. `fingerspell.letters.training.train` on LANDMARKS (default `LettersConfig`, one run per --seeds
   entry, RUN = WORKDIR/seed-<s>): wall seconds of `train` (reading the .npy items included, the
   TensorFlow import not), held-out block accuracy on windows and still frames (RUN/summary.json),
   bytes of RUN/letters.tflite. A run whose summary.json exists is reused (its stored seconds are
   shown, marked "reused") unless --fresh.
2. `fingerspell.letters.inference.evaluate` of each run on IMAGES (one photo per letter of another
   signer): accuracy x/26 and which letters are right; mean, min and max over the seeds. The images'
   landmarks are extracted once into WORKDIR/images-cache and shared by the runs.
3. Latency per image, separately, on this machine's CPU:
   (a) landmark extraction, `HandExtractor.image` (MediaPipe Hands, static-image mode) on the images:
       "extract" is the call on an already decoded RGB array, "decode+extract" adds cv2.imread and the
       BGR->RGB conversion; one untimed warm-up pass first (it loads MediaPipe's graphs);
   (b) classification of one still window (batch 1), `LettersModel.probabilities` on LiteRT with
       num_threads=1 and 2 (seed <first>'s model), after --warmup untimed calls.
   p50 and p95 in ms. Other work on these cores (a test run) slows every row: the load average is printed.
4. --clips: each run's held-out blocks (rebuilt from RUN/config.json with the library's split) cut into
   clips of --clip-frames consecutive frames (never across a break of the recording), each classified as
   a clip is by `evaluate` (`LettersModel.frame_probabilities`: its frames' windows, probabilities averaged).

Usage:

    python bench/bench_letters.py [--seeds 0,1,2] [--workdir DIR] [--fresh] [--clips] [--clip-frames 30]
                                  [--image-repeats 5] [--calls 1000] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fingerspell import machine  # noqa: E402

DATA = Path("/work/shared/data/real/letters")
TIMING_NAME = "bench-timing.json"  # beside summary.json: the seconds `train` took, for a reused run


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "n": len(ms)}


# --- 1. training ------------------------------------------------------------------------------

def train_seed(seed: int, landmarks: Path, run_dir: Path, fresh: bool) -> dict:
    """One default run with this seed (or the finished one already in run_dir); its figures."""
    from fingerspell.letters.config import LettersConfig
    from fingerspell.letters.training import MODEL_NAME, train

    done = (run_dir / "summary.json").exists() and (run_dir / TIMING_NAME).exists()
    if fresh or not done:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a partial run (train refuses a folder holding a model) or --fresh
        import keras

        keras.backend.clear_session()
        started = time.perf_counter()
        train(landmarks, run_dir, LettersConfig(seed=seed).validate())
        (run_dir / TIMING_NAME).write_text(json.dumps({"train_seconds": time.perf_counter() - started}))
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seed": seed, "run_dir": str(run_dir), "reused": done and not fresh,
            "train_seconds": round(json.loads((run_dir / TIMING_NAME).read_text())["train_seconds"], 1),
            "frames": summary["frames"], "train_frames": summary["train_frames"],
            "held_out_frames": summary["held_out_frames"], "best_epoch": summary["best_epoch"],
            "held_out_windows": summary["held_out_accuracy"]["windows"],
            "held_out_still": summary["held_out_accuracy"]["still"],
            "model_bytes": (run_dir / MODEL_NAME).stat().st_size}


# --- 2. the other signer's images ------------------------------------------------------------

def evaluate_images(run_dir: Path, images: Path, cache_dir: Path) -> dict:
    from fingerspell.letters.inference import evaluate

    report = evaluate(run_dir, images, confusion_path=run_dir / "confusion-images.png", cache_dir=cache_dir)
    wrong = {i["label"]: i["predicted"] for i in report["items"] if not i["correct"]}
    return {"images_correct": sum(c["correct"] for c in report["per_class"].values()),
            "images": report["samples"], "images_accuracy": report["accuracy"], "images_no_hand": report["no_hand"],
            "images_wrong": wrong}  # true letter -> predicted (None: no hand)


# --- 4. clips of the held-out blocks ----------------------------------------------------------

def held_out_clips(run_dir: Path, landmarks: Path, clip_frames: int, found: list | None) -> tuple[dict, list]:
    """Accuracy over clips cut from the run's held-out blocks; also returns the items read (to reuse)."""
    from fingerspell.letters import items
    from fingerspell.letters.config import LettersConfig
    from fingerspell.letters.inference import LettersModel
    from fingerspell.letters.training import build_series, split_frames

    cfg = LettersConfig.load(run_dir / "config.json")
    if found is None:
        found = items.read_items(items.class_folders(landmarks))
    series = build_series(found)
    model = LettersModel(run_dir)
    frames, _ = split_frames(series, model.labels, cfg)  # the same split as training (seeded by cfg.seed)
    series_id = np.concatenate([np.full(len(s.frames), i) for i, s in enumerate(series)])
    correct, total, per_class = 0, 0, {}
    for c, label in enumerate(model.labels):
        held = np.flatnonzero(frames.validation & (frames.labels == c))
        runs = np.split(held, np.flatnonzero((np.diff(held) != 1) | (np.diff(series_id[held]) != 0)) + 1)
        right = count = 0
        for run in runs:
            for start in range(0, len(run) - clip_frames + 1, clip_frames):
                chunk = run[start:start + clip_frames]
                clip = items.Item(Path(label), label, "frames", frames.windows[chunk, -1],
                                  frames.handedness[chunk], len(chunk))
                guess = int(np.argmax(model.frame_probabilities(clip).mean(axis=0)))
                right, count = right + (guess == c), count + 1
        per_class[label] = [right, count]
        correct, total = correct + right, total + count
    return {"clips_correct": correct, "clips": total, "clips_accuracy": round(correct / max(total, 1), 4),
            "clips_wrong": {k: v for k, v in per_class.items() if v[0] < v[1]}}, found


# --- 3. latency -------------------------------------------------------------------------------

def extraction_latency(images: Path, repeats: int) -> dict:
    """HandExtractor.image per image: on decoded RGB ("extract"), and with decoding ("decode+extract")."""
    import cv2

    from fingerspell.letters.items import HandExtractor, class_folders

    paths = [p for ps in class_folders(images).values() for p in ps]
    rgbs = [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths]
    extract, decode_extract, hands = [], [], 0
    with HandExtractor() as extractor:
        for rgb in rgbs:  # warm-up: builds MediaPipe's graph, first inferences
            hands += extractor.image(rgb) is not None
        for _ in range(repeats):
            for path, rgb in zip(paths, rgbs):
                t = time.perf_counter()
                extractor.image(rgb)
                extract.append(time.perf_counter() - t)
                t = time.perf_counter()
                extractor.image(cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
                decode_extract.append(time.perf_counter() - t)
    h, w = rgbs[0].shape[:2]
    return {"images": len(paths), "with_hand": hands, "size": f"{w}x{h}", "extract": percentiles(extract),
            "decode+extract": percentiles(decode_extract)}


def classification_latency(run_dir: Path, images: Path, cache_dir: Path, calls: int, warmup: int) -> dict:
    """LettersModel.probabilities on one still window (an image's landmarks), batch 1, per thread count."""
    from fingerspell.letters import features, items
    from fingerspell.letters.inference import LettersModel

    found = next(i for i in items.read_items(items.class_folders(images), items.LandmarkCache(cache_dir))
                 if len(i.landmarks))
    window, hand = features.still_windows(found.landmarks[:1]), found.handedness[:1]
    out = {}
    for threads in (1, 2):
        model = LettersModel(run_dir, num_threads=threads)
        for _ in range(warmup):
            model.probabilities(window, hand)
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            model.probabilities(window, hand)
            times.append(time.perf_counter() - t)
        out[f"threads={threads}"] = percentiles(times)
    return out


# --- report -----------------------------------------------------------------------------------

def print_table(rows: list[dict], clips: bool) -> None:
    head = ["seed", "train s", "held-out win", "held-out still", "tflite B", "images", "wrong (true>pred)"]
    if clips:
        head.insert(6, "clips")
    print(" | ".join(head))
    for r in rows:
        cells = [str(r["seed"]), f"{r['train_seconds']:.1f}" + ("*" if r["reused"] else ""),
                 f"{r['held_out_windows']:.4f}", f"{r['held_out_still']:.4f}", str(r["model_bytes"]),
                 f"{r['images_correct']}/{r['images']}",
                 " ".join(f"{t}>{p or '-'}" for t, p in sorted(r["images_wrong"].items()))]
        if clips:
            cells.insert(6, f"{r['clips_correct']}/{r['clips']}")
        print(" | ".join(cells))


def spread(rows: list[dict], key: str) -> dict:
    values = [r[key] for r in rows]
    return {"mean": round(float(np.mean(values)), 4), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--landmarks", type=Path, default=DATA / "landmarks", help="training class folders (%(default)s)")
    p.add_argument("--images", type=Path, default=DATA / "images", help="the other signer's images (%(default)s)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated; one training run each (default %(default)s)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/fingerspell-bench-letters"),
                   help="run dirs seed-<s>/ and the images' landmark cache (default %(default)s)")
    p.add_argument("--fresh", action="store_true", help="train again even where a finished run exists")
    p.add_argument("--clips", action="store_true", help="also classify clips cut from the held-out blocks")
    p.add_argument("--clip-frames", type=int, default=30, help="frames per held-out clip (default 30)")
    p.add_argument("--image-repeats", type=int, default=5, help="timed passes over the images (default 5)")
    p.add_argument("--calls", type=int, default=1000, help="timed classification calls (default 1000)")
    p.add_argument("--warmup", type=int, default=100, help="untimed classification calls first (default 100)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    logging.basicConfig(level=logging.ERROR)  # the library's per-epoch and per-item logs stay quiet
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    started = time.perf_counter()
    load_before = os.getloadavg()
    print(f"machine: {machine.cpu_cores()} cores, Python {platform.python_version()}; load average "
          f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} at the start "
          f"(other work on these cores slows training and latency)", flush=True)
    import tensorflow as tf  # noqa: F401  (imported before the timed training)

    cache_dir = args.workdir / "images-cache"
    rows, found = [], None
    for seed in seeds:
        row = train_seed(seed, args.landmarks, args.workdir / f"seed-{seed}", args.fresh)
        row.update(evaluate_images(Path(row["run_dir"]), args.images, cache_dir))
        if args.clips:
            clip_row, found = held_out_clips(Path(row["run_dir"]), args.landmarks, args.clip_frames, found)
            row.update(clip_row)
        row["load_average_after"] = round(os.getloadavg()[0], 2)
        print(f"  seed {seed}: trained {row['train_seconds']:.1f}s{' (reused)' if row['reused'] else ''}, "
              f"images {row['images_correct']}/{row['images']}, load average {row['load_average_after']:.2f}",
              flush=True)
        rows.append(row)
    first = rows[0]
    print(f"data: {args.landmarks}: {first['frames']} frames ({first['train_frames']} train, "
          f"{first['held_out_frames']} held out per seed); {args.images}: {first['images']} images")
    print_table(rows, args.clips)
    if any(r["reused"] for r in rows):
        print("  * reused run: seconds measured when it was trained")
    summary = {"images_correct": spread(rows, "images_correct"), "held_out_windows": spread(rows, "held_out_windows"),
               "held_out_still": spread(rows, "held_out_still"), "train_seconds": spread(rows, "train_seconds")}
    if args.clips:
        summary["clips_accuracy"] = spread(rows, "clips_accuracy")
    letters = json.loads((Path(first["run_dir"]) / "labels.json").read_text())
    right_in = {t: sum(t not in r["images_wrong"] for r in rows) for t in letters}
    summary["always_wrong"] = [t for t, n in right_in.items() if n == 0]
    summary["sometimes_wrong"] = [t for t, n in right_in.items() if 0 < n < len(rows)]
    s = summary
    held = {k: f"{s[k]['mean']:.4f} ({s[k]['min']:.4f}-{s[k]['max']:.4f})"
            for k in ("held_out_windows", "held_out_still", "clips_accuracy") if k in s}
    print(f"over {len(rows)} seeds: images {s['images_correct']['mean']:.1f}/{first['images']} "
          f"(min {s['images_correct']['min']}, max {s['images_correct']['max']}); held-out windows "
          f"{held['held_out_windows']}, still {held['held_out_still']}"
          + (f"; clips {held['clips_accuracy']}" if args.clips else ""))
    print(f"  images always wrong: {' '.join(s['always_wrong']) or '-'}; wrong in some seeds: "
          f"{' '.join(s['sometimes_wrong']) or '-'}")

    extraction = extraction_latency(args.images, args.image_repeats)
    classification = classification_latency(Path(first["run_dir"]), args.images, cache_dir, args.calls, args.warmup)
    load_after = os.getloadavg()
    print(f"latency per image (load average {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}):")
    print(f"  landmarks, HandExtractor.image on {extraction['images']} {extraction['size']} images "
          f"({extraction['with_hand']} with a hand), {args.image_repeats} passes after a warm-up pass:")
    for name in ("extract", "decode+extract"):
        e = extraction[name]
        print(f"    {name:15s} p50 {e['p50_ms']:7.2f} ms  p95 {e['p95_ms']:7.2f} ms  (n={e['n']})")
    print(f"  classification, LettersModel.probabilities, one still window (batch 1), LiteRT, seed {first['seed']}, "
          f"{args.calls} calls after {args.warmup}:")
    for name, c in classification.items():
        print(f"    {name:15s} p50 {c['p50_ms']:7.3f} ms  p95 {c['p95_ms']:7.3f} ms")
    print(f"total {time.perf_counter() - started:.0f}s")
    if args.json:
        report = {"cores": machine.cpu_cores(), "python": platform.python_version(),
                  "load_average": {"start": load_before, "end": load_after},
                  "settings": {k: v for k, v in vars(args).items() if k != "json"}, "runs": rows, "summary": summary,
                  "latency": {"extraction": extraction, "classification": classification}}
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
