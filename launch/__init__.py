"""pfm's launch files (the sbatch template), shipped inside the package as ``pfm.launch_files``."""
