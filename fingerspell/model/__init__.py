"""The model: a Conv1D-embedded encoder-decoder transformer with cached greedy decoding (`transformer`)."""
