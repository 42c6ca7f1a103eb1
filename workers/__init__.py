"""workers: one cell = one training run over a compressed representation (no Ray here)."""
