"""fingerspell: MediaPipe landmark sequences of ASL fingerspelling -> text.

Stages (each a `python -m` command over this library): `preprocess` (Kaggle parquet
-> TFRecord shards), `train` (Conv1D-embedded encoder-decoder transformer), `export`
(TFLite submission), plus `fingerspell.synth`, `.predict`, `.evaluate`, `.extract`,
`.transcribe` and `.render`.
"""
import os

# The model, its training step and the TFLite export are TensorFlow code; mediapipe
# pulls in JAX, so pin Keras to TensorFlow before anything imports it.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
