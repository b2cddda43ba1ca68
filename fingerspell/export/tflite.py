"""TFLite export in Kaggle's submission format.

`model.tflite` has the signature `serving_default`: input `inputs` float32 [T, 156] (the
columns of `inference_args.json`, NaN kept) and output `outputs` [L, 59] whose argmax over
axis 1 spells the phrase. Inside: the training code's own frame preprocessing
(`features.model_input`) and the model's greedy decoding: the attention decoder (cached,
stopping at `>`), the CTC head, or both (`--decoder joint`).
"""
from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import tensorflow as tf

from fingerspell import features
from fingerspell.data import schema, vocab
from fingerspell.config import Config
from fingerspell.files import atomic_path, atomic_write
from fingerspell.model.transformer import FingerspellTransformer

MAX_MODEL_BYTES = 40_000_000  # Kaggle's 40 MB limit on the tflite file (the stricter reading)
QUANTIZATIONS = ("none", "fp16", "dynamic")
DECODERS = ("attention", "ctc", "joint")


class ExportError(RuntimeError):
    """An export that would not make a valid submission; the message says why."""


class InferenceModule(tf.Module):
    """Raw frames -> one-hot characters, for one sequence, as Kaggle's grader calls it."""

    def __init__(self, model: FingerspellTransformer, cfg: Config, decoder: str | None = None):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.decoder = decoder or cfg.decoder
        # Keras 3 models are not tracked by tf.Module: without these references the
        # converter writes a model with no weights, which loads and returns garbage.
        self.weights = [variable.value for variable in model.weights]
        # The input is as wide as the run's landmark set: [T, its columns], in inference_args.json's order.
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None, cfg.landmark_set.n_columns], tf.float32, name="inputs")])

    def _serve(self, inputs):
        frames = features.model_input(inputs, self.cfg.max_frames, self.cfg.normalization, self.cfg.padding_mask,
                                      self.cfg.landmark_set)
        if self.cfg.padding_mask:
            frames = features.pad_for_model(frames, self.cfg.subsampling)
        ids = self.model.generate(frames[None], decoder=self.decoder)[0]
        steps = tf.range(tf.shape(ids)[0])
        ended = tf.logical_or(tf.equal(ids, vocab.END), tf.equal(ids, vocab.PAD))
        length = tf.reduce_min(tf.where(ended, steps, tf.shape(ids)[0]))
        return {"outputs": tf.one_hot(ids[:length], vocab.N_CHARS)}


def check_decoder(decoder: str | None, cfg: Config) -> str:
    """The decoder an export runs: `decoder`, else the config's; refused when the model lacks its parts."""
    decoder = decoder or cfg.decoder
    if decoder not in DECODERS:
        raise ExportError(f"decoder={decoder!r}: expected one of {DECODERS}")
    if decoder in ("ctc", "joint") and cfg.ctc_weight == 0:
        raise ExportError(f"--decoder {decoder} needs a CTC head, and this run was trained with ctc_weight=0; "
                          f"use --decoder attention")
    if decoder in ("attention", "joint") and cfg.ctc_weight == 1:
        raise ExportError(f"--decoder {decoder} needs the attention decoder, and this run trained only CTC "
                          f"(ctc_weight=1); use --decoder ctc")
    return decoder


def convert(model: FingerspellTransformer, cfg: Config, quantize: str = "none", decoder: str | None = None) -> bytes:
    """The TFLite flatbuffer (builtin ops only) of the inference module."""
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"quantize={quantize!r}: expected one of {QUANTIZATIONS}")
    module = InferenceModule(model, cfg, check_decoder(decoder, cfg))
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(module, saved, signatures={"serving_default": module.serve.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def inference_args(landmarks: schema.LandmarkSet = schema.HANDS_ARMS) -> dict:
    """Kaggle's inference_args.json: exactly the columns the model reads, in its input's order."""
    return {"selected_columns": list(landmarks.columns)}


def write_submission(tflite: bytes, out_dir: Path, landmarks: schema.LandmarkSet = schema.HANDS_ARMS) -> dict[str, Path]:
    """model.tflite, inference_args.json, the character map and submission.zip (the first two at its root).

    Each file is written atomically; the zip is built last, from the bytes in memory, so a
    submission.zip on disk always holds a complete pair.
    """
    if len(tflite) > MAX_MODEL_BYTES:
        raise ExportError(
            f"the TFLite model is {len(tflite) / 1e6:.1f} MB, over Kaggle's 40 MB limit; "
            f"export with --quantize fp16 (about half the size) or train a smaller model")
    out_dir = Path(out_dir)
    args = json.dumps(inference_args(landmarks))
    paths = {"model": atomic_write(out_dir / "model.tflite", tflite),
             "inference_args": atomic_write(out_dir / "inference_args.json", args),
             "character_map": vocab.write_character_map(out_dir),
             "zip": out_dir / "submission.zip"}
    with atomic_path(paths["zip"]) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.tflite", tflite)
        archive.writestr("inference_args.json", args)
    return paths


def export_run(run_dir: Path, out_dir: Path, checkpoint: str = "best", quantize: str = "none",
               decoder: str | None = None) -> dict:
    """Export a training run's checkpoint as a Kaggle submission; returns paths and sizes."""
    from fingerspell.training.trainer import load_trained_model

    model, cfg = load_trained_model(run_dir, checkpoint)
    decoder = check_decoder(decoder, cfg)
    paths = write_submission(convert(model, cfg, quantize, decoder), out_dir, cfg.landmark_set)
    return {"model": str(paths["model"]), "submission": str(paths["zip"]),
            "model_bytes": paths["model"].stat().st_size, "quantize": quantize, "checkpoint": checkpoint,
            "decoder": decoder, "parameters": model.count_params()}
