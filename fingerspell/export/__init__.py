"""Serving: TFLite export in Kaggle's format (`tflite`), running it (`predictor`), scoring it like the grader (`evaluate`)."""
