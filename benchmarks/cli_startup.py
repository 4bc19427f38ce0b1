"""Start-up time of the command-line tools: wall time of fresh processes, and which heavy packages each loads.

    python benchmarks/cli_startup.py [--runs 3]

Each command runs ``--runs`` times (``PFM_OFFLINE=1``, output discarded); the median and minimum wall times are
printed with the heavy packages (torch, Lightning, Hydra, ...) that the same command leaves in ``sys.modules``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [
    ["pfm", "--help"],
    ["pfm", "list"],
    ["pfm", "info"],
    ["pfm", "data", "--help"],
    ["pfm", "embed", "--help"],
    ["pfm", "sample", "--help"],
    ["pfm", "evaluate", "--help"],
    ["pfm-datagen", "--help"],
    ["pfm-datagen", "write", "--help"],
    ["pfm-datagen", "list"],
]
HEAVY = ("torch", "lightning", "hydra", "h5py", "matplotlib", "webdataset", "huggingface_hub", "transformers")
_ENTRY = {"pfm": "pfm.cli", "pfm-datagen": "datagen.cli"}


def loaded(command: list[str], env: dict[str, str]) -> list[str]:
    """The heavy packages in ``sys.modules`` after ``command`` ran in a fresh interpreter."""
    probe = (
        f"import sys\nfrom {_ENTRY[command[0]]} import main\ntry:\n    main({command[1:]!r})\n"
        "except SystemExit:\n    pass\n"
        f"print('LOADED', ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env).stdout
    line = next((x for x in reversed(out.splitlines()) if x.startswith("LOADED")), "LOADED ?")
    return [m for m in line[len("LOADED ") :].split(",") if m]


def main() -> None:
    """Print one line per command: median and minimum seconds, and the heavy packages loaded."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per command (default 3)")
    args = parser.parse_args()
    env = dict(os.environ, PFM_OFFLINE="1")
    bindir = Path(sys.executable).parent
    for command in COMMANDS:
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run([str(bindir / command[0]), *command[1:]], capture_output=True, env=env, check=True)
            times.append(time.perf_counter() - start)
        print(
            f"{' '.join(command):24s} median {statistics.median(times):5.2f} s  min {min(times):5.2f} s  "
            f"loads: {', '.join(loaded(command, env)) or '-'}"
        )


if __name__ == "__main__":
    main()
