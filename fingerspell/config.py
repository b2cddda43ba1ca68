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

from fingerspell.data import schema
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

    preset: str = _option("small", "named defaults applied before the other keys (see PRESETS): seed, small, "
                                   "kaggle, large")

    # Frames and targets
    max_frames: int = _option(384, "longest sequence the model sees: longer ones are resampled to it (nearest "
                                   "frames), shorter ones are padded and masked, never stretched")
    padding_mask: bool = _option(True, "mask padded frames in every layer; false -> every sequence is padded to "
                                       "max_frames with zeros the model attends to (the seed notebook's geometry)")
    max_target_len: int = _option(64, "target tokens: `<` + phrase + `>`, padded with PAD")
    normalization: str = _option("hand", "frame preprocessing (features/frames.py); benchmarks may register others")
    landmarks: str = _option("hands_arms", '"hands_arms" (both hands and arms, 156 columns), "hands_arms_face" '
                                           '(+ lips, nose and eyes: 130 points, 390 columns) or "all" (543 points, '
                                           '1629 columns): what the model reads (data/schema.py); the records must '
                                           'hold them (`fingerspell preprocess --landmarks`)')

    # Validation split
    val_split: str = _option("participant", '"participant" (hold out whole signers) or "file"')
    val_fraction: float = _option(0.1, "share of the sequences held out for validation, in whole groups")
    seed: int = _option(0, "seed of the split, shuffling, augmentation and initial weights")

    # Model
    encoder: str = _option("conformer", '"conformer" (feed-forward, rotary self-attention, depthwise convolution, '
                                        'feed-forward) or "transformer" (the seed notebook\'s post-norm layers)')
    num_hid: int = _option(144, "model width (embedding and attention)")
    num_heads: int = _option(4, "attention heads")
    ff_dim: int = _option(288, "feed-forward width of each encoder and decoder layer")
    enc_layers: int = _option(4, "encoder layers")
    dec_layers: int = _option(1, "decoder layers")
    conv_layers: int = _option(1, "strided Conv1D layers of the frame embedding (each subsamples time by conv_stride)")
    conv_kernel: int = _option(11, "Conv1D kernel size, in frames")
    conv_stride: int = _option(2, "Conv1D stride; max_frames must be divisible by conv_stride**conv_layers")
    conv_module_kernel: int = _option(15, "depthwise kernel of the conformer's convolution module, in encoder "
                                          "positions")
    key_dim: int = _option(0, "attention key size; 0 -> num_hid // num_heads (the seed uses num_hid)")
    dropout: float = _option(0.1, "dropout rate of the encoder and decoder layers")
    ctc_weight: float = _option(0.3, "weight of the CTC loss on the encoder (joint CTC/attention training): 0 -> "
                                     "attention decoder only, 1 -> CTC only")
    decoder: str = _option("attention", 'how validation decodes (and export by default): "attention" (greedy '
                                        'decoder), "ctc" (greedy CTC) or "joint" (attention rescored by CTC)')

    # Optimisation
    epochs: int = _option(0, "training epochs; 0 -> as many as time_budget_minutes allows, or 30 without a "
                             "budget (a budget also stops earlier than a set number of epochs)")
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

    # Augmentation (training only): each one applies to a sequence with its probability `*_p`
    aug_speed_p: float = _option(0.5, "resample the whole sequence to a new speed")
    aug_speed_min: float = _option(0.6, "slowest speed factor (the sequence gets 1/0.6 times as long)")
    aug_speed_max: float = _option(1.6, "fastest speed factor")
    aug_window_speed_p: float = _option(0.3, "change the speed of one window of frames only (within the speed range)")
    aug_affine_p: float = _option(0.75, "scale, rotate, shear and shift all points about their mean")
    aug_scale: float = _option(0.15, "largest relative scale change")
    aug_rotate_degrees: float = _option(15.0, "largest rotation in the image plane")
    aug_shear: float = _option(0.15, "largest shear factor (x by y and y by x)")
    aug_shift: float = _option(0.05, "largest shift, in normalised image units")
    aug_flip_p: float = _option(0.0, "mirror left-right through the landmark symmetry map (0 by default: the "
                                     "dominant hand is already mirrored to a right hand)")
    aug_cutmix_p: float = _option(0.0, "splice the start of this sequence with the end of another of the same "
                                       "signer, phrases cut at the same fraction")
    aug_frame_drop_p: float = _option(0.5, "remove a random share of frames")
    aug_frame_drop_rate: float = _option(0.1, "share of frames removed")
    aug_time_mask_p: float = _option(0.3, "blank (NaN) one span of frames")
    aug_time_mask_max: float = _option(0.1, "longest blanked span, as a share of the frames")
    aug_point_drop_p: float = _option(0.5, "blank single hand points in every frame")
    aug_point_drop_rate: float = _option(0.05, "chance of blanking each hand point")
    aug_finger_drop_p: float = _option(0.3, "blank one finger in a window of frames")
    aug_part_drop_p: float = _option(0.1, "blank a whole non-hand part (the arm pose; face parts in larger "
                                          "landmark sets) in every frame")
    aug_space_mask_p: float = _option(0.2, "blank the points inside one random box of the image in every frame")
    aug_token_mask_p: float = _option(0.2, "share of decoder-input characters replaced by random characters")

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

    @property
    def landmark_set(self) -> schema.LandmarkSet:
        return schema.LANDMARK_SETS[self.landmarks]

    @property
    def subsampling(self) -> int:
        """Frames per encoder position: the strided embedding's total stride."""
        return self.conv_stride ** self.conv_layers

    @property
    def augmentation_probabilities(self) -> dict[str, float]:
        """`aug_*_p` name -> probability, for every augmentation (see features/augment.py)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name.startswith("aug_") and f.name.endswith("_p")}

    def validate(self) -> "Config":
        self.check_types()
        choices = {
            "preset": tuple(PRESETS),
            "landmarks": tuple(schema.LANDMARK_SETS),
            "val_split": ("participant", "file"),
            "encoder": ("conformer", "transformer"),
            "decoder": ("attention", "ctc", "joint"),
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
        positive = ("max_frames", "max_target_len", "batch_size", "num_hid", "num_heads", "ff_dim", "enc_layers",
                    "dec_layers", "conv_layers", "conv_kernel", "conv_stride", "conv_module_kernel", "eval_every",
                    "eval_batch_size", "learning_rate", "steps_per_execution")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a positive number")
        for name in ("epochs", "cache_memory_gb", "time_budget_minutes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected 0 or a positive number")
        fractions = ("dropout", "label_smoothing", "aug_frame_drop_rate", "aug_point_drop_rate", "aug_time_mask_max",
                     *self.augmentation_probabilities)
        for name in fractions:
            if not 0.0 <= getattr(self, name) <= (1.0 if name.endswith("_p") else 0.999):
                raise ConfigError(f"{name}={getattr(self, name)}: expected a value in [0, 1"
                                  f"{']' if name.endswith('_p') else ')'}")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ConfigError(f"ctc_weight={self.ctc_weight}: expected a weight in [0, 1]")
        if self.decoder in ("ctc", "joint") and self.ctc_weight == 0.0:
            raise ConfigError(f"decoder={self.decoder!r} needs a CTC head: set ctc_weight above 0")
        if self.decoder in ("attention", "joint") and self.ctc_weight == 1.0:
            raise ConfigError(f"decoder={self.decoder!r} needs a trained attention decoder: set ctc_weight below 1 "
                              f"or decoder=ctc")
        if not 0.0 < self.aug_speed_min <= self.aug_speed_max:
            raise ConfigError(f"aug_speed_min={self.aug_speed_min}, aug_speed_max={self.aug_speed_max}: "
                              f"expected 0 < min <= max")
        if self.encoder == "conformer" and self.attention_key_dim % 2:
            raise ConfigError(f"attention key size {self.attention_key_dim} (num_hid / num_heads, or key_dim) is odd: "
                              f"the conformer's rotary positions rotate pairs of values; choose an even one")
        if self.max_frames % self.subsampling:
            raise ConfigError(f"max_frames={self.max_frames} must be divisible by conv_stride**conv_layers="
                              f"{self.subsampling}")
        return self

    @property
    def training_epochs(self) -> int:
        """The epochs a run may take: `epochs`, or without it (0) as many as `time_budget_minutes` allows
        (a budget alone trains until it ends), or DEFAULT_EPOCHS without either."""
        if self.epochs:
            return self.epochs
        return BUDGET_EPOCHS if self.time_budget_minutes else DEFAULT_EPOCHS

    def encoder_positions(self, frames: int | None = None) -> int:
        """Encoder positions for a sequence of `frames` (default max_frames)."""
        return -(-(frames or self.max_frames) // self.subsampling)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "Config":
        """A config from saved or given values on top of its preset (saved files hold every value, so the
        preset only fills keys a file lacks). Files written before presets existed hold the seed
        notebook's geometry and boolean augmentation switches: they load as the `seed` preset."""
        values = _upgrade_legacy(dict(values))
        preset = values.get("preset", cls.preset_default())
        if preset not in PRESETS:
            raise ConfigError(f"{source}: preset={preset!r}: expected one of {tuple(PRESETS)}")
        return super().from_dict({**PRESETS[preset], "preset": preset, **values}, source=source)

    @staticmethod
    def preset_default() -> str:
        return next(f.default for f in fields(Config) if f.name == "preset")

    def override(self, assignments: list[str]) -> "Config":
        """A copy with `key=value` strings applied; `preset=NAME` first resets every key to that preset's
        value, then the other assignments apply, in any order on the command line."""
        presets = [a for a in assignments if a.partition("=")[0].strip().replace("-", "_") == "preset"]
        base = self
        if presets:
            name = presets[-1].partition("=")[2].strip()
            if name not in PRESETS:
                raise ConfigError(f"override {presets[-1]!r}: expected one of {tuple(PRESETS)}")
            base = Config.from_dict({"preset": name})
        rest = [a for a in assignments if a not in presets]
        return Settings.override(base, rest)


#: Epochs when neither `epochs` nor a time budget is given, and the cap for a budget alone.
DEFAULT_EPOCHS = 30
BUDGET_EPOCHS = 100_000

_SEED_GEOMETRY = dict(
    max_frames=128, padding_mask=False, encoder="transformer", num_hid=200, num_heads=4, ff_dim=400, enc_layers=2,
    dec_layers=1, conv_layers=3, conv_kernel=11, conv_stride=2, ctc_weight=0.0, decoder="attention")

#: Named defaults: the dataclass defaults are `small`; a preset lists the keys it changes.
PRESETS: dict[str, dict[str, Any]] = {
    # The seed notebook's model geometry (16 encoder positions, no mask, no CTC), with our training recipe.
    "seed": {**_SEED_GEOMETRY, "aug_window_speed_p": 0.0, "aug_time_mask_p": 0.0, "aug_finger_drop_p": 0.0,
             "aug_part_drop_p": 0.0, "aug_space_mask_p": 0.0, "aug_token_mask_p": 0.0, "aug_speed_min": 0.8,
             "aug_speed_max": 1.2, "aug_shear": 0.0},
    # The CPU demo and the tests: a 4-layer conformer, 2x subsampling, joint CTC/attention.
    "small": {},
    # About the 2nd-place solution's scale (6.4M parameters); ~6.8M, 13.5 MB in fp16 (under 15 MB).
    "kaggle": dict(num_hid=192, num_heads=4, ff_dim=384, enc_layers=10, dec_layers=2, conv_module_kernel=31,
                   ctc_weight=0.5),
    # The most that fits Kaggle's 40 MB in fp16: ~18.8M parameters, 37.7 MB (depth over width, as the
    # 5th place found).
    "large": dict(num_hid=256, num_heads=4, ff_dim=512, enc_layers=17, dec_layers=2, conv_module_kernel=31,
                  ctc_weight=0.5),
}


def _upgrade_legacy(values: dict[str, Any]) -> dict[str, Any]:
    """Values written before presets: each augmentation was a boolean switch (now a probability), and a
    run's config.json with `frame_len` had the seed notebook's geometry (zero-padded to frame_len, unmasked,
    no CTC), which the `seed` preset with `max_frames` keeps, so old runs still load and export."""
    if "frame_len" in values and "preset" not in values:
        values = {"preset": "seed", "padding_mask": False, "encoder": "transformer", "ctc_weight": 0.0,
                  "decoder": "attention", **values, "max_frames": values["frame_len"]}
        del values["frame_len"]
    renamed = {"aug_speed": "aug_speed_p", "aug_affine": "aug_affine_p", "aug_frame_drop": "aug_frame_drop_p",
               "aug_point_dropout": "aug_point_drop_p", "aug_point_dropout_rate": "aug_point_drop_rate"}
    for old, new in renamed.items():
        if old in values:
            value = values.pop(old)
            values[new] = float(value) if isinstance(value, bool) else value
    return values


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
