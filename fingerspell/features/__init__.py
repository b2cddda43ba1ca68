"""Frame features: the shared frame preprocessing (`frames`) and training-time augmentation (`augment`).

The frame functions are re-exported here so callers write `features.model_input(...)`.
"""
from fingerspell.features.frames import (
    FRAME_BUCKET,
    SIDE_FEATURES,
    dominant_side,
    drop_empty_frames,
    feature_dim,
    model_input,
    normalize,
    pad_for_model,
    pad_to,
    padded_length,
    preprocess_frames,
    register_normalization,
    shorten,
    side_features,
    side_points,
    to_points,
)

__all__ = ["FRAME_BUCKET", "SIDE_FEATURES", "dominant_side", "drop_empty_frames", "feature_dim", "model_input",
           "normalize", "pad_for_model", "pad_to", "padded_length", "preprocess_frames", "register_normalization",
           "shorten", "side_features", "side_points", "to_points"]
