"""One dataclass holds every setting of a training run.

A run's resolved config is saved as `config.json` beside its checkpoints, so export
and `--resume` rebuild exactly the same preprocessing and model.
Override any field from the command line as `key=value`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fingerspell.files import atomic_write_json


class ConfigError(ValueError):
    """A config file or override that does not fit `Config`."""


def _option(default: Any, help: str) -> Any:
    """A field with its one-line meaning, kept beside the default so `--help` cannot drift."""
    return field(default=default, metadata={"help": help})


class Settings:
    """What every config dataclass of the toolkit shares: typed fields, JSON files, `key=value` overrides.

    A subclass is a `@dataclass` whose fields are made with `_option`; its `validate` calls
    `check_types` and adds its own checks.
    """

    def check_types(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "bool": bool, "str": str}[f.type]
            if not isinstance(value, expected) or (f.type in ("int", "float") and isinstance(value, bool)):
                raise ConfigError(f"{f.name}={value!r}: expected a {f.type}")

    def validate(self):
        self.check_types()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config"):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values).validate()

    @classmethod
    def load(cls, path: Path):
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a JSON object of config keys")
        return cls.from_dict(values, source=str(path))

    def override(self, assignments: list[str]):
        """A copy with `key=value` strings applied, each parsed as its field's type."""
        types = {f.name: f.type for f in fields(self)}
        values = self.to_dict()
        for item in assignments:
            key, sep, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep:
                raise ConfigError(f"override {item!r}: expected key=value")
            if key not in types:
                raise ConfigError(f"override {item!r}: unknown config key {key!r}; known keys: {sorted(types)}")
            values[key] = _parse_value(key, raw.strip(), types[key])
        return type(self).from_dict(values, source="overrides")


@dataclass
class Config(Settings):
    """Every setting of a training run; each field's `help` is shown by `fingerspell train --help`."""

    # Frames and targets
    frame_len: int = _option(128, "frames per sequence after resampling / padding")
    max_target_len: int = _option(64, "target tokens: `<` + phrase + `>`, padded with PAD")
    normalization: str = _option("hand", "frame preprocessing (features/frames.py); benchmarks may register others")

    # Validation split
    val_split: str = _option("participant", '"participant" (hold out whole signers) or "file"')
    val_fraction: float = _option(0.1, "share of the sequences held out for validation, in whole groups")
    seed: int = _option(0, "seed of the split, shuffling, augmentation and initial weights")

    # Model: defaults equal the seed notebook's sizes so comparisons are fair
    num_hid: int = _option(200, "model width (embedding and attention)")
    num_heads: int = _option(4, "attention heads")
    ff_dim: int = _option(400, "feed-forward width of each transformer layer")
    enc_layers: int = _option(2, "encoder layers")
    dec_layers: int = _option(1, "decoder layers")
    conv_layers: int = _option(3, "strided Conv1D layers of the frame embedding")
    conv_kernel: int = _option(11, "Conv1D kernel size, in frames")
    conv_stride: int = _option(2, "Conv1D stride; frame_len must be divisible by conv_stride**conv_layers")
    key_dim: int = _option(0, "attention key size; 0 -> num_hid // num_heads (the seed uses num_hid)")
    dropout: float = _option(0.1, "dropout rate of the transformer layers")

    # Optimisation
    epochs: int = _option(30, "training epochs (at most: time_budget_minutes may stop earlier)")
    batch_size: int = _option(64, "global batch: sequences per training step over all replicas and workers (each "
                                  "replica takes batch_size / replicas; never scaled by the replica count)")
    learning_rate: float = _option(1e-3, "peak learning rate for the global batch_size (never scaled by the replica "
                                         "or worker count)")
    lr_schedule: str = _option("cosine", '"cosine" (linear warmup, cosine decay) or "constant"')
    warmup_epochs: float = _option(1.0, "epochs of linear warmup (cosine schedule)")
    weight_decay: float = _option(1e-4, "AdamW weight decay (not on biases, LayerNorm or embeddings); 0 -> Adam")
    clipnorm: float = _option(1.0, "clip the global norm of all gradients together to this; 0 -> off")
    label_smoothing: float = _option(0.1, "label smoothing of the cross-entropy")
    jit_compile: str = _option("auto", '"auto" (XLA with one GPU; off on CPU, where bench/bench_training.py measured '
                                        'it ~7% slower, and with several replicas: it cannot compile mirrored '
                                        'variables), "on", "off"')
    mixed_precision: str = _option("auto", '"auto" (on with a GPU), "on", "off"')
    distribute: str = _option("auto", '"auto" (mirrored with several GPUs, else none), "none", "mirrored" (all GPUs, '
                                      'or all logical CPUs without a GPU), "multi_worker" (the machines TF_CONFIG '
                                      'lists, see README)')
    cache: str = _option("auto", '"auto" (keep decoded records in memory when they fit cache_memory_gb, else stream '
                                 'them from disk every epoch), "on", "off"')
    cache_memory_gb: float = _option(0.0, "memory the record cache may use (cache=auto); 0 -> half of the memory "
                                          "available at the start (container limits included)")
    steps_per_execution: int = _option(4, "training steps per call into the compiled step (one replica): Keras waits "
                                          "for the device and reads the loss once per call, not once per step; "
                                          "callbacks (time budget, progress) see every N-th step")
    trim_padding: bool = _option(True, "drop target columns that are padding in the whole batch (same loss, less work)")

    # Validation and logging
    eval_every: int = _option(1, "epochs between validation (loss and greedy-decoded score) and the curves")
    eval_batch_size: int = _option(256, "sequences per batch of greedy-decoded validation")
    eval_max_sequences: int = _option(0, "validation sequences scored; 0 -> the whole validation split")
    show_examples_every: int = _option(5, "epochs between logged target/prediction pairs; 0 -> never")
    time_budget_minutes: float = _option(0.0, "0 -> no limit; else stop after the epoch that passes it")

    # Augmentation (training only)
    aug_speed: bool = _option(True, "temporal resampling")
    aug_speed_min: float = _option(0.8, "slowest speed factor")
    aug_speed_max: float = _option(1.2, "fastest speed factor")
    aug_affine: bool = _option(True, "scale, rotation, shift")
    aug_scale: float = _option(0.15, "largest relative scale change")
    aug_rotate_degrees: float = _option(15.0, "largest rotation in the image plane")
    aug_shift: float = _option(0.05, "largest shift, in normalised image units")
    aug_frame_drop: bool = _option(True, "drop random frames, mask a random span")
    aug_frame_drop_rate: float = _option(0.1, "share of frames dropped")
    aug_point_dropout: bool = _option(True, "drop fingers / single points")
    aug_point_dropout_rate: float = _option(0.05, "chance of dropping each hand point (4x for a whole finger)")

    def __post_init__(self) -> None:
        # Configs saved before jit_compile and cache took auto/on/off hold true/false: they keep meaning on/off.
        for name in ("jit_compile", "cache"):
            value = getattr(self, name)
            if isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            if isinstance(value, bool):
                setattr(self, name, "on" if value else "off")

    @property
    def attention_key_dim(self) -> int:
        return self.key_dim or self.num_hid // self.num_heads

    def validate(self) -> "Config":
        self.check_types()
        choices = {
            "val_split": ("participant", "file"),
            "lr_schedule": ("cosine", "constant"),
            "mixed_precision": ("auto", "on", "off"),
            "jit_compile": ("auto", "on", "off"),
            "cache": ("auto", "on", "off"),
            "distribute": ("auto", "none", "mirrored", "multi_worker"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")
        if self.num_hid % self.num_heads:
            raise ConfigError(f"num_hid={self.num_hid} is not divisible by num_heads={self.num_heads}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction}: expected a fraction in (0, 1)")
        positive = ("frame_len", "max_target_len", "epochs", "batch_size", "num_hid", "num_heads", "ff_dim",
                    "conv_layers", "conv_kernel", "conv_stride", "eval_every", "eval_batch_size", "learning_rate",
                    "steps_per_execution")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a positive number")
        if self.cache_memory_gb < 0:
            raise ConfigError(f"cache_memory_gb={self.cache_memory_gb}: expected 0 (auto) or a positive size")
        for name in ("dropout", "aug_frame_drop_rate", "aug_point_dropout_rate", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a value in [0, 1)")
        if not 0.0 < self.aug_speed_min <= self.aug_speed_max:
            raise ConfigError(f"aug_speed_min={self.aug_speed_min}, aug_speed_max={self.aug_speed_max}: "
                              f"expected 0 < min <= max")
        if self.frame_len % (self.conv_stride ** self.conv_layers):
            raise ConfigError(
                f"frame_len={self.frame_len} must be divisible by conv_stride**conv_layers="
                f"{self.conv_stride ** self.conv_layers}")
        return self

    def augmentations(self) -> list[str]:
        """Names of the augmentations switched on."""
        return [n for n in ("aug_speed", "aug_affine", "aug_frame_drop", "aug_point_dropout") if getattr(self, n)]


def _parse_value(key: str, raw: str, kind: Any) -> Any:
    kind = kind if isinstance(kind, str) else kind.__name__
    try:
        if kind == "bool":
            lowered = raw.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return lowered in ("true", "1", "yes", "on")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(f"override {key}={raw!r}: expected a {kind}") from None
