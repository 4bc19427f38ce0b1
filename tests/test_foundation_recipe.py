"""The foundation-model recipe end to end (slow): benchmarks/foundation/tadpole.py in its quick code path, at an
even smaller size given by its flags (data files -> pretrain -> pfm export -> fine-tune from the export and from
scratch -> pfm evaluate -> table and plot), in a temporary folder."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "benchmarks" / "foundation" / "tadpole.py"

pytestmark = pytest.mark.slow


def _table_columns() -> tuple[str, ...]:
    """TABLE_COLUMNS of benchmarks/foundation/_common.py (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("foundation_common", RECIPE.with_name("_common.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.TABLE_COLUMNS


def test_tadpole_recipe_scores_both_arms_and_the_baselines(tmp_path: Path) -> None:
    out = tmp_path / "recipe"
    cmd = [sys.executable, str(RECIPE), "--quick", "--out", str(out), "--n", "2", "--seeds", "0",
           "--pretrain-steps", "4", "--finetune-steps", "3", "--frames", "4", "--test", "2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    with open(out / "table.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == _table_columns()
    windows = ["1", "2-3"]  # 4 frames: 3 rollout steps, windows 1,2-4,5-8 cut where the rollouts end
    for arm in ("pretrained", "scratch", "persistence", "mean"):
        mine = {r["window"]: r for r in rows if r["arm"] == arm}
        assert sorted(mine) == sorted(windows), (arm, sorted(mine))
        for row in mine.values():
            assert row["N"] == "2" and row["seeds"] == "1"
            assert math.isfinite(float(row["mean"])) and math.isfinite(float(row["median"])), row
            assert float(row["mean"]) > 0
    # both arms were trained and scored from their own checkpoints; the pretrained one from the export
    for arm in ("pretrained", "scratch"):
        record = json.loads((out / "eval" / f"{arm}_n2_s0" / "metrics.json").read_text())
        assert record["model_class"] == "TadpoleDynamics" and record["num_trajectories"] == 2
    assert "init_from=" in (out / "runs" / "pretrained_n2_s0" / "overrides.txt").read_text()
    assert "init_from=" not in (out / "runs" / "scratch_n2_s0" / "overrides.txt").read_text()
    assert (out / "export" / "model.safetensors").is_file()
    assert (out / "error_vs_n.png").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "load" in summary and "| pretrained | 2 |" in summary
