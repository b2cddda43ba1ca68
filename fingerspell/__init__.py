"""fingerspell: MediaPipe landmark sequences of ASL fingerspelling -> text.

The pipeline, one subpackage per stage: `data` (Kaggle layout, parquet -> TFRecord
conversion, tf.data), `features` (frame preprocessing shared by training and export,
augmentation), `model`, `training`, `export` (TFLite, prediction, scoring), plus `synth`
(synthetic data) and `video` (real recordings). `cli` is the `fingerspell` command.
Importing the package changes no global state; the command-line entry points do that.
"""
__version__ = "0.2.0"
