"""Pre-training loop."""
