"""Training: optimizer, the pure train step, checkpoints, metrics and the run loop."""
