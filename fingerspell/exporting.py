"""TFLite export in Kaggle's submission format.

`model.tflite` has the signature `serving_default`: input `inputs` float32 [T, 156] (the
columns of `inference_args.json`, NaN kept) and output `outputs` [L, 59] whose argmax over
axis 1 spells the phrase. Inside: the training code's own frame preprocessing
(`features.model_input`) and the model's cached greedy decoding, which stops at `>`.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import tensorflow as tf

from fingerspell import features, schema, vocab
from fingerspell.config import Config
from fingerspell.model import FingerspellTransformer

MAX_MODEL_BYTES = 40_000_000  # Kaggle's 40 MB limit on the tflite file (the stricter reading)
QUANTIZATIONS = ("none", "fp16", "dynamic")


class ExportError(RuntimeError):
    """An export that would not make a valid submission; the message says why."""


class InferenceModule(tf.Module):
    """Raw frames -> one-hot characters, for one sequence, as Kaggle's grader calls it."""

    def __init__(self, model: FingerspellTransformer, cfg: Config):
        super().__init__()
        self.model = model
        self.cfg = cfg
        # Keras 3 models are not tracked by tf.Module: without these references the
        # converter writes a model with no weights, which loads and returns garbage.
        self.weights = [variable.value for variable in model.weights]

    @tf.function(input_signature=[tf.TensorSpec([None, schema.N_SELECTED_COLUMNS], tf.float32, name="inputs")])
    def serve(self, inputs):
        frames = features.model_input(inputs, self.cfg.frame_len, self.cfg.normalization)
        ids = self.model.generate(frames[None])[0]
        steps = tf.range(tf.shape(ids)[0])
        length = tf.reduce_min(tf.where(tf.equal(ids, vocab.END), steps, tf.shape(ids)[0]))
        return {"outputs": tf.one_hot(ids[:length], vocab.N_CHARS)}


def convert(model: FingerspellTransformer, cfg: Config, quantize: str = "none") -> bytes:
    """The TFLite flatbuffer (builtin ops only) of the inference module."""
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"quantize={quantize!r}: expected one of {QUANTIZATIONS}")
    module = InferenceModule(model, cfg)
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(module, saved, signatures={"serving_default": module.serve.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def inference_args() -> dict:
    return {"selected_columns": list(schema.SELECTED_COLUMNS)}


def write_submission(tflite: bytes, out_dir: Path) -> dict[str, Path]:
    """model.tflite, inference_args.json and submission.zip (the two files at its root)."""
    if len(tflite) > MAX_MODEL_BYTES:
        raise ExportError(
            f"the TFLite model is {len(tflite) / 1e6:.1f} MB, over Kaggle's 40 MB limit; "
            f"export with --quantize fp16 (about half the size) or train a smaller model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"model": out_dir / "model.tflite", "inference_args": out_dir / "inference_args.json",
             "zip": out_dir / "submission.zip", "character_map": out_dir / vocab.CHARACTER_MAP_PATH.name}
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        staged = {k: Path(tmp) / p.name for k, p in paths.items()}
        staged["model"].write_bytes(tflite)
        staged["inference_args"].write_text(json.dumps(inference_args()))
        shutil.copyfile(vocab.CHARACTER_MAP_PATH, staged["character_map"])
        with zipfile.ZipFile(staged["zip"], "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(staged["model"], "model.tflite")
            archive.write(staged["inference_args"], "inference_args.json")
        for key, path in paths.items():
            staged[key].replace(path)
    return paths


def export_run(run_dir: Path, out_dir: Path, checkpoint: str = "best", quantize: str = "none") -> dict:
    """Export a training run's checkpoint as a Kaggle submission; returns paths and sizes."""
    from fingerspell.training import load_trained_model

    model, cfg = load_trained_model(run_dir, checkpoint)
    paths = write_submission(convert(model, cfg, quantize), out_dir)
    return {"model": str(paths["model"]), "submission": str(paths["zip"]),
            "model_bytes": paths["model"].stat().st_size, "quantize": quantize, "checkpoint": checkpoint,
            "parameters": model.count_params()}
