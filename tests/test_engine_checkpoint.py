"""Atomic checkpoint writes, loading with weights_only, fallback to the previous good checkpoint."""
import os
import random

import numpy as np
import pytest
import torch

from twogpu_alexnet.engine import checkpoint as ckpt
from twogpu_alexnet.errors import UserError


def _payload(value: float) -> dict:
    return {"model": {"fc8.weight": torch.full((3, 2), value)}, "epoch": int(value), "batch": 0, "step": 7,
            "optimizer": {}, "scheduler": {}, "rng": [], "config": {}, "best_val_top1_error": 0.5}


def test_save_and_load_round_trip_with_weights_only(tmp_path):
    ckpt.save_run_checkpoint(tmp_path, _payload(1.0), epoch_done=1, is_best=True, keep_last=2)
    for name in ("last.pt", "best.pt", "epoch_001.pt"):
        loaded = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert loaded["format"] == ckpt.FORMAT and torch.equal(loaded["model"]["fc8.weight"], torch.full((3, 2), 1.0))


def test_keep_last_and_best(tmp_path):
    for epoch in range(1, 6):
        ckpt.save_run_checkpoint(tmp_path, _payload(float(epoch)), epoch_done=epoch, is_best=epoch == 2, keep_last=2)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "epoch_004.pt", "epoch_005.pt", "last.pt"]
    assert ckpt.load_checkpoint(folder / "best.pt")["epoch"] == 2
    assert ckpt.load_checkpoint(folder / "last.pt")["epoch"] == 5
    # a mid-epoch save replaces last.pt only; the epoch file it linked to is untouched
    ckpt.save_run_checkpoint(tmp_path, _payload(6.5), epoch_done=None, is_best=False, keep_last=2)
    assert ckpt.load_checkpoint(folder / "last.pt")["epoch"] == 6
    assert ckpt.load_checkpoint(folder / "epoch_005.pt")["epoch"] == 5


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_run_checkpoint(tmp_path, _payload(1.0), epoch_done=1, is_best=True, keep_last=3)
    real_save = torch.save

    def crash_halfway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half the bytes are on disk when the process dies
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_run_checkpoint(tmp_path, _payload(2.0), epoch_done=None, is_best=True, keep_last=3)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_run_checkpoint(tmp_path, _payload(2.0), epoch_done=2, is_best=True, keep_last=3)
    monkeypatch.undo()
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "epoch_001.pt", "last.pt"]  # no temp files left
    for name in ("last.pt", "best.pt"):
        assert ckpt.load_checkpoint(folder / name)["epoch"] == 1
    payload, path, notes = ckpt.load_latest(tmp_path)
    assert (payload["epoch"], path.name, notes) == (1, "last.pt", [])


def test_truncated_last_falls_back_to_previous_epoch_and_says_so(tmp_path):
    for epoch in (1, 2):
        ckpt.save_run_checkpoint(tmp_path, _payload(float(epoch)), epoch_done=epoch, is_best=False, keep_last=3)
    folder = tmp_path / "checkpoints"
    # the disk damages the newest file: last.pt and epoch_002.pt share it (a hard link)
    data = (folder / "epoch_002.pt").read_bytes()
    (folder / "last.pt").unlink()
    (folder / "last.pt").write_bytes(data[: len(data) // 3])
    (folder / "epoch_002.pt").write_bytes(data[: len(data) // 3])
    payload, path, notes = ckpt.load_latest(tmp_path)
    assert (payload["epoch"], path.name) == (1, "epoch_001.pt")
    assert len(notes) == 2 and notes[0].startswith("skipped last.pt: ") and "not a readable checkpoint" in notes[0]


def test_foreign_and_missing_files_are_user_errors(tmp_path):
    (tmp_path / "notes.pt").write_text("these are not weights")
    with pytest.raises(UserError, match="notes.pt is not a readable checkpoint"):
        ckpt.load_checkpoint(tmp_path / "notes.pt")
    torch.save({"conv1.weight": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="not a twogpu-alexnet training checkpoint"):
        ckpt.load_checkpoint(tmp_path / "plain.pt")
    torch.save({"model": _Unsafe()}, tmp_path / "pickle.pt")  # arbitrary pickled objects are refused
    with pytest.raises(UserError, match="pickle.pt holds pickled Python objects, which are not loaded"):
        ckpt.load_checkpoint(tmp_path / "pickle.pt")
    with pytest.raises(UserError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(UserError, match="holds no checkpoints/last.pt"):
        ckpt.load_latest(tmp_path)


class _Unsafe:
    pass


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = ckpt.rng_state()
    ckpt.atomic_save({"rng": state}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.randn(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (random.random(), np.random.randn(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_atomic_save_leaves_no_temp_files(tmp_path):
    ckpt.atomic_save({"a": torch.ones(2)}, tmp_path / "x.pt")
    ckpt.atomic_save({"a": torch.zeros(2)}, tmp_path / "x.pt")
    assert os.listdir(tmp_path) == ["x.pt"]
    assert torch.equal(torch.load(tmp_path / "x.pt", weights_only=True)["a"], torch.zeros(2))


# a two-epoch synthetic run of one step each, as CLI arguments
_TINY_RUN = [a for s in ("data.synthetic_images=16", "data.synthetic_val_images=8", "train.batch_size=8",
                         "train.epochs=2", "train.max_steps_per_epoch=1", "analysis.color_stats=false")
             for a in ("--set", s)]


def _full_disk(monkeypatch, after_calls: int = 0):
    """torch.save writes part of the file, then the disk is full (as on a real ENOSPC)."""
    import errno

    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) <= after_calls:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("epoch_done", [None, 2], ids=["mid-epoch", "end-of-epoch"])
def test_a_full_disk_while_writing_is_one_sentence_and_loses_nothing(tmp_path, monkeypatch, epoch_done):
    ckpt.save_run_checkpoint(tmp_path, _payload(1.0), epoch_done=1, is_best=True, keep_last=3)
    folder = tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    _full_disk(monkeypatch)
    with pytest.raises(UserError) as err:
        ckpt.save_run_checkpoint(tmp_path, _payload(2.0), epoch_done=epoch_done, is_best=True, keep_last=3)
    assert str(err.value) == (f"could not write a checkpoint in {folder} (the disk is full); the previous checkpoints "
                              f"are unchanged: free space and continue with --resume {tmp_path}")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temporary file left, nothing replaced


def test_a_training_run_that_fills_the_disk_exits_2_and_resumes(tmp_path, monkeypatch, capsys):
    from twogpu_alexnet.cli import main

    run = tmp_path / "run"
    _full_disk(monkeypatch, after_calls=1)  # epoch 1's checkpoint fits, epoch 2's does not
    assert main(["train", "--out", str(run)] + _TINY_RUN) == 2
    err = capsys.readouterr().err
    assert f"error: could not write a checkpoint in {run / 'checkpoints'} (the disk is full)" in err, err
    assert "Traceback" not in err
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    monkeypatch.undo()  # space freed
    assert main(["train", "--resume", str(run)]) == 0
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2


def test_a_full_disk_while_appending_metrics_is_one_sentence_and_resumes(tmp_path, monkeypatch, capsys):
    import errno

    from twogpu_alexnet import files
    from twogpu_alexnet.cli import main

    run = tmp_path / "run"
    real_open, appends = files.os.open, []

    def open_(file, flags, *args, **kwargs):  # epoch 1's lines fit, then the disk is full
        if str(file).endswith("metrics.jsonl") and flags & os.O_APPEND:
            appends.append(1)
            if len(appends) > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(files.os, "open", open_)
    assert main(["train", "--out", str(run)] + _TINY_RUN) == 2
    err = capsys.readouterr().err
    assert f"error: could not write {run / 'metrics.jsonl'} (the disk is full)" in err, err
    assert "Traceback" not in err
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    monkeypatch.undo()  # space freed
    assert main(["train", "--resume", str(run)]) == 0
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2


def test_checkpoint_names_share_no_bytes_and_a_manual_roll_back_changes_no_other_file(tmp_path):
    for epoch in (1, 2):
        ckpt.save_run_checkpoint(tmp_path, _payload(float(epoch)), epoch_done=epoch, is_best=True, keep_last=3)
    folder = tmp_path / "checkpoints"
    names = ("last.pt", "best.pt", "epoch_001.pt", "epoch_002.pt")
    assert all(os.stat(folder / n).st_nlink == 1 for n in names)  # no hard links
    assert len({os.stat(folder / n).st_ino for n in names}) == 4
    before = {n: (folder / n).read_bytes() for n in names}
    # the roll-back a user does by hand: copy in place over last.pt (cp keeps last.pt's inode)
    with open(folder / "last.pt", "r+b") as f:
        f.truncate(0)
        f.write(before["epoch_001.pt"])
    for n in ("best.pt", "epoch_001.pt", "epoch_002.pt"):
        assert (folder / n).read_bytes() == before[n], n
    assert ckpt.load_checkpoint(folder / "last.pt")["epoch"] == 1


def test_resume_from_a_chosen_epoch(tmp_path, capsys):
    from twogpu_alexnet.cli import main

    run = tmp_path / "run"
    assert main(["train", "--out", str(run)] + _TINY_RUN) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--from-epoch", "1", "--set", "train.epochs=2"]) == 0
    err = capsys.readouterr().err
    assert "rolling back to the end of epoch 1 (epoch_001.pt)" in err, err
    last = ckpt.load_checkpoint(run / "checkpoints" / "last.pt")
    assert (last["epoch"], last["step"]) == (2, 2)  # epoch 2 trained again from epoch 1's state
    from twogpu_alexnet.engine.metrics import read_metrics

    epochs = [r["epoch"] for r in read_metrics(run / "metrics.jsonl")[0] if r["kind"] == "epoch"]
    assert epochs == [1, 2]  # the abandoned epoch 2's line was replaced, not repeated
    assert main(["train", "--resume", str(run), "--from-epoch", "7"]) == 2
    err = capsys.readouterr().err
    assert f"error: --from-epoch 7: {run / 'checkpoints'} has no epoch_007.pt (epochs kept: 1, 2)" in err, err
    assert main(["train", "--from-epoch", "1"]) == 2
    assert "--from-epoch 1 needs --resume DIR" in capsys.readouterr().err
