"""Training runs: optimizer, checkpoints, resume, validation score, metrics and curves (`trainer`)."""
