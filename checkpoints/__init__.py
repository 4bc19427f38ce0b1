"""The bundled checkpoint registry, shipped inside the package as ``pfm.checkpoint_files``."""
