"""Ablation of the training levers: the seed notebook's recipe, the seed geometry, then one lever at a time.

Every row of `ROWS` (below) is a list of config overrides. Each (row, seed) trains in its own
run directory, WORKDIR/run-<row>-s<seed>, on the same generated dataset (the harder data by
default, signers held out for validation: `val_split=participant`), for the same training
time (`time_budget_minutes=--minutes`, no epoch cap: `epochs=0` trains until the budget ends,
and the cosine decay is fitted to it). The budget counts training steps only: the
validation-loss pass and the greedy-decoded scoring every `--eval-every` epochs (and after
the last one) run outside it, so scoring never shortens a row's training; it only adds wall
time. The first epoch's graph tracing does count (tens of seconds, more for the conformer), and
a run stops at the first step past the budget. A seed sets a run's weights, shuffling, augmentation and held-out signers, so rows
compared at one seed see the same split (differences are taken over the seeds both rows have).

The rows, each compared with the one above it (the +aug-* rows with +ctc-joint, small with
old-default, old-default with seed-geometry):
  seed-notebook   the seed notebook's recipe (bench/seed_recipe.py: its preprocessing, key_dim =
                  num_hid, constant Adam 1e-4, no XLA, no augmentation) - the earlier baseline;
  seed-geometry   `preset=seed` without augmentation: our preprocessing and optimizer, the seed's
                  geometry (128 frames zero-padded, no mask, 16 encoder positions, transformer, no CTC);
  +geometry+mask  384 frames, padding masks, one strided convolution (2x subsampling);
  +conformer      conformer blocks at the `small` preset's widths;
  +ctc-joint      joint CTC/attention training at `small`'s ctc_weight (scored with the attention
                  decoder; `--joint` also scores each CTC row's best checkpoint with decoder=joint);
  +aug-temporal, +aug-spatial, +aug-cutmix, +aug-tokens
                  +ctc-joint with one augmentation group on at `small`'s probabilities and settings
                  (CutMix, off in `small`, at CUTMIX_P);
  small           `preset=small` as it is (+ctc-joint with every group on but CutMix: checked at start);
  old-default     the default before presets: `preset=seed` with speed, affine, frame drop and point
                  drop at probability 1 (the old boolean switches, as an old config.json loads).

A run whose summary.json exists, for the same config and dataset, is reused unless `--fresh`;
an interrupted one resumes from its last checkpoint. So the benchmark can be run a few rows
at a time and extended with more seeds; the table covers every finished run in WORKDIR that
matches today's rows and options. It prints a Markdown table, notes the differences under
MIN_DIFFERENCE (they need means over at least two seeds), and writes WORKDIR/results.json.

    python bench/bench_learning.py --list                           # the rows' overrides
    python bench/bench_learning.py --minutes 20                     # every row, seed 0
    python bench/bench_learning.py --minutes 20 --seeds 0,1         # adds seed 1 to the same table
    python bench/bench_learning.py --minutes 20 --seeds 0,1 --rows +conformer,+ctc-joint
    python bench/bench_learning.py --sequences 200 --participants 6 --minutes 0.2 \\
        --rows seed-geometry,small --workdir /tmp/bench_learning_smoke   # a smoke run, 2-4 min
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.seed_recipe import seed_config  # noqa: E402  (registers normalization="seed")
from fingerspell.config import Config  # noqa: E402
from fingerspell.features import augment  # noqa: E402
from fingerspell.files import atomic_write_json  # noqa: E402

# --- the rows -----------------------------------------------------------------------------------

#: CutMix's probability in its row (`small` leaves CutMix off, so it has no value to take).
CUTMIX_P = 0.5
#: Differences of mean best score below this need means over at least two seeds.
MIN_DIFFERENCE = 0.02
#: The non-probability settings of each augmentation (ranges, rates), taken from `small` with it.
AUGMENTATION_SETTINGS = {
    "speed": ("aug_speed_min", "aug_speed_max"), "window_speed": ("aug_speed_min", "aug_speed_max"),
    "frame_drop": ("aug_frame_drop_rate",), "time_mask": ("aug_time_mask_max",),
    "affine": ("aug_scale", "aug_rotate_degrees", "aug_shear", "aug_shift"), "point_drop": ("aug_point_drop_rate",),
}
#: The old boolean augmentation switches, on by default before presets (config.py `_upgrade_legacy`).
OLD_DEFAULT_AUGMENTATIONS = ("aug_speed_p", "aug_affine_p", "aug_frame_drop_p", "aug_point_drop_p")


@dataclass(frozen=True)
class Row:
    name: str
    changes: str  # what it changes against `compared_with`, for the table
    overrides: tuple[str, ...]  # `key=value` for Config.override; `preset=` first resets every key
    compared_with: str = ""


def preset_values(preset: str, *keys: str) -> tuple[str, ...]:
    """`key=value` of `keys` as `preset` sets them."""
    cfg = Config.from_dict({"preset": preset})
    return tuple(f"{key}={getattr(cfg, key)}" for key in keys)


def overrides_from(cfg: Config) -> tuple[str, ...]:
    """`cfg` as `preset=NAME` and the keys where it differs from that preset."""
    preset = Config.from_dict({"preset": cfg.preset}).to_dict()
    changed = [f"{key}={value}" for key, value in cfg.to_dict().items() if key != "preset" and value != preset[key]]
    return (f"preset={cfg.preset}", *changed)


def group_on(group: dict[str, str]) -> tuple[str, ...]:
    """One augmentation group switched on as in `small` (CutMix at CUTMIX_P): the probabilities `small`
    gives above 0, and their settings where `small` differs from `seed` (the chain's base preset)."""
    small, seed = Config.from_dict({"preset": "small"}), Config.from_dict({"preset": "seed"})
    probabilities = {**small.augmentation_probabilities, "aug_cutmix_p": CUTMIX_P}
    switched_on = [name for name, field in group.items() if probabilities[field] > 0]
    settings = dict.fromkeys(s for name in switched_on for s in AUGMENTATION_SETTINGS.get(name, ()))
    return (*(f"{group[name]}={probabilities[group[name]]}" for name in switched_on),
            *(f"{s}={getattr(small, s)}" for s in settings if getattr(small, s) != getattr(seed, s)))


NO_AUGMENTATION = tuple(f"{field}=0" for field in augment.PROBABILITIES.values())
SEED_GEOMETRY = ("preset=seed", *NO_AUGMENTATION)
GEOMETRY_MASK = (*SEED_GEOMETRY, *preset_values("small", "max_frames", "padding_mask", "conv_layers"))
CONFORMER = (*GEOMETRY_MASK, "encoder=conformer",
             *preset_values("small", "num_hid", "ff_dim", "enc_layers", "conv_module_kernel"))
CTC_JOINT = (*CONFORMER, *preset_values("small", "ctc_weight"), "decoder=attention")
AUGMENTATION_GROUPS = {"temporal": augment.TEMPORAL, "spatial": augment.SPATIAL, "cutmix": augment.PAIRED,
                       "tokens": augment.TOKENS}

ROWS: tuple[Row, ...] = (
    Row("seed-notebook", "the seed notebook's recipe: its preprocessing, key_dim=num_hid, constant Adam 1e-4, "
                         "no XLA, no augmentation", overrides_from(seed_config(jit_compile="off"))),
    Row("seed-geometry", "our preprocessing and optimizer; the seed's geometry (128 frames zero-padded, no mask, "
                         "16 positions, transformer, no CTC), no augmentation", SEED_GEOMETRY, "seed-notebook"),
    Row("+geometry+mask", "384 frames, padding masks, 2x subsampling", GEOMETRY_MASK, "seed-geometry"),
    Row("+conformer", "conformer blocks at small's widths", CONFORMER, "+geometry+mask"),
    Row("+ctc-joint", "joint CTC/attention training (attention decoder scores)", CTC_JOINT, "+conformer"),
    *(Row(f"+aug-{name}", f"{name} augmentation ({', '.join(group)})"
          + (f" at p={CUTMIX_P} (off in small)" if group is augment.PAIRED else ""),
          (*CTC_JOINT, *group_on(group)), "+ctc-joint")
      for name, group in AUGMENTATION_GROUPS.items()),
    Row("small", "the small preset as it is: every augmentation group but CutMix", ("preset=small",),
        "old-default"),
    Row("old-default", "the default before presets: seed geometry, speed/affine/frame drop/point drop at p=1",
        ("preset=seed", *(f"{field}=1" for field in OLD_DEFAULT_AUGMENTATIONS)), "seed-geometry"),
)
ROWS_BY_NAME = {row.name: row for row in ROWS}


def resolve(overrides: tuple[str, ...]) -> Config:
    return Config().override(list(overrides))


def check_chain_ends_in_small() -> None:
    """+ctc-joint with every group but CutMix on must be `small`: then each lever row differs from its
    predecessor, and the chain from `small`, only in what its overrides say."""
    everything = (*CTC_JOINT, *(o for group in AUGMENTATION_GROUPS.values() if group is not augment.PAIRED
                                for o in group_on(group)))
    built, small = resolve(everything).to_dict(), Config.from_dict({"preset": "small"}).to_dict()
    differing = {key: (built[key], small[key]) for key in small if key != "preset" and built[key] != small[key]}
    if differing:
        raise AssertionError(f"the +ctc-joint chain with every augmentation is not `small`: {differing}")


# --- data and runs ------------------------------------------------------------------------------

def ensure_dataset(workdir: Path, sequences: int, participants: int, difficulty: str, data_seed: int) -> Path:
    """The preprocessed dataset for these settings, generated once; its directory names every setting,
    so easy and hard data (or other sizes) never mix."""
    from fingerspell.data.convert import PreprocessConfig, preprocess
    from fingerspell.synth.generator import generate_dataset

    home = workdir / f"data-{difficulty}-{sequences}seq-{participants}signers-seed{data_seed}"
    raw, preprocessed = home / "raw", home / "preprocessed"
    if not (raw / "train.csv").exists():
        files = max(1, math.ceil(sequences / 400))
        generate_dataset(raw, files=files, sequences_per_file=math.ceil(sequences / files), participants=participants,
                         seed=data_seed, supplemental_files=0, overwrite=True, difficulty=difficulty)
    if not (preprocessed / "manifest.json").exists():
        preprocess(PreprocessConfig(data_dir=raw, out_dir=preprocessed, split="train", overwrite=True))
    return preprocessed


def run_config(row: Row, seed: int, minutes: float, eval_every: int) -> Config:
    """The row's config with the benchmark's time budget, seed and scoring cadence."""
    return Config.from_dict({**resolve(row.overrides).to_dict(), "seed": seed, "epochs": 0,
                             "time_budget_minutes": minutes, "eval_every": eval_every, "show_examples_every": 10})


def run_dir_of(workdir: Path, row: Row, seed: int) -> Path:
    return workdir / f"run-{row.name}-s{seed}"


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def mismatch(run_dir: Path, cfg: Config, data: Path) -> str:
    """Why the run in `run_dir` is not this (config, dataset) run; "" when it is."""
    saved, info = read_json(run_dir / "config.json"), read_json(run_dir / "run.json")
    if saved is None or info is None:
        return "no run there"
    if saved != cfg.to_dict():
        changed = sorted(k for k, v in cfg.to_dict().items() if saved.get(k) != v)
        return f"another config ({', '.join(changed)})"
    if info.get("data_dir") != str(data.resolve()):
        return f"another dataset ({info.get('data_dir')})"
    return ""


def train_or_reuse(row: Row, seed: int, cfg: Config, data: Path, workdir: Path, fresh: bool) -> dict:
    """The run's summary: reused when finished for this config and dataset, resumed when interrupted,
    else trained from the start."""
    from fingerspell.training.trainer import holds_run, resume, train

    run_dir = run_dir_of(workdir, row, seed)
    reason = "--fresh" if fresh else mismatch(run_dir, cfg, data)
    if not reason and (run_dir / "summary.json").exists():
        print(f"{run_dir.name}: finished, reused")
        return read_json(run_dir / "summary.json")
    start = time.perf_counter()
    if not reason and holds_run(run_dir):
        print(f"{run_dir.name}: resuming its last checkpoint", flush=True)
        summary = resume(data, run_dir)
    else:
        if run_dir.exists():
            print(f"{run_dir.name}: starting over ({reason})", flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"{run_dir.name}: training for {cfg.time_budget_minutes:g} min", flush=True)
        summary = train(data, run_dir, cfg)
    atomic_write_json(run_dir / "bench.json", {"row": row.name, "seed": seed, "overrides": list(row.overrides),
                                               "wall_seconds": round(time.perf_counter() - start, 1)})
    return summary


def joint_score(run_dir: Path, data: Path) -> float:
    """The best checkpoint's validation score with decoder=joint (attention rescored by CTC), kept in
    bench.json beside the run."""
    bench = read_json(run_dir / "bench.json") or {}
    if "joint_score" in bench:
        return bench["joint_score"]
    import tensorflow as tf

    from fingerspell import metric
    from fingerspell.data import pipeline
    from fingerspell.training.trainer import load_trained_model, predict_phrases

    model, cfg = load_trained_model(run_dir, "best")
    valid = pipeline.split_datasets(data, cfg, run_dir, resume=True).valid
    generate = tf.function(lambda frames: model.generate(frames, decoder="joint"), reduce_retracing=True)
    targets, predictions = predict_phrases(generate, pipeline.evaluation_batches(valid, cfg, cfg.eval_batch_size))
    bench["joint_score"] = round(metric.score(targets, predictions), 5)
    atomic_write_json(run_dir / "bench.json", bench)
    return bench["joint_score"]


def scoring_seconds(run_dir: Path) -> float:
    from fingerspell.training.trainer import read_metrics

    return round(sum(float(r["eval_seconds"]) for r in read_metrics(run_dir) if r.get("eval_seconds")), 1)


def finished_runs(workdir: Path, data: Path, minutes: float, eval_every: int) -> dict[str, dict[int, dict]]:
    """row -> seed -> summary (with bench.json's figures) of every finished run in WORKDIR that matches
    today's row, budget and dataset."""
    found: dict[str, dict[int, dict]] = {}
    for row in ROWS:
        for path in sorted(workdir.glob(f"run-{row.name}-s*/summary.json")):
            seed_text = path.parent.name.removeprefix(f"run-{row.name}-s")
            if not seed_text.isdigit():
                continue
            seed = int(seed_text)
            reason = mismatch(path.parent, run_config(row, seed, minutes, eval_every), data)
            if reason:
                print(f"{path.parent.name}: left out of the table ({reason})")
                continue
            extra = read_json(path.parent / "bench.json") or {}
            found.setdefault(row.name, {})[seed] = {**read_json(path), **extra,
                                                    "scoring_seconds": scoring_seconds(path.parent)}
    return found


# --- the table ----------------------------------------------------------------------------------

def mean(values: list[float | None]) -> float | None:
    """The mean of the values given (None: not measured, such as the throughput of a one-epoch run)."""
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def shown(value: float | None, form: str) -> str:
    return "-" if value is None else format(value, form)


def paired_difference(runs: dict[str, dict[int, dict]], row: Row) -> tuple[float | None, list[int]]:
    """Mean over the seeds both rows have of (row's best score - its reference's), and those seeds."""
    mine, theirs = runs.get(row.name, {}), runs.get(row.compared_with, {})
    seeds = sorted(set(mine) & set(theirs))
    return mean([mine[s]["best_score"] - theirs[s]["best_score"] for s in seeds]), seeds


def summarize_rows(runs: dict[str, dict[int, dict]]) -> dict[str, dict]:
    rows = {}
    for row in ROWS:
        by_seed = runs.get(row.name, {})
        if not by_seed:
            continue
        difference, paired = paired_difference(runs, row) if row.compared_with else (None, [])
        rows[row.name] = {
            "changes": row.changes, "overrides": list(row.overrides), "compared_with": row.compared_with,
            "seeds": sorted(by_seed), "best_score_mean": mean([s["best_score"] for s in by_seed.values()]),
            "best_score_by_seed": {seed: s["best_score"] for seed, s in sorted(by_seed.items())},
            "difference": difference, "paired_seeds": paired,
            "epochs_mean": mean([s["epochs"] for s in by_seed.values()]),
            "train_sequences_per_second_mean": mean([s["train_sequences_per_second"] for s in by_seed.values()]),
            "joint_score_by_seed": {seed: s["joint_score"] for seed, s in sorted(by_seed.items())
                                    if "joint_score" in s},
            "runs": by_seed,
        }
    return rows


def markdown_table(rows: dict[str, dict]) -> str:
    lines = ["| row | what it changes | vs | seeds | best score: mean (each seed) | difference | epochs | "
             "train seq/s |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        each = ", ".join(f"{v:.4f}" for v in r["best_score_by_seed"].values())
        joint = ", ".join(f"{v:.4f}" for v in r["joint_score_by_seed"].values())
        score = f"{r['best_score_mean']:.4f} ({each})" + (f"; joint decoder {joint}" if joint else "")
        reference = f"`{r['compared_with']}`" if r["compared_with"] else ""
        lines.append(f"| `{name}` | {r['changes']} | {reference} | "
                     f"{len(r['seeds'])} | {score} | {shown(r['difference'], '+.4f')} | "
                     f"{r['epochs_mean']:.0f} | {shown(r['train_sequences_per_second_mean'], '.0f')} |")
    return "\n".join(lines)


def close_differences(rows: dict[str, dict]) -> list[str]:
    """A line for each comparison under MIN_DIFFERENCE, saying whether it rests on two seeds or more."""
    notes = []
    for name, r in rows.items():
        if r["difference"] is None or abs(r["difference"]) >= MIN_DIFFERENCE:
            continue
        seeds = len(r["paired_seeds"])
        verdict = (f"mean over {seeds} seeds" if seeds >= 2 else
                   f"only {seeds} seed: run more (--seeds 0,1) before reading it")
        notes.append(f"- `{name}` vs `{r['compared_with']}`: {r['difference']:+.4f}, under {MIN_DIFFERENCE}; {verdict}")
    return notes


def report(rows: dict[str, dict], settings: dict) -> str:
    notes = close_differences(rows)
    head = (f"{settings['minutes']:g} min of training per run; {settings['sequences']} {settings['difficulty']} "
            f"sequences, {settings['participants']} signers, validation on held-out signers; difference: mean over "
            f"the seeds both rows share of (row - vs).")
    compared = sum(r["difference"] is not None for r in rows.values())
    if notes:
        tail = "\n".join(["", f"Differences under {MIN_DIFFERENCE} (read them only as means over 2+ seeds):", *notes])
    else:
        tail = f"\nNo difference under {MIN_DIFFERENCE} among {compared} compared pair(s)."
    return "\n".join([head, "", markdown_table(rows), tail])


# --- the command line ---------------------------------------------------------------------------

def added_overrides(row: Row) -> tuple[str, ...]:
    """What a chain row adds to the row it is compared with; every override for the others."""
    base = ROWS_BY_NAME[row.compared_with].overrides if row.compared_with else ()
    return row.overrides[len(base):] if base and row.overrides[:len(base)] == base else row.overrides


def rows_table() -> str:
    """The rows as Markdown: a chain row lists only the overrides it adds to its `vs` row."""
    lines = ["| row | vs | overrides (+: added to the vs row's) |", "|---|---|---|"]
    for row in ROWS:
        added = added_overrides(row)
        reference = f"`{row.compared_with}`" if row.compared_with else ""
        lines.append(f"| `{row.name}` | {reference} | {'+ ' if added != row.overrides else ''}`{' '.join(added)}` |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT / "work" / "bench_learning")
    parser.add_argument("--rows", default=",".join(ROWS_BY_NAME), help="comma-separated rows (default: all)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default: 0)")
    parser.add_argument("--minutes", type=float, default=20.0, help="training-time budget of each run")
    parser.add_argument("--eval-every", type=int, default=2, help="epochs between scorings (outside the budget)")
    parser.add_argument("--sequences", type=int, default=3200)
    parser.add_argument("--participants", type=int, default=32)
    parser.add_argument("--difficulty", choices=("hard", "easy"), default="hard")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the generated dataset")
    parser.add_argument("--fresh", action="store_true", help="retrain the chosen runs even when finished")
    parser.add_argument("--joint", action="store_true",
                        help="also score each CTC row's best checkpoint with decoder=joint")
    parser.add_argument("--list", action="store_true", help="print the rows' overrides and stop")
    args = parser.parse_args(argv)
    args.rows = [name.strip() for name in args.rows.split(",") if name.strip()]
    if unknown := [name for name in args.rows if name not in ROWS_BY_NAME]:
        parser.error(f"unknown rows {unknown}; rows: {', '.join(ROWS_BY_NAME)}")
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_chain_ends_in_small()
    if args.list:
        print(rows_table())
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = ensure_dataset(args.workdir, args.sequences, args.participants, args.difficulty, args.data_seed)
    for name in args.rows:
        row = ROWS_BY_NAME[name]
        for seed in args.seeds:
            cfg = run_config(row, seed, args.minutes, args.eval_every)
            train_or_reuse(row, seed, cfg, data, args.workdir, args.fresh)
            if args.joint and cfg.ctc_weight > 0:
                score = joint_score(run_dir_of(args.workdir, row, seed), data)
                print(f"{row.name} seed {seed}: best checkpoint with decoder=joint {score:.4f}")
    settings = {key: (str(v) if isinstance(v, Path) else v) for key, v in vars(args).items()}
    rows = summarize_rows(finished_runs(args.workdir, data, args.minutes, args.eval_every))
    print("\n" + report(rows, settings))
    atomic_write_json(args.workdir / "results.json", {"settings": {**settings, "data": str(data)}, "rows": rows,
                                                      "close_differences": close_differences(rows)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
