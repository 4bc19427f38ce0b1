"""pfm.checkpoints."""
