"""Run a trained letters model: `fingerspell letters evaluate` and `fingerspell letters predict`.

Both run the exported `letters.tflite` on LiteRT (what a user deploys), never the Keras model.
A clip (video, folder of frames, .pose, a .npy of several frames) is one item: its frames'
windows are classified and their probabilities averaged; an image is one still window.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fingerspell.files import atomic_path, atomic_write_json
from fingerspell.letters import features, items
from fingerspell.letters.training import (CACHE_NAME, MODEL_NAME, LettersError, item_report, load_labels,
                                          load_no_hand_label)

logger = logging.getLogger(__name__)

CLIP_KINDS = ("video", "frames", "pose")
TOP = 3


class LettersModel:
    """RUN_DIR/letters.tflite with its labels: windows + handedness -> class probabilities."""

    def __init__(self, run_dir: Path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.run_dir = Path(run_dir)
        self.labels = load_labels(self.run_dir)
        self.no_hand_label = load_no_hand_label(self.run_dir)  # the answer where no hand is found, if learned
        path = self.run_dir / MODEL_NAME
        if not path.exists():
            raise LettersError(f"{path}: not found (did `fingerspell letters train` finish?)")
        self.runner = Interpreter(model_path=str(path), num_threads=num_threads).get_signature_runner(
            "serving_default")
        width = int(self.runner.get_output_details()["probabilities"]["shape"][-1])
        if width != len(self.labels):
            raise LettersError(f"{path} has {width} outputs but {self.run_dir / 'labels.json'} {len(self.labels)} "
                               f"labels: the two files are from different runs")

    def probabilities(self, windows: np.ndarray, handedness: np.ndarray) -> np.ndarray:
        """[N, len(labels)] for windows [N, WINDOW, 21, 3] and handedness [N]."""
        if not len(windows):
            return np.zeros((0, len(self.labels)), np.float32)
        return self.runner(landmarks=np.asarray(windows, np.float32),
                           handedness=np.asarray(handedness, np.float32))["probabilities"]

    def frame_probabilities(self, item: items.Item) -> np.ndarray:
        """[T, len(labels)]: each frame of the item with a hand, with the frames before it if it is a clip."""
        is_clip = item.kind in CLIP_KINDS or len(item.landmarks) > 1
        windows = (features.clip_windows if is_clip else features.still_windows)(item.landmarks)
        return self.probabilities(windows, features.recording_handedness(item.landmarks, item.handedness))


def top_labels(probabilities: np.ndarray, labels: list[str], top: int = TOP) -> list[dict]:
    order = np.argsort(probabilities)[::-1][:top]
    return [{"label": labels[i], "probability": round(float(probabilities[i]), 4)} for i in order]


# --- evaluate ---------------------------------------------------------------------------------

def evaluate(run_dir: Path, data_dir: Path, json_path: Path | None = None, confusion_path: Path | None = None,
             cache_dir: Path | None = None, progress: bool = False) -> dict:
    """Accuracy per item (clips averaged), per class, and the confusion matrix (a PNG).

    Items where no hand was found are answered with the model's "nothing" class if it learned one;
    otherwise they count as wrong in `accuracy` (a user's image that yields no answer is a miss).
    Either way they are reported apart, with `accuracy_with_hand` over the items with a hand.
    """
    model = LettersModel(run_dir)
    labels = model.labels + ([model.no_hand_label] if model.no_hand_label else [])
    folders = items.class_folders(Path(data_dir))
    if unknown := sorted(set(folders) - set(labels)):
        raise LettersError(f"{data_dir}: class folder(s) {unknown} are not classes of the model in {run_dir} "
                           f"(its classes: {labels})")
    cache = items.LandmarkCache(Path(cache_dir) if cache_dir else Path(run_dir) / CACHE_NAME)
    found = items.read_items(folders, cache, progress=progress)
    confusion = np.zeros((len(labels), len(labels)), np.int64)
    results = []
    for item in found:
        truth = labels.index(item.label)
        if not len(item.landmarks):
            if model.no_hand_label and items.found_no_hand(item):
                confusion[truth, labels.index(model.no_hand_label)] += 1
                results.append({"path": str(item.path), "label": item.label, "predicted": model.no_hand_label,
                                "correct": item.label == model.no_hand_label, "problem": item.problem})
                continue
            results.append({"path": str(item.path), "label": item.label, "predicted": None, "correct": False,
                            "problem": item.problem or items.NO_HAND})
            continue
        mean = model.frame_probabilities(item).mean(axis=0)
        guess = int(np.argmax(mean))
        confusion[truth, guess] += 1
        results.append({"path": str(item.path), "label": item.label, "predicted": model.labels[guess],
                        "correct": guess == truth, "top": top_labels(mean, model.labels)})
    report = summarize(results, confusion, labels, item_report(found, sorted(folders)))
    report.update(run_dir=str(run_dir), data_dir=str(data_dir))
    confusion_path = Path(confusion_path) if confusion_path else Path(run_dir) / "confusion.png"
    plot_confusion(confusion, labels, confusion_path, f"{data_dir}: {report['accuracy']:.1%} of "
                                                        f"{report['samples']} items")
    report["confusion_png"] = str(confusion_path)
    if json_path:
        atomic_write_json(Path(json_path), report)
    return report


def summarize(results: list[dict], confusion: np.ndarray, labels: list[str], counts: dict) -> dict:
    with_hand = [r for r in results if "top" in r]
    per_class = {}
    for label in sorted({r["label"] for r in results}):
        mine = [r for r in results if r["label"] == label]
        per_class[label] = {"items": len(mine), "correct": sum(r["correct"] for r in mine),
                            "accuracy": round(sum(r["correct"] for r in mine) / len(mine), 4),
                            "no_hand": counts["no_hand"].get(label, 0)}
    return {"accuracy": round(sum(r["correct"] for r in results) / max(len(results), 1), 4),
            "samples": len(results),
            "accuracy_with_hand": round(sum(r["correct"] for r in with_hand) / max(len(with_hand), 1), 4),
            "no_hand": len(results) - len(with_hand), "per_class": per_class, "labels": labels,
            "confusion": confusion.tolist(), "items": results}


def plot_confusion(confusion: np.ndarray, labels: list[str], path: Path, title: str) -> Path:
    """Rows: the true class, columns: the predicted one; each cell's count written in it."""
    from matplotlib.figure import Figure

    size = max(5.0, 0.32 * len(labels) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(confusion, cmap="Blues")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(labels, rotation=90)
    ax.set_yticklabels(labels)
    for (row, column), count in np.ndenumerate(confusion):
        if count:
            ax.text(column, row, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > confusion.max() / 2 else "black")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    return path


# --- predict ----------------------------------------------------------------------------------

@dataclass
class Prediction:
    path: str
    kind: str
    top: list[dict]  # the item's top labels (a clip: its frames' mean)
    frames: list[list[dict]] | None = None  # per frame with a hand, when asked
    problem: str | None = None


def predict(run_dir: Path, inputs: list[Path], per_frame: bool = False, render_dir: Path | None = None,
            cache_dir: Path | None = None) -> list[Prediction]:
    """Top labels for each input (image, video, folder of frames, .pose, .npy); optionally the images drawn."""
    model = LettersModel(run_dir)
    cache = items.LandmarkCache(Path(cache_dir)) if cache_dir else None
    found = items.read_items({None: [Path(p) for p in inputs]}, cache)
    rendered = render_paths([item.path for item in found], Path(render_dir)) if render_dir is not None else {}
    predictions = []
    for item in found:
        if not len(item.landmarks) and model.no_hand_label and items.found_no_hand(item):
            predictions.append(Prediction(str(item.path), item.kind, [{"label": model.no_hand_label,
                                                                        "probability": 1.0}]))
            continue
        if not len(item.landmarks):
            predictions.append(Prediction(str(item.path), item.kind, [], problem=item.problem or items.NO_HAND))
            continue
        frames = model.frame_probabilities(item)
        prediction = Prediction(str(item.path), item.kind, top_labels(frames.mean(axis=0), model.labels),
                                [top_labels(f, model.labels) for f in frames] if per_frame else None)
        if render_dir is not None and item.kind == "image":
            render_image(item, prediction, rendered[item.path])
        predictions.append(prediction)
    return predictions


RENDER_SUFFIX = ".rendered.png"


def render_paths(inputs: list[Path], render_dir: Path) -> dict[Path, Path]:
    """DIR/<name>.rendered.png per input, numbered where names repeat; never an input's own path."""
    taken: set[Path] = set()
    chosen = {}
    sources = {p.resolve() for p in inputs}
    for path in inputs:
        out, n = render_dir / f"{path.stem}{RENDER_SUFFIX}", 1
        while out in taken or out.resolve() in sources:
            n += 1
            out = render_dir / f"{path.stem}-{n}{RENDER_SUFFIX}"
        taken.add(out)
        chosen[path] = out
    return chosen


def render_image(item: items.Item, prediction: Prediction, out: Path) -> Path:
    """The image with the signing hand's skeleton and the top label drawn on it."""
    import cv2

    image = cv2.imread(str(item.path))
    height, width = image.shape[:2]
    points = [(int(x * width), int(y * height)) for x, y, _ in item.landmarks[0]]
    for child, parent in enumerate(features.PARENTS):
        if parent >= 0:
            cv2.line(image, points[parent], points[child], (0, 200, 255), 2, cv2.LINE_AA)
    for point in points:
        cv2.circle(image, point, 3, (255, 80, 0), -1, cv2.LINE_AA)
    best = prediction.top[0]
    text = f"{best['label']} {best['probability']:.0%}"
    origin = (max(0, min(p[0] for p in points)), max(30, min(p[1] for p in points) - 12))
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2, cv2.LINE_AA)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise LettersError(f"{out}: could not write the rendered image")
    return out


def prediction_lines(predictions: list[Prediction]) -> list[str]:
    """`path<TAB>label (p) label (p) label (p)` per input; a problem instead of labels."""
    lines = []
    for p in predictions:
        shown = p.problem and f"({p.problem})" or " ".join(f"{t['label']} ({t['probability']:.2f})" for t in p.top)
        lines.append(f"{p.path}\t{shown}")
    return lines


def predictions_json(predictions: list[Prediction]) -> str:
    return json.dumps([p.__dict__ for p in predictions], indent=1)
