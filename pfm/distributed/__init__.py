"""pfm.distributed."""
