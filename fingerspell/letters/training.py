"""`fingerspell letters train`: class folders of hand landmarks -> a small classifier in TFLite.

A run directory holds `config.json` (the resolved `LettersConfig`), `labels.json` (class names
in output order), `letters.tflite` (windows + handedness -> class probabilities, the feature
function inside), `no_hand.json` (the class of items without a hand: a "nothing" class, if
the data has one), `letters.weights.h5`, `split.json` (the held-out blocks), `summary.json`
(accuracies, counts, items without a hand) and, unless `--cache-dir` says otherwise,
`landmarks-cache/` (extracted landmarks, so a second run does not run MediaPipe again).

Validation holds out one contiguous block of frames per class (with a gap on each side left
out of training): neighbouring webcam frames are nearly identical, so a random split of
frames would score ~100% and mean nothing.
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fingerspell.config import ConfigError
from fingerspell.files import atomic_path, atomic_write, atomic_write_json
from fingerspell.letters import augment, features, items
from fingerspell.letters.config import LettersConfig

logger = logging.getLogger(__name__)

MODEL_NAME = "letters.tflite"
LABELS_NAME = "labels.json"
#: {"label": the class given to items where no hand is found, or null}: a "nothing" class is learned only if
#: the data has one (the class folder named by the config's `no_hand_class`).
NO_HAND_NAME = "no_hand.json"
#: What a letters run writes into its folder; anything else there means --out points at something else.
RUN_FILES = ("config.json", "labels.json", "no_hand.json", "split.json", "summary.json", "letters.weights.h5",
             "letters.tflite", "confusion.png", "landmarks-cache")
WEIGHTS_NAME = "letters.weights.h5"
CACHE_NAME = "landmarks-cache"
#: Consecutive single-frame items (webcam frames) belong to one recording unless the wrist jumps this far,
#: in palm sizes, between them: then the motion between them is not a sign's.
SERIES_BREAK_PALMS = 1.0


class LettersError(RuntimeError):
    """A letters run that cannot start or be used; the message says why."""


# --- frames, recordings and the split ----------------------------------------------------------

@dataclass
class Series:
    """Consecutive frames of one class: a clip, or a run of single-frame items (webcam frames)."""

    label: str
    frames: np.ndarray  # [T, 21, 3]
    handedness: np.ndarray  # [T]


def palm_sizes(frames: np.ndarray) -> np.ndarray:
    """[..., 21, 3] -> [...]: mean wrist-to-knuckle length in the image plane, the unit of hand motion."""
    knuckles = frames[..., list(features.KNUCKLES), :2]
    return np.linalg.norm(knuckles - frames[..., features.WRIST:features.WRIST + 1, :2], axis=-1).mean(axis=-1)


def build_series(found: list[items.Item]) -> list[Series]:
    """Recordings: a clip as it is; single-frame `.npy` items of a class (webcam frames) joined in name order
    while the hand stays near. A photo stays on its own: photos side by side are not a motion.
    A recording without MediaPipe labels gets its frames' majority chirality (`recording_handedness`)."""
    series: list[Series] = []
    open_run: list[np.ndarray] = []
    run_label = None

    def add(label: str, frames: np.ndarray, handedness: np.ndarray) -> None:
        series.append(Series(label, frames, features.recording_handedness(frames, handedness)))

    def close():
        if open_run:
            add(run_label, np.stack(open_run), np.zeros(len(open_run), np.float32))
            open_run.clear()

    for item in found:
        if not len(item.landmarks):
            continue
        frame = item.landmarks[0].astype(np.float32)
        joins = item.kind == "npy" and len(item.landmarks) == 1
        if not joins or (open_run and (item.label != run_label or np.linalg.norm(frame[0, :2] - open_run[-1][0, :2])
                                       > SERIES_BREAK_PALMS * max(float(palm_sizes(frame)), 1e-4))):
            close()
        if joins:
            run_label = item.label
            open_run.append(frame)
        else:
            add(item.label, item.landmarks.astype(np.float32), item.handedness.astype(np.float32))
    close()
    return series


@dataclass
class Frames:
    """Every frame of the dataset as a window, with its class and where it may be used."""

    windows: np.ndarray  # [N, WINDOW, 21, 3]
    handedness: np.ndarray  # [N]
    labels: np.ndarray  # [N] class index
    validation: np.ndarray  # [N] bool: in a held-out block
    training: np.ndarray  # [N] bool: outside the blocks and their gaps


def split_frames(series: list[Series], labels: list[str], cfg: LettersConfig) -> tuple[Frames, dict]:
    """Windows of all frames, and one held-out contiguous block per class at a seeded position."""
    rng = np.random.default_rng(cfg.seed)
    windows = np.concatenate([features.clip_windows(s.frames) for s in series])
    handedness = np.concatenate([s.handedness for s in series])
    class_of = np.concatenate([np.full(len(s.frames), labels.index(s.label)) for s in series])
    validation = np.zeros(len(class_of), bool)
    training = np.ones(len(class_of), bool)
    blocks = {}
    for c, label in enumerate(labels):
        where = np.flatnonzero(class_of == c)  # this class's frames, in recording order
        size = max(1, int(round(cfg.val_fraction * len(where))))
        if len(where) - size - 2 * cfg.val_gap < 1:
            raise LettersError(f"class {label!r} has {len(where)} frames with a hand: too few to hold out "
                               f"a block of {size} with gaps of {cfg.val_gap} and still train (add items, or "
                               f"lower val_fraction / val_gap)")
        start = int(rng.integers(0, len(where) - size + 1))
        validation[where[start:start + size]] = True
        training[where[max(0, start - cfg.val_gap):start + size + cfg.val_gap]] = False
        blocks[label] = {"frames": int(len(where)), "held_out": [start, start + size]}
    return Frames(windows, handedness, class_of, validation, training), blocks


# --- the model --------------------------------------------------------------------------------

def build_model(n_classes: int, cfg: LettersConfig):
    """Windows [N, W, 21, 3] + handedness [N] -> class probabilities; the feature function is its first layer."""
    import keras
    import tensorflow as tf

    class HandFeatures(keras.layers.Layer):
        def call(self, window, handedness):
            return features.window_features(window, handedness)

    window = keras.Input((features.WINDOW, features.HAND_POINTS, 3), name="landmarks")
    handedness = keras.Input((), name="handedness")
    x = HandFeatures(name="features")(window, handedness)
    x = keras.layers.Normalization(name="normalize")(x)
    for width in (cfg.hidden, cfg.hidden // 2):
        x = keras.layers.Dense(width, activation="gelu")(x)
        x = keras.layers.Dropout(cfg.dropout)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    del tf
    return keras.Model({"landmarks": window, "handedness": handedness}, outputs, name="letters")


def motion_palms(windows: np.ndarray) -> np.ndarray:
    """[N]: the farthest a motion fingertip moves within each window, in palm sizes of its last frame."""
    tips = windows[:, :, list(features.MOTION_TIPS), :2]
    moved = np.linalg.norm(tips - tips[:, -1:], axis=-1).max(axis=(1, 2))
    return moved / np.maximum(palm_sizes(windows[:, -1]), 1e-4)


def _epoch_windows(frames: Frames, rng: np.random.Generator, cfg: LettersConfig) -> tuple[np.ndarray, np.ndarray]:
    """This epoch's training windows: a share made still (one frame repeated), all augmented."""
    index = np.flatnonzero(frames.training)
    windows = frames.windows[index]
    # A frame caught mid-stroke (J, Z) is not a still sign: frozen, it would teach that a still hand of that
    # shape is J or Z. Only windows that hardly move are also shown as stills.
    still = (rng.random(len(index)) < cfg.still_share) & (motion_palms(windows) < cfg.still_motion)
    windows[still] = features.still_windows(windows[still, -1])
    windows = augment.augment(windows, rng, cfg.aug_roll, cfg.aug_yaw, cfg.aug_pitch, cfg.aug_aspect,
                              cfg.aug_finger_scale, cfg.aug_jitter)
    return windows, index


def _accuracy(model, windows: np.ndarray, handedness: np.ndarray, labels: np.ndarray) -> float:
    if not len(labels):
        return float("nan")
    probabilities = model.predict({"landmarks": windows, "handedness": handedness}, batch_size=1024, verbose=0)
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def fit(frames: Frames, n_classes: int, cfg: LettersConfig):
    """Train; keep the weights of the epoch with the best held-out accuracy (clips and stills averaged)."""
    import keras

    keras.utils.set_random_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_model(n_classes, cfg)
    first, index = _epoch_windows(frames, rng, cfg)
    model.get_layer("normalize").adapt(features.window_features(first, frames.handedness[index]))
    steps = cfg.epochs * int(np.ceil(len(index) / cfg.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, steps)
    model.compile(keras.optimizers.Adam(schedule),
                  keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing))
    held = np.flatnonzero(frames.validation)
    clips, stills = frames.windows[held], features.still_windows(frames.windows[held, -1])
    best, best_weights, history = -1.0, None, []
    for epoch in range(cfg.epochs):
        windows, index = (first, index) if epoch == 0 else _epoch_windows(frames, rng, cfg)
        order = rng.permutation(len(index))
        targets = keras.utils.to_categorical(frames.labels[index[order]], n_classes)
        model.fit({"landmarks": windows[order], "handedness": frames.handedness[index[order]]}, targets,
                  batch_size=cfg.batch_size, epochs=1, verbose=0)
        scores = {"clip": _accuracy(model, clips, frames.handedness[held], frames.labels[held]),
                  "still": _accuracy(model, stills, frames.handedness[held], frames.labels[held])}
        score = (scores["clip"] + scores["still"]) / 2
        history.append({"epoch": epoch + 1, **{k: round(v, 4) for k, v in scores.items()}})
        if score > best:
            best, best_weights = score, [w.copy() for w in model.get_weights()]
        logger.info("epoch %d: held-out accuracy %.4f on windows, %.4f on still frames", epoch + 1,
                    scores["clip"], scores["still"])
    model.set_weights(best_weights)
    return model, history


# --- export -----------------------------------------------------------------------------------

def to_tflite(model) -> bytes:
    """The Keras model as TFLite (builtin ops), inputs `landmarks` [N, W, 21, 3] and `handedness` [N]."""
    import tensorflow as tf

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = [v.value for v in model.weights]  # Keras 3 variables are not tracked otherwise

        @tf.function(input_signature=[
            tf.TensorSpec([None, features.WINDOW, features.HAND_POINTS, 3], tf.float32, name="landmarks"),
            tf.TensorSpec([None], tf.float32, name="handedness")])
        def serve(self, landmarks, handedness):
            return {"probabilities": model({"landmarks": landmarks, "handedness": handedness}, training=False)}

    module = Serving()
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(module, saved, signatures={"serving_default": module.serve.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert()


# --- the run ----------------------------------------------------------------------------------

def check_run_dir(run_dir: Path) -> None:
    """Refuse an --out that holds a letters model, or files a letters run does not write (another run's)."""
    if (run_dir / MODEL_NAME).exists():
        raise LettersError(f"{run_dir} already holds a letters model; choose another --out")
    if run_dir.is_dir() and (foreign := sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_FILES)):
        raise LettersError(f"{run_dir} holds files a letters run does not write ({foreign[:5]}): choose an empty "
                           f"or new --out")
    if (run_dir / "config.json").exists():
        try:
            LettersConfig.load(run_dir / "config.json")
        except ConfigError:
            raise LettersError(f"{run_dir / 'config.json'} is not a letters run's config (another command's run?): "
                               f"choose another --out") from None


def train(data_dir: Path, run_dir: Path, cfg: LettersConfig, cache_dir: Path | None = None,
          progress: bool = False) -> dict:
    """Read the class folders, train, export; returns the summary (also RUN_DIR/summary.json)."""
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    check_run_dir(run_dir)
    folders = items.class_folders(data_dir)
    labels = sorted(folders)
    cache = items.LandmarkCache(cache_dir or run_dir / CACHE_NAME)
    found = items.read_items(folders, cache, progress=progress)
    report = item_report(found, labels)
    no_hand_label = choose_no_hand_label(found, labels, cfg.no_hand_class)
    if no_hand_label:
        logger.info("class %r is the answer wherever no hand is found", no_hand_label)
        labels = [label for label in labels if label != no_hand_label]
        found = [item for item in found if item.label != no_hand_label]
    if empty := [label for label in labels if not report["frames"][label]]:
        raise LettersError(f"no item of class(es) {empty} under {data_dir} gave hand landmarks: nothing to "
                           f"learn them from (see the problems listed above)")
    if len(labels) < 2:
        raise LettersError(f"{data_dir}: {len(labels)} class(es) with hands ({labels}): a classifier needs two")
    cfg.save(run_dir / "config.json")
    frames, blocks = split_frames(build_series(found), labels, cfg)
    logger.info("%d classes, %d frames with a hand: %d for training, %d held out", len(labels),
                len(frames.labels), int(frames.training.sum()), int(frames.validation.sum()))
    model, history = fit(frames, len(labels), cfg)
    atomic_write_json(run_dir / "split.json", blocks)
    atomic_write_json(run_dir / LABELS_NAME, labels)
    atomic_write_json(run_dir / NO_HAND_NAME, {"label": no_hand_label})
    with atomic_path(run_dir / WEIGHTS_NAME, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    atomic_write(run_dir / MODEL_NAME, to_tflite(model))
    best = max(history, key=lambda h: (h["clip"] + h["still"]) / 2)
    summary = {"run_dir": str(run_dir), "classes": len(labels), "items": report["items"],
               "frames": int(len(frames.labels)), "train_frames": int(frames.training.sum()),
               "held_out_frames": int(frames.validation.sum()), "best_epoch": best["epoch"],
               "held_out_accuracy": {"windows": best["clip"], "still": best["still"]},
               "no_hand": report["no_hand"], "no_hand_label": no_hand_label, "problems": report["problems"],
               "model_bytes": (run_dir / MODEL_NAME).stat().st_size, "history": history}
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def choose_no_hand_label(found: list[items.Item], labels: list[str], name: str) -> str | None:
    """The class folder named `name` (the config's `no_hand_class`), if the data has one; its items in which
    a hand was found (a false detection, or a mislabelled image) are named in a warning and not learned."""
    if not name or name not in labels:
        return None
    with_hand = [item for item in found if item.label == name and len(item.landmarks)]
    if with_hand:
        logger.warning("class %r stands for 'no hand', yet a hand was found in %d of its items (not learned): %s",
                       name, len(with_hand), ", ".join(str(item.path) for item in with_hand[:10]))
    return name


def load_no_hand_label(run_dir: Path) -> str | None:
    path = Path(run_dir) / NO_HAND_NAME
    found = _read_json(path, run_dir) if path.exists() else {"label": None}
    if not isinstance(found, dict) or not isinstance(found.get("label"), (str, type(None))):
        raise LettersError(f"{path}: expected {{\"label\": a class name or null}}")
    return found["label"]


def item_report(found: list[items.Item], labels: list[str]) -> dict:
    """Items, frames with a hand, and items without one, per class; every problem by file."""
    report = {"items": {label: 0 for label in labels}, "frames": {label: 0 for label in labels},
              "no_hand": {label: 0 for label in labels}, "problems": []}
    for item in found:
        report["items"][item.label] += 1
        report["frames"][item.label] += len(item.landmarks)
        if not len(item.landmarks):
            report["no_hand"][item.label] += 1
            report["problems"].append({"path": str(item.path), "problem": item.problem or "no hand found"})
    if report["problems"]:
        logger.warning("%d item(s) gave no hand landmarks: %s", len(report["problems"]),
                       "; ".join(f"{p['path']}: {p['problem']}" for p in report["problems"][:10]))
    return report


def _read_json(path: Path, run_dir: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LettersError(f"{path}: not found (is {run_dir} a folder written by `fingerspell letters train`?)") \
            from None
    except json.JSONDecodeError as err:
        raise LettersError(f"{path}: not valid JSON ({err})") from None


def load_labels(run_dir: Path) -> list[str]:
    labels = _read_json(Path(run_dir) / LABELS_NAME, run_dir)
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise LettersError(f"{Path(run_dir) / LABELS_NAME}: expected a JSON list of class names")
    return labels
