"""Training: the loop, checkpoints."""
