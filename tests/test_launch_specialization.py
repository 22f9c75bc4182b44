"""launch/specialization.sh: the 10 + 5 study in its dry mode on the CPU, and how it continues runs."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "specialization.sh"


def driver():
    spec = importlib.util.spec_from_file_location("specialization_driver", ROOT / "launch" / "specialization.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_dry_study_keeps_the_protocol_shape(tmp_path):
    out = tmp_path / "spec"
    env = {**os.environ, "DRY": "1", "OUT": str(out), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "compare.json").read_text())
    runs = result["runs"]
    assert [Path(r["run"]).name for r in runs] == ([f"cifar-s{s}" for s in range(10)]
                                                    + [f"cifar-onetower-s{s}" for s in range(5)])
    assert [r["control"] for r in runs] == [False] * 10 + [True] * 5
    assert all(r["steps"] == 2 and r["measured"] == "learned" and isinstance(r["split"], bool) for r in runs)
    across = result["across"]
    assert (across["two_tower_runs"], across["control_runs"]) == (10, 5)
    assert across["two_tower_splits"] == sum(r["split"] for r in runs[:10])
    assert 0 <= across["fisher_p"] <= 1 and 0 <= across["split_rate_lower"] <= 1
    assert isinstance(result["conclusion"], str) and "protocol asks" not in result["conclusion"]
    # conv1 of every epoch, kept beside the runs
    for r in runs:
        saved = sorted((out / "conv1" / Path(r["run"]).name).glob("epoch_*.pt"))
        assert [p.name for p in saved] == ["epoch_001.pt"]
        last = torch.load(saved[-1], map_location="cpu", weights_only=True)
        assert last["step"] == 2 and sorted(last["conv1"]) == ["towers.0.conv1.weight", "towers.1.conv1.weight"]
    scores = json.loads((out / "scores.json").read_text())  # per-kernel scores per saved epoch
    assert len(scores) == 15 and all(len(s["learned_scores"][0]) == 48 and s["step"] == 2 for s in scores)
    assert [s["split"] for s in scores] == [r["split"] for r in runs]
    summary = (out / "summary.md").read_text()
    assert "10 two-tower runs, 5 controls, 2 steps each" in summary and result["conclusion"] in summary
    # run again: nothing left to train, the same numbers
    again = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 of 15 runs to train or continue" in again.stderr
    assert json.loads((out / "compare.json").read_text())["runs"] == runs


def test_unfinished_runs_are_continued_and_finished_ones_left_alone(tmp_path):
    d = driver()
    run = tmp_path / "paper-s3"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 7, "batch": 12}, run / "checkpoints" / "last.pt")
    assert d.train_args(run, "paper", 3, 16, 50, [], None) == ["train", "--resume", str(run), "--set",
                                                                "train.epochs=16"]
    torch.save({"epoch": 16, "batch": 0}, run / "checkpoints" / "last.pt")
    assert d.train_args(run, "paper", 3, 16, 50, [], None) is None
    fresh = d.train_args(tmp_path / "new", "paper", 3, 16, 50, ["train.lr=0.01"], None)
    assert fresh[:3] == ["train", "--out", str(tmp_path / "new")]
    assert "train.max_steps_per_epoch=50" in fresh and "train.epochs=16" in fresh and "train.seed=3" in fresh
    assert [n for n, _, _ in d.plan()] == [f"paper-s{s}" for s in range(10)] + [f"paper-onetower-s{s}"
                                                                                  for s in range(5)]


def test_missing_data_is_one_sentence(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "o"), "DATA": str(tmp_path / "none"), "PYTHON": sys.executable}
    env.pop("DRY", None)
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "has no train/ folder" in done.stderr
