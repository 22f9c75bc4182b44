"""Training runs on the built-in synthetic data: run folder, modes, exact resume, stops and failures."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from twogpu_alexnet.analysis.epoch_hooks import epoch_hooks
from twogpu_alexnet.cli import main
from twogpu_alexnet.engine.checkpoint import load_checkpoint
from twogpu_alexnet.engine.config import load_config
from twogpu_alexnet.engine.metrics import read_metrics
from twogpu_alexnet.engine.progress import Reporter
from twogpu_alexnet.engine.signals import StopRequest
from twogpu_alexnet.engine.train import train

REPO = Path(__file__).resolve().parents[1]
# a tiny, deterministic run: 4 steps of 8 images per epoch, 16 validation images
TINY = ["data.synthetic_images=32", "data.synthetic_val_images=16", "train.batch_size=8", "train.lr=0.001",
        "train.log_every=2", "train.deterministic=true", "analysis.kernel_grid_epochs=[1]"]


def tiny(*sets):
    return load_config(None, TINY + list(sets))


def _weights(run_dir, name="last.pt"):
    return load_checkpoint(Path(run_dir) / "checkpoints" / name)


@pytest.mark.parametrize("mode, devices", [("grouped", "['cpu']"), ("two-tower", "['cpu', 'cpu']"), ("auto", None)])
def test_two_step_run_in_each_mode_writes_the_run_folder(mode, devices, tmp_path):
    sets = [f"model.mode={mode}", "train.epochs=1", "train.max_steps_per_epoch=2"]
    if devices:
        sets.append(f"model.devices={devices}")
    config = tiny(*sets)
    result = train(config, tmp_path / "run", hooks=epoch_hooks(config))
    assert (result.status, result.exit_code) == ("done", 0)
    assert result.placement.mode == ("grouped" if mode == "auto" and torch.cuda.device_count() < 2 else
                                     mode if mode != "auto" else "two-tower")
    run = tmp_path / "run"
    assert load_config(run / "config.toml") == tiny(*sets)  # the resolved config, readable again
    records = read_metrics(run / "metrics.jsonl")[0]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [s["step"] for s in steps] == [2] and set(steps[0]) == {"kind", "epoch", "step", "loss", "lr", "img_s"}
    assert len(epochs) == 1 and epochs[0]["epoch"] == 1
    e = epochs[0]
    assert 0 <= e["val_top5_error"] <= e["val_top1_error"] <= 1 and e["lr"] == 0.001 and e["skipped"] == 0
    assert 0 <= e["color_score_tower0"] <= 1 and 0 <= e["color_score_tower1"] <= 1
    assert (run / "kernels" / "epoch_001.png").stat().st_size > 0
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["best.pt", "epoch_001.pt", "last.pt"]
    raw = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (raw["preset"], raw["num_classes"], raw["epoch"], raw["batch"], raw["step"]) == ("cifar", 10, 1, 0, 2)
    assert "towers.0.conv1.weight" in raw["model"] and "fc8.weight" in raw["model"]  # canonical two-tower layout
    assert set(raw["optimizer"]["momentum"]) == set(raw["model"])


class _StopAt(Reporter):
    """Asks the run to stop after a given batch, as a SIGTERM would (deterministic, in-process)."""

    def __init__(self, stop: StopRequest, batch: int):
        self.stop, self.batch = stop, batch

    def step(self, epoch, batch, loss, lr, img_s):
        if batch + 1 == self.batch:
            self.stop.request(signal.SIGTERM)


def test_resume_is_bit_identical_to_a_straight_run(tmp_path):
    """2 epochs straight == stop in mid epoch 1, resume to the end of epoch 1, resume (CLI) to epoch 2:
    weights, momentum and the logged losses, bit for bit."""
    straight = train(tiny("train.epochs=2"), tmp_path / "a")
    stop = StopRequest()
    stopped = train(tiny("train.epochs=1"), tmp_path / "b", stop=stop, reporter=_StopAt(stop, 2))
    assert (stopped.status, stopped.exit_code) == ("interrupted", 143)
    mid = _weights(tmp_path / "b")
    assert (mid["epoch"], mid["batch"], mid["step"]) == (0, 3, 3)  # the step in flight finished first
    assert train(tiny("train.epochs=1"), tmp_path / "b", resume=True).status == "done"
    assert main(["train", "--resume", str(tmp_path / "b"), "--set", "train.epochs=2"]) == 0
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert straight.status == "done" and (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 8)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["optimizer"]["momentum"][k], b["optimizer"]["momentum"][k]), k
    ea = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl")[0] if r["kind"] == "epoch"]
    eb = [r for r in read_metrics(tmp_path / "b" / "metrics.jsonl")[0] if r["kind"] == "epoch"]
    assert [r["epoch"] for r in eb] == [1, 2]
    for ra, rb in zip(ea, eb, strict=True):
        assert rb["val_top1_error"] == ra["val_top1_error"] and rb["val_top5_error"] == ra["val_top5_error"]
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-12)  # summed in two parts in run b


def test_trained_on_two_towers_resumes_grouped(tmp_path):
    two = ["model.mode=two-tower", "model.devices=['cpu', 'cpu']", "train.max_steps_per_epoch=2"]
    train(tiny("train.epochs=1", *two), tmp_path / "run")
    result = train(load_config(tmp_path / "run" / "config.toml",
                               ["train.epochs=2", "model.mode=grouped", "model.devices=['cpu']"]),
                   tmp_path / "run", resume=True)
    assert (result.status, result.placement.mode) == ("done", "grouped")
    assert _weights(tmp_path / "run")["step"] == 4 and _weights(tmp_path / "run")["mode"] == "grouped"


@pytest.mark.parametrize("to_group", [False, True], ids=["main-process", "process-group"])
def test_sigterm_saves_exits_143_and_resume_completes(tmp_path, to_group):
    """SIGTERM to the trainer alone, or to its whole process group as a batch scheduler or
    `kill -- -PGID` sends it: the data-loading worker must not die and take the run down with it."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "twogpu_alexnet", "train", "--out", str(run), "--set", "data.synthetic_images=800",
           "--set", "train.batch_size=8", "--set", "train.epochs=1", "--set", "train.log_every=1",
           "--set", "data.synthetic_val_images=16", "--set", "train.lr=0.001",
           "--set", f"data.workers={1 if to_group else 0}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=to_group)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count('"kind": "step"') >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    if to_group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM received: saved" in err and f"--resume {run}" in err
    saved = _weights(run)
    assert saved["epoch"] == 0 and 2 <= saved["batch"] < 100
    assert main(["train", "--resume", str(run), "--set", "train.max_steps_per_epoch=" + str(saved["batch"] + 2)]) == 0
    done = _weights(run)
    assert (done["epoch"], done["step"]) == (1, saved["batch"] + 2)


def test_sigterm_during_validation_saves_at_once_and_the_resumed_run_validates(tmp_path):
    """SIGTERM after the epoch's last step, while 1,500 validation images are being scored: exit 143
    with the training state saved, well before the validation could end; the resumed run validates."""
    run = tmp_path / "run"
    sets = ["data.synthetic_images=64", "train.batch_size=32", "train.epochs=1", "train.log_every=1",
            "data.synthetic_val_images=1500", "train.lr=0.001", "data.workers=0"]
    cmd = [sys.executable, "-m", "twogpu_alexnet", "train", "--out", str(run)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # the last step's line: validation starts next
        metrics = run / "metrics.jsonl"
        if metrics.exists() and '"step": 2,' in metrics.read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    t0 = time.time()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert time.time() - t0 < 20, "the stop waited for the validation"
    assert "SIGTERM received: saved" in err and "before its validation" in err
    saved = _weights(run)
    assert (saved["epoch"], saved["batch"], saved["step"]) == (0, 2, 2)
    assert not [r for r in read_metrics(run / "metrics.jsonl")[0] if r["kind"] == "epoch"]
    assert main(["train", "--resume", str(run)]) == 0
    done = _weights(run)
    assert (done["epoch"], done["batch"], done["step"]) == (1, 0, 2)
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")[0] if r["kind"] == "epoch"] == [1]


def test_nonfinite_loss_stops_naming_the_step_and_the_last_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny("train.epochs=1", "train.max_steps_per_epoch=2"), run)
    code = main(["train", "--resume", str(run), "--set", "train.epochs=2", "--set", "train.lr=1e6"])
    err = capsys.readouterr().err
    assert code == 3
    # step 3, the first at lr 1e6, starts from good weights; step 4 sees the blown-up ones
    assert "the loss became non-finite at step 4 (epoch 2, batch 2)" in err
    assert f"last good checkpoint: {run / 'checkpoints' / 'last.pt'}" in err
    assert _weights(run)["epoch"] == 1  # the good checkpoint is still the newest

    skip = train(tiny("train.epochs=1", "train.max_steps_per_epoch=4", "train.lr=1e6", "train.nonfinite=skip"),
                 tmp_path / "skip")
    assert skip.status == "done" and skip.nonfinite_skipped >= 1
    epoch = [r for r in read_metrics(tmp_path / "skip" / "metrics.jsonl")[0] if r["kind"] == "epoch"][0]
    assert epoch["nonfinite_skipped"] == skip.nonfinite_skipped


def test_cli_refuses_to_overwrite_a_run_and_checks_resume_input(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny("train.epochs=1", "train.max_steps_per_epoch=1"), run)
    assert main(["train", "--out", str(run)] + [a for s in TINY for a in ("--set", s)]) == 2
    assert f"{run} already holds a run; continue it with --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--config", "configs/demo.toml"]) == 2
    (run / "checkpoints" / "last.pt").write_bytes(b"garbage")
    for p in (run / "checkpoints").glob("epoch_*.pt"):
        p.write_bytes(b"garbage")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "error: no readable checkpoint" in err and "Traceback" not in err


def test_json_summary(tmp_path, capsys):
    code = main(["train", "--json", "--out", str(tmp_path / "run")] + [a for s in TINY + ["train.epochs=1",
                "train.max_steps_per_epoch=1"] for a in ("--set", s)])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    assert result["status"] == "done" and result["epochs_run"] == 1 and 0 <= result["val_top1_error"] <= 1


def test_every_check_runs_before_any_data_is_read(tmp_path, monkeypatch):
    """User errors in the config, the devices, the batch split, the data folder or the run folder are
    raised before the trainer opens any data, and leave no file behind."""
    from twogpu_alexnet.engine import train as train_module
    from twogpu_alexnet.engine.distributed import DistContext
    from twogpu_alexnet.errors import UserError

    opened = []
    monkeypatch.setattr(train_module, "open_data", lambda *a, **k: opened.append(a) or pytest.fail("data read"))
    existing = tmp_path / "existing"
    (existing / "checkpoints").mkdir(parents=True)
    (existing / "checkpoints" / "last.pt").write_bytes(b"a run was here")
    cases = [
        (tiny(), tmp_path / "a", {"ctx": DistContext(rank=0, world_size=3, local_rank=0, local_world_size=3)},
         "train.batch_size 8 does not divide across 3 processes"),
        (tiny("data.source=imagefolder", f"data.root={tmp_path / 'nope'}"), tmp_path / "b", {}, "is not a folder"),
        (tiny(), existing, {}, "already holds a run; continue it with --resume"),
        (tiny(), existing, {"resume": True}, "is not a run folder (no config.toml)"),
    ]
    if torch.cuda.device_count() < 2:
        cases.append((tiny("model.mode=two-tower"), tmp_path / "c", {}, "two-tower mode needs two GPUs"))
    if not torch.cuda.is_available():
        cases.append((tiny("speed.amp=fp16"), tmp_path / "d", {}, "speed.amp=fp16 needs a GPU"))
    for config, run_dir, kwargs, words in cases:
        with pytest.raises(UserError) as err:
            train(config, run_dir, **kwargs)
        assert words in str(err.value), str(err.value)
    assert opened == []
    assert not any((tmp_path / name).exists() for name in "abcd")
    assert sorted(p.name for p in existing.rglob("*")) == ["checkpoints", "last.pt"]


def test_resume_falls_back_to_the_previous_good_checkpoint_and_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny("train.epochs=2", "train.max_steps_per_epoch=1"), run)
    folder = run / "checkpoints"
    good = (folder / "epoch_002.pt").read_bytes()
    for name in ("epoch_002.pt", "last.pt"):  # the newest file cut short (last.pt may be a link to it)
        (folder / name).write_bytes(good[: len(good) // 2])
    assert main(["train", "--resume", str(run), "--set", "train.epochs=3"]) == 0
    err = capsys.readouterr().err
    assert "skipped last.pt: " in err and "not a readable checkpoint" in err, err
    assert "resuming from epoch_001.pt" in err, err
    done = _weights(run)
    assert (done["epoch"], done["step"]) == (3, 3)  # epoch 2 trained again from epoch 1's state, then epoch 3
    epochs = [r["epoch"] for r in read_metrics(run / "metrics.jsonl")[0] if r["kind"] == "epoch"]
    assert epochs == [1, 2, 3]  # the lost epoch's line was cut and written again, once



def test_nonfinite_stop_after_a_fallback_resume_names_the_checkpoint_read(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny("train.epochs=2", "train.max_steps_per_epoch=1"), run)
    folder = run / "checkpoints"
    good = (folder / "epoch_002.pt").read_bytes()
    for name in ("epoch_002.pt", "last.pt"):
        (folder / name).write_bytes(good[: len(good) // 2])
    code = main(["train", "--resume", str(run), "--set", "train.epochs=3", "--set", "train.lr=1e6",
                 "--set", "train.max_steps_per_epoch=2"])
    err = capsys.readouterr().err
    assert code == 3 and "resuming from epoch_001.pt" in err, err
    assert f"last good checkpoint: {folder / 'epoch_001.pt'}" in err, err

def test_original_schedule_in_the_loop_changes_lr_conv1_and_colour_noise(tmp_path, notes):
    """Milestones scaled down: every lr / 10 from epoch 2, conv1's lr 0 from epoch 2, colour noise off
    from epoch 2. conv1 must not move in epoch 2 while the other layers do."""
    config = tiny("train.epochs=2", "train.max_steps_per_epoch=2", "schedule.kind=original",
                  "schedule.milestones=[2]", "schedule.conv1_milestones=[2]", "schedule.conv1_factors=[0.0]",
                  "schedule.color_noise_off_epoch=2")
    train(config, tmp_path / "run", reporter=notes)
    folder = tmp_path / "run" / "checkpoints"
    one, two = load_checkpoint(folder / "epoch_001.pt")["model"], load_checkpoint(folder / "epoch_002.pt")["model"]
    for tower in (0, 1):
        assert torch.equal(one[f"towers.{tower}.conv1.weight"], two[f"towers.{tower}.conv1.weight"])
        assert not torch.equal(one[f"towers.{tower}.conv2.weight"], two[f"towers.{tower}.conv2.weight"])
    assert not torch.equal(one["fc8.weight"], two["fc8.weight"])
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")[0] if r["kind"] == "epoch"]
    assert lrs == [pytest.approx(1e-3, rel=1e-12), pytest.approx(1e-4, rel=1e-12)]
    assert "epoch 2: colour noise switched off (original schedule)" in notes.lines


def test_corrupt_images_in_training_are_skipped_and_counted_in_the_epoch_line(tmp_path, data_write_images):
    import numpy as np
    rng = np.random.default_rng(0)
    files = {f"{split}/{cls}/{i}.png": rng.integers(0, 256, (32, 32, 3)) for split in ("train", "val")
             for cls in ("a", "b") for i in range(4)}
    files["train/a/broken.JPEG"] = b"\xff\xd8\xff\xe0 not really a jpeg"
    files["train/b/notes.jpg"] = b"plain text, not an image"
    data_write_images(tmp_path / "data", files)
    lines = []

    class Lines(Reporter):
        def epoch(self, record):
            from twogpu_alexnet.engine.progress import _epoch_line
            lines.append(_epoch_line(record))

    config = load_config(None, ["data.source=imagefolder", f"data.root='{tmp_path / 'data'}'", "data.workers=0",
                                "train.batch_size=5", "train.epochs=1", "train.lr=0.001", "model.mode=grouped",
                                "train.deterministic=true"])
    result = train(config, tmp_path / "run", reporter=Lines())
    assert (result.status, result.exit_code) == ("done", 0)
    epoch = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl")[0] if r["kind"] == "epoch"][0]
    assert epoch["skipped"] == 2
    assert len(lines) == 1 and "2 unreadable images skipped" in lines[0]
