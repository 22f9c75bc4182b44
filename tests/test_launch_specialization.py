"""launch/specialization.sh in its dry mode: every stage (subset, three runs, --compare) on the CPU."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "launch" / "specialization.sh"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_dry_mode_writes_run_folders_and_compare_json(tmp_path):
    out = tmp_path / "spec"
    env = {**os.environ, "DRY": "1", "OUT": str(out), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "compare.json").read_text())
    runs = result["runs"]
    assert [Path(r["run"]).name for r in runs] == ["cifar-s0", "cifar-s1", "cifar-onetower-s0"]
    assert [r["control"] for r in runs] == [False, False, True]
    assert result["two_tower_runs"] == 2 and result["control_runs"] == 1
    assert all(r["measured"] == "learned" and r["steps"] == 2 for r in runs)
    for r in runs:
        ckpt = torch.load(Path(r["run"]) / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        assert sorted(ckpt["conv1_init"]) == ["towers.0.conv1.weight", "towers.1.conv1.weight"]
    # the subset: 8 train and 4 val images in each of the 3 generated classes
    assert len(list((out / "data" / "train").rglob("*.png"))) == 24
    assert len(list((out / "data" / "val").rglob("*.png"))) == 12
    assert "two-tower runs that split:" in (out / "compare.txt").read_text()


def test_missing_data_is_one_sentence(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "o"), "DATA": str(tmp_path / "none"), "PYTHON": sys.executable}
    env.pop("DRY", None)
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "has no train/ folder" in done.stderr
