"""launch/specialization.sh: the 10 + 5 study in its dry mode on the CPU, and how it continues runs."""
import contextlib
import importlib.util
import io
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


@pytest.mark.slow
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


TINY = ["data.synthetic_images=16", "data.synthetic_val_images=8", "train.batch_size=4", "train.epochs=1",
        "train.max_steps_per_epoch=1", "data.workers=0", "analysis.kernel_grid_epochs=[]"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real one-epoch run folder (the demo's synthetic data, one step): last.pt and epoch_001.pt."""
    from twogpu_alexnet.cli import main

    run = tmp_path_factory.mktemp("study") / "paper-s3"
    args = ["train", "--out", str(run), "--json"] + [a for s in TINY for a in ("--set", s)]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(args) == 0
    return run


def _with_epoch(src: Path, dst: Path, epoch: int, batch: int) -> None:
    payload = torch.load(src, map_location="cpu", weights_only=True)
    torch.save({**payload, "epoch": epoch, "batch": batch}, dst)


def test_unfinished_runs_are_continued_and_finished_ones_left_alone(trained_run, tmp_path):
    d = driver()
    run = tmp_path / "paper-s3"
    shutil.copytree(trained_run, run)
    last = run / "checkpoints" / "last.pt"
    _with_epoch(last, last, 7, 12)
    assert d.train_args(run, "paper", 3, 16, 50, [], None) == ["train", "--resume", str(run), "--set",
                                                                "train.epochs=16"]
    _with_epoch(last, last, 16, 0)
    assert d.train_args(run, "paper", 3, 16, 50, [], None) is None
    fresh = d.train_args(tmp_path / "new", "paper", 3, 16, 50, ["train.lr=0.01"], None)
    assert fresh[:3] == ["train", "--out", str(tmp_path / "new")]
    assert "train.max_steps_per_epoch=50" in fresh and "train.epochs=16" in fresh and "train.seed=3" in fresh
    assert [n for n, _, _ in d.plan()] == [f"paper-s{s}" for s in range(10)] + [f"paper-onetower-s{s}"
                                                                                  for s in range(5)]


def test_a_damaged_checkpoint_is_what_the_trainer_would_skip_not_a_traceback(trained_run, tmp_path, capsys,
                                                                             monkeypatch):
    """last.pt damaged: the study goes on from the newest readable epoch file, as `train --resume` does, with a
    note; nothing readable: one sentence, and the run is kept (never deleted); no checkpoint written yet (only
    a temporary file): the run starts over."""
    from twogpu_alexnet.errors import UserError

    d = driver()
    run = tmp_path / "paper-s3"
    shutil.copytree(trained_run, run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a full disk or a copy cut short
    assert d.run_state(run) == (1, 0)
    assert "skipped last.pt" in capsys.readouterr().err
    assert d.train_args(run, "paper", 3, 1, 1, [], None) is None  # epoch 1 of 1 is done (epoch_001.pt)
    (run / "checkpoints" / "epoch_001.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="no readable checkpoint in .*the study does not delete a run with "
                                        f"checkpoints: move {run} away"):
        d.train_args(run, "paper", 3, 1, 1, [], None)
    assert last.is_file()
    capsys.readouterr()
    monkeypatch.setenv("OUT", str(tmp_path))  # the study itself: one sentence, exit 2, the run kept
    (tmp_path / "runs").mkdir()
    shutil.move(run, tmp_path / "runs" / "paper-s0")
    assert d.main() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert (tmp_path / "runs" / "paper-s0" / "checkpoints" / "last.pt").is_file()
    for path in (tmp_path / "runs" / "paper-s0" / "checkpoints").glob("*.pt"):
        path.rename(path.with_name(f".{path.name}.x1y2z3.tmp"))  # what a kill during the first save leaves
    args = d.train_args(tmp_path / "runs" / "paper-s0", "paper", 3, 1, 1, [], None)
    assert args[:2] == ["train", "--out"] and not (tmp_path / "runs" / "paper-s0").exists()


def test_conv1_copies_skip_damaged_epoch_files_and_go_through_the_one_writer(trained_run, tmp_path):
    d = driver()
    run, out = tmp_path / "paper-s3", tmp_path / "out"
    shutil.copytree(trained_run, run)
    good = run / "checkpoints" / "epoch_001.pt"
    (run / "checkpoints" / "epoch_002.pt").write_bytes(good.read_bytes()[:500])  # being written, or damaged
    assert d.save_conv1(run, out) == 1
    saved = torch.load(out / "conv1" / run.name / "epoch_001.pt", map_location="cpu", weights_only=True)
    source = torch.load(good, map_location="cpu", weights_only=True)
    for key, value in saved["conv1"].items():
        assert torch.equal(value, source["model"][key])
    assert (saved["step"], saved["epoch"]) == (source["step"], source["epoch"])
    assert not list((out / "conv1" / run.name).glob(".*.tmp"))
    from twogpu_alexnet.errors import UserError

    outside = tmp_path / "outside.pt"  # a link planted at the copy's name, to a file not there yet
    (out / "conv1" / run.name / "epoch_001.pt").unlink()
    (out / "conv1" / run.name / "epoch_001.pt").symlink_to(outside)
    with pytest.raises(UserError, match="epoch_001.pt is a symbolic link .*refusing to write conv1 copy"):
        d.save_conv1(run, out)
    assert not outside.exists()


@pytest.mark.parametrize(("setting", "problem"), [({"STEPS": "ten"}, "STEPS='ten' is not a whole number"),
                                                  ({"STEPS": "10", "EPOCHS": "3"}, "STEPS=10 is not a multiple"),
                                                  ({"PARALLEL": "0"}, "PARALLEL='0' is not a whole number")])
def test_bad_settings_are_one_sentence(setting, problem, tmp_path, monkeypatch, capsys):
    d = driver()
    monkeypatch.setenv("OUT", str(tmp_path / "o"))
    for k, v in setting.items():
        monkeypatch.setenv(k, v)
    assert d.main() == 2
    err = capsys.readouterr().err
    assert problem in err and len(err.strip().splitlines()) == 1, err


def test_missing_data_is_one_sentence(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "o"), "DATA": str(tmp_path / "none"), "PYTHON": sys.executable}
    env.pop("DRY", None)
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "has no train/ folder" in done.stderr
