"""The settings of a letters run (light: `fingerspell letters train --help` imports it without TensorFlow)."""
from __future__ import annotations

from dataclasses import dataclass

from fingerspell.config import ConfigError, Settings, _option

WINDOW = 5  # frames of motion the features see (features.WINDOW): ~1/6 s at 30 fps


@dataclass
class LettersConfig(Settings):
    """Every setting of a letters run, saved as RUN_DIR/config.json."""

    val_fraction: float = _option(0.2, "share of each class's frames held out, as one contiguous block")
    val_gap: int = _option(15, "frames on each side of a held-out block left out of training (near-duplicates); "
                               "at least the window length - 1, so no training window reaches into the block")
    seed: int = _option(0, "seed of the split, the augmentation and the initial weights")
    no_hand_class: str = _option("nothing", "the class folder, if the data has one, whose items show no hand: the "
                                            "answer wherever no hand is found ('' -> none)")
    hidden: int = _option(256, "width of the first hidden layer (the second is half)")
    dropout: float = _option(0.3, "dropout after each hidden layer")
    epochs: int = _option(60, "passes over the training frames")
    batch_size: int = _option(256, "windows per batch")
    learning_rate: float = _option(2e-3, "peak learning rate (cosine decay to 0)")
    label_smoothing: float = _option(0.1, "label smoothing of the cross-entropy")
    still_share: float = _option(0.5, "share of training windows made of one repeated frame, as an image gives")
    still_motion: float = _option(0.3, "only windows whose fingertips move less than this, in palm sizes, are "
                                       "made still (a J or Z mid-stroke is not a still sign)")
    aug_roll: float = _option(20.0, "largest rotation in the image plane, degrees")
    aug_yaw: float = _option(30.0, "largest rotation about the vertical axis, degrees")
    aug_pitch: float = _option(30.0, "largest rotation about the horizontal axis, degrees")
    aug_aspect: float = _option(1.3, "largest change of the y/x scale (other camera aspect ratios)")
    aug_finger_scale: float = _option(0.15, "largest relative change of each finger's length")
    aug_jitter: float = _option(0.02, "landmark noise, in palm sizes")

    def validate(self) -> "LettersConfig":
        self.check_types()
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction={self.val_fraction}: expected a fraction in (0, 0.5)")
        for name in ("epochs", "batch_size", "hidden", "learning_rate"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a positive number")
        for name in ("dropout", "label_smoothing", "still_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a value in [0, 1]")
        for name in ("still_motion", "aug_roll", "aug_yaw", "aug_pitch", "aug_jitter"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a value >= 0")
        if not 0.0 <= self.aug_finger_scale < 1.0:
            raise ConfigError(f"aug_finger_scale={self.aug_finger_scale}: expected a value in [0, 1)")
        if self.aug_aspect < 1.0:
            raise ConfigError(f"aug_aspect={self.aug_aspect}: expected a value >= 1 (1: no change)")
        if self.val_gap < WINDOW - 1:
            raise ConfigError(f"val_gap={self.val_gap}: expected at least {WINDOW - 1} (the window length - 1)")
        return self
