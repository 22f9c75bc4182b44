"""launch/gpu_check.sh rehearsed with DRY=1: every stage runs on the CPU in tiny sizes and passes."""
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("env", "pytest", "train", "bench", "dropout", "compile")


def test_dry_run_passes_every_stage_and_writes_the_summary(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "DRY": "1", "OUT": str(out), "BUDGET": "900"}
    done = subprocess.run(["bash", str(ROOT / "launch" / "gpu_check.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=960)
    summary = (out / "summary.md").read_text()
    assert done.returncode == 0, summary + done.stderr[-2000:]
    assert done.stdout.startswith("# gpu_check")  # the summary is printed at the end
    for stage in STAGES:
        assert re.search(rf"^- PASS `{stage}` \(\d+ s\)", summary, re.M), f"{stage} did not pass:\n{summary}"
        assert (out / f"{stage}.log").is_file()
    assert "3 epochs (two-tower bf16+channels_last, resumed grouped, resumed channels_last off)" in summary
    assert "grouped, stock LRN per tower" in summary  # the bench rows are in the summary


def test_a_failing_stage_makes_the_exit_status_nonzero(tmp_path):
    out = tmp_path / "check"
    # a budget too small for the trainer: the stages it cuts are failures, listed as such
    env = {**os.environ, "DRY": "1", "OUT": str(out), "BUDGET": "1"}
    done = subprocess.run(["bash", str(ROOT / "launch" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    summary = (out / "summary.md").read_text()
    assert "- FAIL `compile` (not run: the 1 s budget is spent)" in summary
