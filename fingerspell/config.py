"""One dataclass holds every setting of a training run.

A run's resolved config is saved as `config.json` beside its checkpoints, so export
and `--resume` rebuild exactly the same preprocessing and model.
Override any field from the command line as `key=value`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file or override that does not fit `Config`."""


@dataclass
class Config:
    # Frames and targets
    frame_len: int = 128  # frames per sequence after resampling / padding
    max_target_len: int = 64  # `<` + phrase + `>`, padded with PAD
    normalization: str = "hand"  # "hand" (ours, see features.py) or "seed" (the seed notebook's)

    # Validation split
    val_split: str = "participant"  # "participant" (held-out signers) or "file"
    val_fraction: float = 0.1
    seed: int = 0

    # Model: defaults equal the seed notebook's sizes so comparisons are fair
    num_hid: int = 200
    num_heads: int = 4
    ff_dim: int = 400
    enc_layers: int = 2
    dec_layers: int = 1
    conv_layers: int = 3
    conv_kernel: int = 11
    conv_stride: int = 2
    key_dim: int = 0  # 0 -> num_hid // num_heads; the seed uses num_hid
    dropout: float = 0.1

    # Optimisation
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"  # "cosine" (linear warmup, cosine decay) or "constant"
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    clipnorm: float = 1.0
    label_smoothing: float = 0.1
    jit_compile: bool = True  # XLA; Keras 3 leaves it off on CPU, it trains ~1.6x faster here
    mixed_precision: str = "auto"  # "auto" (on with a GPU), "on", "off"
    cache: bool = True  # keep decoded records in memory across epochs (turn off for the full dataset)
    trim_padding: bool = True  # drop target columns that are padding in the whole batch (same loss, less work)

    # Validation and logging
    eval_every: int = 1  # epochs between validation (loss and greedy-decoded score) and the curves
    eval_batch_size: int = 256
    eval_max_sequences: int = 0  # 0 -> the whole validation split
    show_examples_every: int = 5  # epochs between printed target/prediction pairs
    time_budget_minutes: float = 0.0  # 0 -> no limit; else stop after the epoch that passes it

    # Augmentation (training only)
    aug_speed: bool = True  # temporal resampling
    aug_speed_min: float = 0.8
    aug_speed_max: float = 1.2
    aug_affine: bool = True  # scale, rotation, shift
    aug_scale: float = 0.15
    aug_rotate_degrees: float = 15.0
    aug_shift: float = 0.05
    aug_frame_drop: bool = True  # drop random frames, mask a random span
    aug_frame_drop_rate: float = 0.1
    aug_point_dropout: bool = True  # drop fingers / single points
    aug_point_dropout_rate: float = 0.05

    @property
    def attention_key_dim(self) -> int:
        return self.key_dim or self.num_hid // self.num_heads

    def validate(self) -> "Config":
        for f in fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "bool": bool, "str": str}[f.type]
            if not isinstance(value, expected) or (f.type in ("int", "float") and isinstance(value, bool)):
                raise ConfigError(f"{f.name}={value!r}: expected a {f.type}")
        choices = {
            "normalization": ("hand", "seed"),
            "val_split": ("participant", "file"),
            "lr_schedule": ("cosine", "constant"),
            "mixed_precision": ("auto", "on", "off"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")
        if self.normalization == "seed" and self.augmentations():
            raise ConfigError(
                f"normalization='seed' reproduces the seed notebook, which has no augmentation; "
                f"turn off {self.augmentations()}")
        if self.num_hid % self.num_heads:
            raise ConfigError(f"num_hid={self.num_hid} is not divisible by num_heads={self.num_heads}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction}: expected a fraction in (0, 1)")
        positive = ("frame_len", "max_target_len", "epochs", "batch_size", "num_hid", "num_heads", "ff_dim",
                    "conv_layers", "conv_kernel", "conv_stride", "eval_every", "eval_batch_size", "learning_rate")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a positive number")
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values).validate()

    @classmethod
    def load(cls, path: Path) -> "Config":
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

    def override(self, assignments: list[str]) -> "Config":
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
        return Config.from_dict(values, source="overrides")

    @classmethod
    def seed_notebook(cls, **changes: Any) -> "Config":
        """The seed notebook's recipe: its preprocessing, key_dim = num_hid, Adam 1e-4, no augmentation."""
        seed = dict(
            normalization="seed", key_dim=200, learning_rate=1e-4, lr_schedule="constant",
            warmup_epochs=0.0, weight_decay=0.0, clipnorm=0.0, aug_speed=False, aug_affine=False,
            aug_frame_drop=False, aug_point_dropout=False, trim_padding=False,
        )
        seed.update(changes)
        return cls(**seed).validate()


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
