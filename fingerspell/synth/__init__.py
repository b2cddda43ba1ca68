"""Synthetic Kaggle-format datasets that a model can learn (`generator`), for demos, tests and benchmarks."""
