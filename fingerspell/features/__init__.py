"""Frame features: the shared frame preprocessing (`frames`) and training-time augmentation (`augment`).

The frame functions are re-exported here so callers write `features.model_input(...)`.
"""
from fingerspell.features.frames import (
    SIDE_FEATURES,
    dominant_side,
    feature_dim,
    fit_length,
    model_input,
    normalize,
    preprocess_frames,
    register_normalization,
    side_points,
    to_points,
)

__all__ = ["SIDE_FEATURES", "dominant_side", "feature_dim", "fit_length", "model_input", "normalize",
           "preprocess_frames", "register_normalization", "side_points", "to_points"]
