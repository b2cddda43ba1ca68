"""The `fingerspell` command: one parser per subcommand, shared by every way to start it.

`fingerspell CMD ...`, `python -m fingerspell CMD ...` and the checkout's shims
`python -m preprocess|train|export ...` build a command's parser with the same
`add_<command>` function below, so their flags cannot drift apart. Implementations are
imported inside the `run_<command>` functions: `--help`, `synth` and `preprocess` need
only the base install (numpy, pyarrow, pandas), and a command whose extra is missing
names the pip command that installs it. Results go to stdout, progress and diagnostics
to stderr (through `logging`); exit status 0 ok, 1 partial failure, 2 bad input.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

TF_EXTRA = 'pip install "fingerspell[cpu]" (or "fingerspell[gpu]" on a machine with NVIDIA GPUs)'
VIDEO_EXTRA = 'pip install "fingerspell[video]"'
BEAM_EXTRA = 'pip install "fingerspell[beam]" (from a checkout: pip install ".[beam]")'
#: Modules outside the base install -> (what to call them, how to install them).
EXTRAS = {"tensorflow": ("TensorFlow", TF_EXTRA), "keras": ("Keras", TF_EXTRA),
          "mediapipe": ("MediaPipe", VIDEO_EXTRA), "cv2": ("OpenCV (cv2)", VIDEO_EXTRA),
          "pose_format": ("pose-format", VIDEO_EXTRA), "apache_beam": ("Apache Beam", BEAM_EXTRA)}

EXIT_STATUS = "exit status: 0 ok, 1 partial failure (the rest was done), 2 bad input"


class UsageError(Exception):
    """Arguments that parse but do not fit together; reported like argparse's own errors (exit 2)."""


class MissingExtra(Exception):
    """The command needs a module of an optional extra that is not installed."""


# --- process setup ------------------------------------------------------------------------------

def prepare_environment() -> None:
    """Before anything heavy is imported: Keras on TensorFlow, TensorFlow's and MediaPipe's C++ logs quiet.

    Done here, at the command's entry, because importing the library must not change
    the process; a user's own settings win.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GLOG_minloglevel", "2")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (callers and pytest may swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Formatter(logging.Formatter):
    """Progress as plain lines; warnings and errors prefixed `warning:` / `error:`."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def configure_logging(verbose: bool = False) -> None:
    """Log records to stderr: the package's at INFO (DEBUG with --verbose), other libraries' warnings.

    The handler sits on the root logger, as an application's should: a library that later
    calls `logging.info(...)` directly would otherwise install a second root handler of its
    own (logging's implicit basicConfig) and every message would be printed twice.
    Calling this again replaces the handler instead of adding one.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(name)s: %(message)s" if verbose else "%(message)s"))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    logging.getLogger("fingerspell").setLevel(logging.DEBUG if verbose else logging.INFO)


def require(command: str, *modules: str) -> None:
    """Stop before any work, naming the extra to install, when `command` needs a missing module."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ValueError:  # in sys.modules without a spec: present
            found = True
        except ImportError:  # a parent package or an import hook refuses it
            found = False
        if not found:
            raise MissingExtra(missing_message(command, module))


def missing_message(command: str, module: str) -> str:
    name, install = EXTRAS[module]
    return f"`fingerspell {command}` needs {name}, which is not installed: {install}"


def error(message: object, status: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


# --- arguments shared by several commands -------------------------------------------------------

def _add_data_dir(p: argparse.ArgumentParser, help: str, required: bool = True) -> None:
    p.add_argument("--data-dir", "--data", dest="data_dir", type=Path, required=required, metavar="DIR", help=help)


def _add_submission(p: argparse.ArgumentParser, positional: bool, required: bool = True) -> None:
    """The exported submission folder: `--model SUB_DIR` everywhere, positional too where it always was."""
    help = "submission folder written by `fingerspell export` (model.tflite + inference_args.json)"
    if positional:
        p.add_argument("sub_dir", nargs="?", type=Path, metavar="SUB_DIR", help=f"{help}; or give --model")
        p.add_argument("--model", type=Path, metavar="SUB_DIR", help="the same as the positional SUB_DIR")
    else:
        p.add_argument("--model", type=Path, metavar="SUB_DIR", required=required, help=help)


def submission_dir(args: argparse.Namespace) -> Path:
    """The submission folder from SUB_DIR or --model (one of them, or both the same)."""
    positional, option = getattr(args, "sub_dir", None), args.model
    if positional and option and positional != option:
        raise UsageError(f"two submission folders given: {positional} and --model {option}")
    if not (positional or option):
        raise UsageError("the submission folder is required: SUB_DIR or --model SUB_DIR")
    return positional or option


def _add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true", help="no progress bar")


# --- preprocess ---------------------------------------------------------------------------------

def _location(text: str) -> Path | str:
    """A local path, or a URL kept as text (gs://, s3://: `Path` would collapse the //)."""
    from fingerspell.data.convert import is_url

    return text if is_url(text) else Path(text)


def add_preprocess(p: argparse.ArgumentParser) -> None:
    from fingerspell.data.convert import PreprocessConfig
    from fingerspell.data.schema import LANDMARK_SETS, SPLIT_FILES

    p.add_argument("--data-dir", "--data", dest="data_dir", type=_location, required=True, metavar="DIR",
                   help="Kaggle-layout dataset folder (train.csv, train_landmarks/, ...); only read. "
                        "gs:// and other remote paths with --engine beam")
    p.add_argument("--out", required=True, type=_location, metavar="OUT_DIR",
                   help="output folder for the TFRecord shards and manifest.json (remote: --engine beam)")
    p.add_argument("--engine", choices=("local", "beam"), default="local",
                   help="local: a process pool on this machine (default); beam: an Apache Beam pipeline, "
                        "locally or on Dataflow, Flink or Spark (pipeline options after --)")
    p.add_argument("beam_options", nargs="*", metavar="-- BEAM_OPTION",
                   help="Beam pipeline options, after `--` (e.g. -- --runner=DataflowRunner --project=P ...); "
                        "default: FnApiRunner with --workers processes on this machine")
    p.add_argument("--split", choices=(*SPLIT_FILES, "all"), default=PreprocessConfig.split,
                   help="which metadata CSV to process (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel processes on this machine, either engine (default: as many as cores and "
                        "available memory allow)")
    p.add_argument("--overwrite", action="store_true", help="redo files whose shard an earlier run already finished")
    p.add_argument("--landmarks", choices=tuple(LANDMARK_SETS), default=PreprocessConfig.landmarks,
                   help="the landmark columns stored: " + "; ".join(
                       f"{s.name}: {s.n_columns} columns" for s in LANDMARK_SETS.values())
                        + " (default: %(default)s); training may read any set whose columns are stored")
    p.add_argument("--min-hand-frames-factor", type=float, default=PreprocessConfig.min_hand_frames_factor,
                   metavar="FACTOR", help="keep a sequence when FACTOR * len(phrase) < frames with a fully visible "
                                          "hand (default: %(default)s, the seed notebook's rule)")
    _add_no_progress(p)


def run_preprocess(args: argparse.Namespace) -> int:
    from fingerspell.data.convert import PreprocessConfig, PreprocessError, preprocess, report

    if args.beam_options and args.engine != "beam":
        raise UsageError(f"pipeline options {args.beam_options[:3]} are for --engine beam")
    config = PreprocessConfig(
        data_dir=args.data_dir, out_dir=args.out, split=args.split, workers=args.workers,
        overwrite=args.overwrite, min_hand_frames_factor=args.min_hand_frames_factor,
        progress=not args.no_progress, landmarks=args.landmarks)
    if args.engine == "beam":
        require("preprocess --engine beam", "apache_beam")
        run = functools.partial(_preprocess_beam, beam_args=args.beam_options, verbose=args.verbose)
    else:
        run = preprocess
    try:
        manifest = run(config)
    except PreprocessError as err:
        return error(err)
    report(manifest, args.out)
    return 1 if manifest["errors"] else 0


def _preprocess_beam(config, beam_args: list[str], verbose: bool) -> dict:
    """The Beam engine, with Beam's own logging kept at WARNING unless --verbose."""
    logging.getLogger("apache_beam").setLevel(logging.INFO if verbose else logging.WARNING)
    with _quiet_root_logger():  # importing Beam warns about optional GCP clients through the root logger
        from fingerspell.data.beam_engine import preprocess_beam
    return preprocess_beam(config, beam_args, quiet_workers=not verbose)


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# --- train --------------------------------------------------------------------------------------

def add_train(p: argparse.ArgumentParser) -> None:
    _add_data_dir(p, "folder written by `fingerspell preprocess` (required unless --print-config)", required=False)
    p.add_argument("--out", type=Path, metavar="RUN_DIR",
                   help="run folder: config.json, checkpoints/, metrics.csv, curves.png, train.log "
                        "(required unless --print-config)")
    p.add_argument("--config", type=Path, metavar="FILE", help="JSON file of config keys, applied before key=value")
    p.add_argument("--epochs", type=int, metavar="N", help="the same as epochs=N")
    p.add_argument("--batch-size", type=int, metavar="B", help="the same as batch_size=B")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out where it stopped, on the --data-dir it started with unless "
                        "another is given; operational keys may change (epochs, time, devices, precision, batch "
                        "sizes, cache, evaluation cadence), the model and data keys may not")
    p.add_argument("--auto-resume", action="store_true",
                   help="--resume when RUN_DIR holds a checkpoint, else start a new run: one command for training "
                        "workers that a cluster restarts (distribute=multi_worker). On resume it applies (and logs) "
                        "what the command sets otherwise than the saved config.json, except that it never lowers "
                        "epochs or time_budget_minutes below the saved values (a run extended by --resume stays "
                        "extended)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (--config file, then key=value) as JSON and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides; the keys are listed below")


def config_help(width: int | None = None, settings: type | None = None) -> str:
    """Every key of a config dataclass (the training `Config` by default) with its default and meaning."""
    from fingerspell.config import Config

    width = width or min(shutil.get_terminal_size().columns - 2, 120)
    items = [(f"{f.name}={_shown(f.default)}", f.metadata.get("help", ""))
             for f in dataclasses.fields(settings or Config)]
    column = max(len(key) for key, _ in items) + 4
    how = "key=value" if settings else "key=value or in a --config JSON file"
    lines = [f"config keys (key=default), to override as {how};", "the resolved config is saved as RUN_DIR/config.json:"]
    for key, meaning in items:
        lines.append(textwrap.fill(meaning, max(width, column + 30), initial_indent=f"  {key}".ljust(column),
                                   subsequent_indent=" " * column))
    if settings is None:
        from fingerspell.config import PRESETS

        lines.append("presets: `preset=NAME` first resets every key to the defaults with the keys it lists (a --config "
                     "file's values too), then the other key=value apply:")
        for name, values in PRESETS.items():
            listed = " ".join(f"{k}={_shown(v)}" for k, v in values.items()) or "(the defaults above)"
            lines.append(textwrap.fill(listed, max(width, column + 30), initial_indent=f"  preset={name}".ljust(column),
                                       subsequent_indent=" " * column))
    return "\n".join(lines)


def _shown(value: object) -> str:
    """A default as it is written in a key=value override."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def cli_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"epochs={args.epochs}")
    if args.batch_size is not None:
        overrides.append(f"batch_size={args.batch_size}")
    return overrides


def resume_changes(args: argparse.Namespace) -> dict:
    """What a --resume asks to change (the trainer refuses all but its operational keys)."""
    from fingerspell.config import Config, ConfigError

    if args.config:
        raise ConfigError("--resume continues with the run's saved config.json; --config cannot be given")
    changed = Config().override(cli_overrides(args)).to_dict()
    keys = {item.partition("=")[0].strip().replace("-", "_") for item in cli_overrides(args)}
    return {key: changed[key] for key in keys}


def auto_resume_changes(args: argparse.Namespace) -> dict:
    """What a restarted `--auto-resume` command changes: the keys its config (--config, key=value) sets
    otherwise than the run's saved config.json (the same command that started the run changes nothing).
    Without --config the command's base is the run's own preset (a run saved before presets: `seed`)."""
    from fingerspell.config import Config

    saved_config = Config.load(args.out / "config.json")
    saved = saved_config.to_dict()
    base = Config.load(args.config) if args.config else Config.from_dict({"preset": saved["preset"]})
    wanted = base.override(cli_overrides(args)).to_dict()
    changes = {key: value for key, value in wanted.items() if saved[key] != value}
    kept = {}

    def budget(minutes):  # 0: no limit, the most
        return math.inf if not minutes else minutes
    if budget(changes.get("time_budget_minutes", saved["time_budget_minutes"])) < budget(saved["time_budget_minutes"]):
        kept["time_budget_minutes"] = changes.pop("time_budget_minutes")
    # epochs=0 means "as many as the budget allows, else 30": compare the epochs each config trains
    if Config.from_dict({**saved, **changes}).training_epochs < saved_config.training_epochs:
        if "epochs" in changes:
            kept["epochs"] = changes.pop("epochs")
        if Config.from_dict({**saved, **changes}).training_epochs < saved_config.training_epochs:
            changes["epochs"] = saved_config.training_epochs  # e.g. the budget that set the cap is gone
    for key, value in kept.items():
        logger.warning("--auto-resume: keeping the run's %s=%s (the command's %s=%s would lower it)", key, saved[key],
                       key, value)
    for key, value in changes.items():
        logger.info("--auto-resume: %s %s -> %s", key, saved[key], value)
    return changes


def resolve_config(args: argparse.Namespace):
    """The run's config: --config file (or the defaults), then key=value; with --resume, the saved one."""
    from fingerspell.config import Config

    if args.resume:
        if args.out is None:
            raise UsageError("--resume needs --out RUN_DIR")
        saved = Config.load(args.out / "config.json")
        return Config.from_dict({**saved.to_dict(), **resume_changes(args)}, source=str(args.out / "config.json"))
    base = Config.load(args.config) if args.config else Config()
    return base.override(cli_overrides(args))


def started_on(run_dir: Path) -> Path | None:
    """The data directory a run last trained on (RUN_DIR/run.json), for a --resume without --data-dir."""
    try:
        found = json.loads((run_dir / "run.json").read_text()).get("data_dir")
    except (OSError, ValueError):
        return None
    return Path(found) if found else None


def run_train(args: argparse.Namespace) -> int:
    from fingerspell.config import ConfigError

    if args.print_config:
        try:
            print(json.dumps(resolve_config(args).to_dict(), indent=2))
        except ConfigError as err:
            return error(err)
        return 0
    if args.auto_resume and args.resume:
        raise UsageError("--auto-resume already resumes a started run; give one of --resume, --auto-resume")
    if args.resume and args.data_dir is None and args.out is not None:
        args.data_dir = started_on(args.out)
    if args.data_dir is None or args.out is None:
        raise UsageError("--data-dir and --out are required (unless --print-config; --resume finds the data "
                         "directory in RUN_DIR/run.json)")
    require("train", "tensorflow", "keras")
    from fingerspell.data.records import RecordFormatError
    from fingerspell.training.trainer import TrainingError, holds_run, resume, train

    try:
        with contextlib.redirect_stdout(sys.stderr):  # Keras' progress bar is a diagnostic; the summary the result
            if args.auto_resume and holds_run(args.out):
                summary = resume(args.data_dir, args.out, auto_resume_changes(args))
            elif args.resume:
                summary = resume(args.data_dir, args.out, resume_changes(args))
            else:
                summary = train(args.data_dir, args.out, resolve_config(args))
    except (ConfigError, TrainingError, RecordFormatError, FileNotFoundError) as err:
        return error(err)
    print(json.dumps(summary, indent=2))
    return 0


# --- export -------------------------------------------------------------------------------------

def add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", "--run-dir", dest="run", required=True, type=Path, metavar="RUN_DIR",
                   help="run folder written by `fingerspell train`")
    p.add_argument("--out", required=True, type=Path, metavar="SUB_DIR", help="submission folder to write")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="best validation score or last epoch (default: %(default)s)")
    p.add_argument("--quantize", choices=("none", "fp16", "dynamic"), default="none",
                   help="weight quantization (default: %(default)s; fp16 halves the size)")
    p.add_argument("--decoder", choices=("attention", "ctc", "joint"), default=None,
                   help="greedy decoding inside the model: the attention decoder, the CTC head, or the attention "
                        "decoder rescored by the CTC prefix score (default: the run's config `decoder`)")


def run_export(args: argparse.Namespace) -> int:
    require("export", "tensorflow", "keras")
    from fingerspell.config import ConfigError
    from fingerspell.export.tflite import ExportError, export_run
    from fingerspell.training.trainer import TrainingError

    try:
        result = export_run(args.run, args.out, args.checkpoint, args.quantize, args.decoder)
    except (ExportError, TrainingError, ConfigError) as err:
        return error(err)
    print(json.dumps(result, indent=2))
    return 0


# --- evaluate and predict -----------------------------------------------------------------------

def add_evaluate(p: argparse.ArgumentParser) -> None:
    from fingerspell.data.schema import SPLIT_FILES

    _add_submission(p, positional=True)
    _add_data_dir(p, "Kaggle-layout dataset folder (the CSV and raw parquet files, as the grader reads them)")
    p.add_argument("--split", choices=tuple(SPLIT_FILES), default="train", help="default: %(default)s")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="only the first N CSV rows")
    p.add_argument("--held-out", type=Path, metavar="RUN_DIR",
                   help="only the signers (or files) that this training run held out for validation")
    p.add_argument("--report", type=Path, metavar="FILE", help="JSON report path (default: SUB_DIR/evaluation.json)")
    _add_no_progress(p)


def run_evaluate(args: argparse.Namespace) -> int:
    sub_dir = submission_dir(args)
    from fingerspell.export.evaluate import EvaluationError, evaluate, format_report
    from fingerspell.export.predictor import PredictorError

    report_path = args.report or sub_dir / "evaluation.json"
    try:
        report = evaluate(sub_dir, args.data_dir, args.split, args.limit, report_path,
                          progress=not args.no_progress, held_out_run=args.held_out)
    except (EvaluationError, PredictorError, OSError) as err:
        return error(err)
    print(format_report(report))
    print(f"report: {report_path}")
    return 0


def add_predict(p: argparse.ArgumentParser) -> None:
    _add_submission(p, positional=True)
    p.add_argument("--parquet", required=True, type=Path, metavar="FILE", help="a Kaggle-layout landmarks parquet file")
    p.add_argument("--sequence-id", type=int, nargs="*", metavar="ID", help="only these sequences (default: all)")


def run_predict(args: argparse.Namespace) -> int:
    sub_dir = submission_dir(args)
    from fingerspell.data.parquet import read_sequences
    from fingerspell.export.predictor import PredictorError, TFLitePredictor

    try:
        predictor = TFLitePredictor(sub_dir)
        if not args.parquet.exists():
            raise PredictorError(f"{args.parquet}: not found")
        sequences = read_sequences(args.parquet, predictor.selected_columns, args.sequence_id)
    except (PredictorError, KeyError, OSError, ValueError) as err:
        return error(err)
    for sequence_id, frames in sequences.items():
        print(f"{sequence_id}\t{predictor(frames)}")
    missing = sorted(set(args.sequence_id or []) - set(sequences))
    if missing:
        return error(f"{args.parquet}: no sequence(s) {missing}", status=1)
    return 0


# --- recordings ---------------------------------------------------------------------------------

def add_extract(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, folders of images, or .pose files")
    p.add_argument("--out", required=True, type=Path, metavar="FILE.parquet", help="output parquet file")
    p.add_argument("--phrase", action="append", help="phrase for the CSV: once for all inputs, or once per input")
    p.add_argument("--csv", type=Path, metavar="FILE.csv", help="output CSV (default: the parquet path with .csv)")
    _add_no_progress(p)


def run_extract(args: argparse.Namespace) -> int:
    require("extract", "cv2", "mediapipe")
    from fingerspell.video.extract import ExtractError, extract

    try:
        summary = extract(args.inputs, args.out, phrase=args.phrase, csv_path=args.csv,
                          progress=not args.no_progress)
    except ValueError as err:  # the phrases do not match the inputs
        raise UsageError(str(err)) from None
    except ExtractError as err:
        return error(err)
    if summary.failed:
        print(f"{len(summary.failed)} of {len(args.inputs)} input(s) failed:", file=sys.stderr)
        for message in summary.failed.values():
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0 if summary.sequences else 1


def add_transcribe(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", type=Path, metavar="INPUT", help="a video file, a folder of images, or a .pose file")
    _add_submission(p, positional=False)
    _add_no_progress(p)


def run_transcribe(args: argparse.Namespace) -> int:
    require("transcribe", "cv2", "mediapipe")
    from fingerspell.export.predictor import PredictorError
    from fingerspell.video.extract import ExtractError
    from fingerspell.video.transcribe import transcribe

    try:
        text = transcribe(args.video, args.model, progress=not args.no_progress)
    except (ExtractError, PredictorError, ValueError) as err:
        return error(err)
    print(text)
    return 0


def add_render(p: argparse.ArgumentParser) -> None:
    p.add_argument("parquet", type=Path, metavar="FILE.parquet", help="landmarks parquet file in Kaggle's layout")
    p.add_argument("--sequence-id", type=int, metavar="ID", help="sequence to draw (default: the first in the file)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="output .gif or .mp4")
    _add_submission(p, positional=False, required=False)
    p.add_argument("--fps", type=float, default=15.0, help="frames per second (default: %(default)s)")
    p.add_argument("--phrase", help="phrase to show (default: from a CSV beside the parquet file)")
    p.add_argument("--size", type=int, default=480, help="plot height in pixels (default: %(default)s)")
    p.add_argument("--aspect", type=float, default=1.0,
                   help="source video width / height, to draw x and y in its proportions (default: %(default)s)")


def run_render(args: argparse.Namespace) -> int:
    require("render", "cv2")
    from fingerspell.video.render import RenderError, render_from_parquet

    try:
        info = render_from_parquet(args.parquet, args.sequence_id, args.out, model_dir=args.model,
                                   fps=args.fps, phrase=args.phrase, size=args.size, aspect=args.aspect)
    except RenderError as err:
        return error(err)
    except (OSError, KeyError, ValueError) as err:  # not a parquet file, a missing column, ...
        return error(f"{args.parquet}: cannot render ({err})")
    message = f"wrote {args.out}: sequence {info['sequence_id']}, {info['frames']} frames"
    if info["phrase"]:
        message += f', phrase "{info["phrase"]}"'
    if info["prediction"] is not None:
        message += f', prediction "{info["prediction"]}"'
    logger.info("%s", message)
    return 0


# --- synthetic data and the demo ----------------------------------------------------------------

def add_synth(p: argparse.ArgumentParser) -> None:
    from fingerspell.synth import generator as g

    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created; must be empty)")
    p.add_argument("--files", type=int, default=g.DEFAULT_FILES, metavar="K",
                   help="train parquet files (default: %(default)s)")
    p.add_argument("--sequences-per-file", type=int, default=g.DEFAULT_SEQUENCES_PER_FILE, metavar="N",
                   help="default: %(default)s")
    p.add_argument("--participants", type=int, default=g.DEFAULT_PARTICIPANTS, metavar="P",
                   help="signers (default: %(default)s)")
    p.add_argument("--seed", type=int, default=g.DEFAULT_SEED, metavar="S",
                   help="draws participants and phrases; the character-to-hand table never changes "
                        "(default: %(default)s)")
    p.add_argument("--supplemental-files", type=int, default=g.DEFAULT_SUPPLEMENTAL_FILES, metavar="K",
                   help="supplemental parquet files (default: %(default)s)")
    p.add_argument("--difficulty", choices=g.DIFFICULTIES, default=g.DEFAULT_DIFFICULTY,
                   help="hard: fast, co-articulated signing, missing-hand bursts and a resting hand "
                        "sometimes seen, like the real recordings; easy: the slower, cleaner data of "
                        "earlier versions, unchanged (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace the dataset files already in --out")


def run_synth(args: argparse.Namespace) -> int:
    import time

    from fingerspell.synth.generator import check_settings, generate_dataset

    settings = dict(files=args.files, sequences_per_file=args.sequences_per_file, participants=args.participants,
                    seed=args.seed, supplemental_files=args.supplemental_files, difficulty=args.difficulty)
    start = time.perf_counter()
    try:
        check_settings(settings, cli=True)
        summary = generate_dataset(args.out, overwrite=args.overwrite, **settings)
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(f"synth: {summary['n_train_sequences']} train + {summary['n_supplemental_sequences']} supplemental "
          f"{summary['difficulty']} sequences in {args.files}+{args.supplemental_files} files, "
          f"{summary['n_participants']} participants "
          f"({len(summary['left_handed_participants'])} left-handed), {summary['mean_frames']:.1f} frames/sequence, "
          f"{summary['bytes'] / 1e6:.1f} MB -> {summary['out_dir']} in {time.perf_counter() - start:.1f} s")
    return 0


def add_demo(p: argparse.ArgumentParser) -> None:
    from fingerspell import demo

    p.add_argument("--workdir", type=Path, default=demo.DEFAULT_WORKDIR, metavar="DIR", help="default: %(default)s")
    p.add_argument("--minutes", type=float, default=demo.DEFAULT_MINUTES, metavar="M",
                   help="training-time budget (default: %(default)s)")
    p.add_argument("--sequences", type=int, default=demo.DEFAULT_SEQUENCES, metavar="N",
                   help="training sequences to generate (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="delete --workdir first")


def run_demo(args: argparse.Namespace) -> int:
    require("demo", "tensorflow", "keras")
    from fingerspell.demo import run_demo as demo
    from fingerspell.export.evaluate import format_report

    with contextlib.redirect_stdout(sys.stderr):  # Keras' progress bar is a diagnostic
        result = demo(args.workdir, args.minutes, args.sequences, args.fresh)
    report = result["report"]
    print(format_report(report))
    print(f"score {report['score']:.4f} on {report['sequences']} held-out sequences; "
          f"total {result['minutes']:.1f} minutes")
    print(f"submission: {result['submission']}")
    return 0


# --- letters -------------------------------------------------------------------------------------

def add_letters(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="letters_action", metavar="ACTION", required=True)
    train = actions.add_parser("train", help="class folders -> RUN_DIR with letters.tflite and labels.json",
                               epilog=_letters_config_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("data_dir", type=Path, metavar="DATA_DIR",
                       help="one folder per class (its name is the label) holding images, videos, folders of "
                            "frames, .pose or .npy files (63 values: 21 points x, y, z)")
    train.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="run folder (must not hold a model)")
    train.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help="extracted landmarks (default RUN_DIR/landmarks-cache); reuse it across runs")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides; the keys are listed below")
    evaluate = actions.add_parser("evaluate", help="accuracy per item and per class, confusion matrix PNG")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="class folders, as for train")
    evaluate.add_argument("--json", type=Path, metavar="FILE", help="write the full report here")
    evaluate.add_argument("--confusion", type=Path, metavar="PNG", help="default RUN_DIR/confusion.png")
    evaluate.add_argument("--cache-dir", type=Path, metavar="DIR", help="default RUN_DIR/landmarks-cache")
    predict = actions.add_parser("predict", help="top-3 labels for images, videos, folders of frames, .pose, .npy")
    predict.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    predict.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    predict.add_argument("--per-frame", action="store_true", help="also the top labels of every frame of a clip")
    predict.add_argument("--render", type=Path, metavar="DIR", help="draw the hand and the label on each image here")
    predict.add_argument("--json", action="store_true", help="print JSON instead of one line per input")
    for action in (train, evaluate, predict):  # SUPPRESS: `letters -v ACTION` keeps its -v
        action.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")


def _letters_config_help() -> str:
    from fingerspell.letters.config import LettersConfig

    return config_help(settings=LettersConfig) + "\n\n" + EXIT_STATUS


def run_letters(args: argparse.Namespace) -> int:
    require("letters", "tensorflow", "keras")
    from fingerspell.config import ConfigError
    from fingerspell.letters import inference, items, training

    try:
        if args.letters_action == "train":
            cfg = training.LettersConfig().override(args.overrides)
            print(json.dumps(training.train(args.data_dir, args.out, cfg, args.cache_dir, progress=True), indent=2))
        elif args.letters_action == "evaluate":
            report = inference.evaluate(args.run_dir, args.data_dir, args.json, args.confusion, args.cache_dir,
                                        progress=True)
            shown = {k: report[k] for k in ("accuracy", "samples", "accuracy_with_hand", "no_hand", "confusion_png")}
            print(json.dumps(shown, indent=2))
        else:
            predictions = inference.predict(args.run_dir, args.inputs, args.per_frame, args.render)
            print(inference.predictions_json(predictions) if args.json
                  else "\n".join(inference.prediction_lines(predictions)))
            return 1 if any(p.problem for p in predictions) else 0
    except (ConfigError, training.LettersError, items.LettersDataError) as err:
        return error(err)
    except ImportError as err:  # MediaPipe or OpenCV, met at the first image or video
        return error(err)
    return 0


# --- the command table and the entry points -----------------------------------------------------

@dataclass(frozen=True)
class Command:
    name: str
    summary: str  # one line: `fingerspell --help` and the command's description
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: Callable[[], str] = lambda: EXIT_STATUS


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("preprocess", "Kaggle landmark parquet files -> TFRecord shards + manifest.json",
            add_preprocess, run_preprocess),
    Command("train", "train the fingerspelling transformer on preprocessed records", add_train, run_train,
            lambda: config_help() + "\n\n" + EXIT_STATUS),
    Command("export", "a training run -> Kaggle submission (model.tflite, inference_args.json, submission.zip)",
            add_export, run_export),
    Command("evaluate", "score a submission on raw parquet files as Kaggle's grader does", add_evaluate,
            run_evaluate),
    Command("predict", "print `sequence_id<TAB>text` for the sequences of a parquet file", add_predict, run_predict),
    Command("extract", "videos, image folders and .pose files -> landmarks parquet in Kaggle's layout",
            add_extract, run_extract),
    Command("transcribe", "video (or image folder, or .pose file) -> text on stdout", add_transcribe,
            run_transcribe),
    Command("render", "draw one landmark sequence (hands and arms) as a GIF or MP4", add_render, run_render),
    Command("synth", "write a synthetic ASL fingerspelling dataset in Kaggle's layout", add_synth, run_synth),
    Command("demo", "the whole pipeline on synthetic data: generate, preprocess, train, export, evaluate",
            add_demo, run_demo),
    Command("letters", "static letters from hand landmarks: `letters train|evaluate|predict`", add_letters,
            run_letters),
)}


def _fill(p: argparse.ArgumentParser, command: Command) -> argparse.ArgumentParser:
    command.add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(command=command, parser=p)
    return p


def _parser_options(command: Command) -> dict:
    return dict(description=command.summary, epilog=command.epilog(),
                formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser(prog: str = "fingerspell") -> argparse.ArgumentParser:
    """`fingerspell COMMAND ...`: every command as a subcommand."""
    from fingerspell import __version__

    parser = argparse.ArgumentParser(
        prog=prog, description="ASL fingerspelling from MediaPipe landmarks: data, training, TFLite export, video.",
        epilog=f"`{prog} COMMAND --help` shows a command's arguments. {EXIT_STATUS}.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command_name", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        _fill(sub.add_parser(command.name, help=command.summary, **_parser_options(command)), command)
    return parser


def command_parser(name: str, prog: str | None = None) -> argparse.ArgumentParser:
    """One command as a program of its own (`python -m train` and the like)."""
    command = COMMANDS[name]
    return _fill(argparse.ArgumentParser(prog=prog or f"fingerspell {name}", **_parser_options(command)), command)


def _execute(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    command: Command = args.command
    try:
        return command.run(args)
    except UsageError as err:
        args.parser.error(str(err))  # exits 2, after the usage line
    except MissingExtra as err:
        return error(err)
    except ModuleNotFoundError as err:  # a heavy import that `require` did not foresee
        module = (err.name or "").split(".")[0]
        if module not in EXTRAS:
            raise
        return error(missing_message(command.name, module))
    except KeyboardInterrupt:
        return error("interrupted", status=130)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, letting `key=value` overrides also follow options (`train DATA --out RUN epochs=4`):
    argparse alone fills a trailing positional list only from the run of words before the first option."""
    args, extra = parser.parse_known_args(argv)
    overrides = [word for word in extra if "=" in word and not word.startswith("-")]
    if overrides and isinstance(getattr(args, "overrides", None), list):
        args.overrides += overrides
        extra = [word for word in extra if word not in overrides]
    if extra:
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None, prog: str = "fingerspell") -> int:
    """`fingerspell COMMAND ...` (the console script and `python -m fingerspell`)."""
    prepare_environment()
    return _execute(parse(build_parser(prog), argv))


def run_command(name: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """`fingerspell NAME ...` under another program name: the checkout's `python -m preprocess|train|export`."""
    prepare_environment()
    return _execute(parse(command_parser(name, prog), argv))
