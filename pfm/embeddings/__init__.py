"""pfm.embeddings."""
