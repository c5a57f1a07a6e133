"""Inference: generation from the Alpaca prompt."""
