"""launch/gpu_check.sh rehearsed with DRY=1 on the CPU: what it leaves in OUT, reruns, failures, the summary."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("env", "pytest", "compile", "dropout", "ddp", "mixed", "train", "bench", "data")
MIB = 2**20


def check(out: Path, budget: int = 900, timeout: int = 900, **env) -> subprocess.CompletedProcess:
    """Run the dry rehearsal into ``out`` with this test's interpreter."""
    env = {**os.environ, "DRY": "1", "OUT": str(out), "BUDGET": str(budget), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(ROOT / "launch" / "gpu_check.sh")], env=env, cwd=out.parent,
                          capture_output=True, text=True, timeout=timeout)


def kept(out: Path) -> list[Path]:
    """The files in ``out``, each checked against what a device run keeps: at most 16 MiB, out/a/b/file deep."""
    files = [p for p in out.rglob("*") if not p.is_dir()]
    for p in files:
        assert p.is_file() and not p.is_symlink(), p
        assert p.stat().st_size <= 16 * MIB, p
        assert len(p.relative_to(out).parts) <= 3, p
    return files


def test_failures_are_named_and_a_rerun_of_chosen_stages_keeps_out_small_and_merges_the_results(tmp_path):
    out = tmp_path / "d"
    first = check(out, budget=1, STAGES="pytest compile train")  # the budget is spent by env (or just after)
    assert first.returncode == 1
    summary = (out / "summary.md").read_text()
    assert first.stdout.startswith("# gpu_check") and first.stdout == summary  # the summary is printed last
    for stage in ("pytest", "compile", "train"):
        assert f"- FAIL `{stage}` (not run: the 1 s budget is spent, 0 s)" in summary, summary
    assert re.search(r'rerun them: STAGES="(env )?pytest compile train"', summary), summary
    assert sorted(p.name for p in kept(out)) == ["logs.tar.gz", "results.json", "summary.md"]
    results = json.loads((out / "results.json").read_text())
    assert list(results["stages"]) == ["env", "pytest", "compile", "train"]  # env always comes first
    assert results["stages"]["train"]["status"] == "FAIL"
    again = check(out, STAGES="dropout")  # a later call into the same OUT: merged with the first
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["stages"]) == ["env", "pytest", "compile", "train", "dropout"]
    assert results["torch"] and results["commit"] and results["device"].startswith("cpu")  # env: the header
    assert re.search(r"^- FAIL `train` \(not run: .*\) \(earlier call\)", again.stdout, re.M), again.stdout
    assert re.search(r"^- PASS `dropout` \(\d+ s\): tower 0's", again.stdout, re.M), again.stdout
    assert 'rerun them: STAGES="pytest compile train"' in again.stdout  # what still has to pass
    assert len(kept(out)) == 3
    import tarfile
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["dropout.log", "env.log"]
    unknown = check(tmp_path / "e", STAGES="bench nosuch")
    assert unknown.returncode == 2 and "unknown stage 'nosuch'" in unknown.stderr


def test_the_summary_fits_the_output_tail_when_every_stage_fails_with_long_logs(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    status = []
    for name in STAGES:
        failed = [f"FAILED tests/test_{name}_{i}.py::test_case_{i} - AssertionError: {'x' * 200}" for i in range(40)]
        (work / f"{name}.log").write_text("\n".join(failed + [f"line {i} {'y' * 300}" for i in range(100)]))
        status.append(f"{name}\tFAIL\t10\t20\t1\texit 1")
    (work / "status.tsv").write_text("\n".join(status) + "\n")
    env = {**os.environ, "DRY": "1", "OUT": str(out), "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "launch" / "gpu_check.sh"), "__finish", str(work)], env=env, check=True,
                   timeout=120)
    summary = (out / "summary.md").read_text()
    assert len(summary) <= 12_000
    assert all(f"- FAIL `{name}` (exit 1, 10 s)" in summary for name in STAGES), summary
    assert "tests/test_pytest_0.py::test_case_0" in summary  # failing tests by name, for every stage
    assert f'rerun them: STAGES="{" ".join(STAGES)}"' in summary
    results = json.loads((out / "results.json").read_text())
    assert len(results["stages"]["pytest"]["failed_tests"]) == 40


@pytest.mark.slow
def test_dry_run_passes_every_stage_and_leaves_at_most_eight_small_files(tmp_path):
    out = tmp_path / "d"
    done = check(out)
    summary = (out / "summary.md").read_text()
    assert done.returncode == 0, summary + done.stderr[-3000:]
    assert done.stdout == summary  # the summary is printed last
    for stage in STAGES:
        assert re.search(rf"^- PASS `{stage}` \(\d+ s\)", summary, re.M), f"{stage} did not pass:\n{summary}"
    files = kept(out)
    assert len(files) <= 8 and {"summary.md", "results.json"} <= {p.name for p in files}
    assert len(summary) < 12_000
    results = json.loads((out / "results.json").read_text())
    stages = results["stages"]
    assert stages["compile"]["numbers"]["graphs"]["grouped"] == {"graphs": 1, "breaks": 0, "break_reasons": []}
    assert stages["ddp"]["numbers"]["backend"] == "gloo" and stages["ddp"]["numbers"]["max_abs_diff"] == 0
    assert len(stages["mixed"]["numbers"]["losses_mixed"]) == 2 and stages["mixed"]["numbers"]["max_rel_diff"] < 1e-3
    assert [e["epoch"] for e in stages["train"]["numbers"]["epochs"]] == [1, 2, 3]
    assert stages["data"]["numbers"]["reference_img_s"] > 0
    assert stages["bench"]["status"] == "PASS" and stages["bench"]["numbers"]["rows"][0]["img_s"] > 0
