"""Data: the Kaggle layout and what flows through the pipeline before the model.

`schema` (landmark columns and the landmark sets a run selects; `face_mesh`: their mirror maps), `vocab` (character map, special tokens),
`phrases` (phrase kinds), `metadata` (the metadata CSVs), `parquet` (Kaggle-layout landmark
files), `convert` (parquet -> TFRecord shards: the `preprocess` stage), `beam_engine` (the same
conversion as an Apache Beam pipeline), `records` (the shard format) and `pipeline` (tf.data:
records -> model batches). Only `pipeline` imports TensorFlow.
"""
