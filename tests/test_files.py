"""The one writer (twogpu_alexnet/files.py): nothing written through a planted link, files whole or not at
all, and a full, read-only or forbidden disk as one sentence that leaves every older file as it was."""
import errno
import os
import shutil

import pytest
import torch

from twogpu_alexnet import files
from twogpu_alexnet.cli import main
from twogpu_alexnet.errors import UserError

# a one-epoch synthetic run of one step, as CLI arguments (the Figure-3 grid of every epoch asked for)
_TINY = [a for s in ("data.synthetic_images=16", "data.synthetic_val_images=8", "train.batch_size=8",
                     "train.epochs=1", "train.max_steps_per_epoch=1", "analysis.kernel_grid_epochs=[1, 2]")
         for a in ("--set", s)]
_OUTSIDE = "someone else's file\n"


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A finished one-epoch run (resumed by the tests with train.epochs=2 after planting a link)."""
    run = tmp_path_factory.mktemp("base") / "run"
    assert main(["train", "--out", str(run)] + _TINY) == 0
    return run


def _copy(run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(run, dest, symlinks=True)
    return dest


def _outside(tmp_path, content=_OUTSIDE):
    path = tmp_path / "outside.txt"
    path.write_text(content)
    return path


@pytest.mark.parametrize("name", ["config.toml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/epoch_002.pt",
                                  "kernels/epoch_002.png"])
def test_resume_writes_nothing_through_a_link_planted_in_the_run_folder(one_epoch_run, tmp_path, capsys, name):
    run = _copy(one_epoch_run, tmp_path)
    planted = run / name
    # the outside file holds what the program would read there (a config, a checkpoint), so the run gets as
    # far as writing
    content = planted.read_bytes() if planted.exists() else _OUTSIDE.encode()
    outside = tmp_path / "outside"
    outside.write_bytes(content)
    planted.unlink(missing_ok=True)
    planted.symlink_to(outside)
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert f"error: {planted} is a symbolic link (to {outside}); refusing to write" in err, err
    assert "Traceback" not in err
    assert outside.read_bytes() == content


@pytest.mark.parametrize("name", [".config.toml.tmp", ".metrics.jsonl.tmp", "checkpoints/.last.pt.tmp-1"])
def test_the_temporary_names_are_not_predictable(one_epoch_run, tmp_path, name):
    """Links at the names older versions wrote first are neither written through nor needed."""
    run = _copy(one_epoch_run, tmp_path)
    outside = _outside(tmp_path)
    (run / name).symlink_to(outside)
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 0
    assert outside.read_text() == _OUTSIDE
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2


def test_a_link_at_best_pt_is_refused(one_epoch_run, tmp_path):
    from twogpu_alexnet.engine.checkpoint import save_run_checkpoint

    run = _copy(one_epoch_run, tmp_path)
    outside = _outside(tmp_path)
    (run / "checkpoints" / "best.pt").unlink()
    (run / "checkpoints" / "best.pt").symlink_to(outside)
    payload = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    with pytest.raises(UserError, match="best.pt is a symbolic link"):
        save_run_checkpoint(run, payload, epoch_done=2, is_best=True, keep_last=3)
    assert outside.read_text() == _OUTSIDE


def test_a_link_at_the_lock_is_refused_and_the_outside_file_untouched(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    outside = _outside(tmp_path)
    (run / ".lock").symlink_to(outside)
    assert main(["train", "--out", str(run)] + _TINY) == 2
    err = capsys.readouterr().err
    assert f"error: {run / '.lock'} is a symbolic link (to {outside}); refusing to write the lock through it" in err
    assert outside.read_text() == _OUTSIDE


def test_a_folder_at_metrics_jsonl_is_one_sentence_on_resume(one_epoch_run, tmp_path, capsys):
    run = _copy(one_epoch_run, tmp_path)
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert f"error: {run / 'metrics.jsonl'} is a folder, but the program writes the metrics there" in err, err
    assert "Traceback" not in err


def test_report_writes_nothing_through_a_link(one_epoch_run, tmp_path, capsys):
    run = _copy(one_epoch_run, tmp_path)
    outside = _outside(tmp_path)
    (run / "report").mkdir()
    (run / "report" / "report.html").symlink_to(outside)
    assert main(["report", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'report' / 'report.html'} is a symbolic link" in err, err
    assert outside.read_text() == _OUTSIDE


def test_kernels_writes_nothing_through_a_link(one_epoch_run, tmp_path, capsys):
    out = tmp_path / "k"
    out.mkdir()
    outside = _outside(tmp_path)
    (out / "kernels.png").symlink_to(outside)
    assert main(["kernels", "--checkpoint", str(one_epoch_run / "checkpoints" / "last.pt"), "--out", str(out)]) == 2
    assert f"{out / 'kernels.png'} is a symbolic link" in capsys.readouterr().err
    assert outside.read_text() == _OUTSIDE


def test_store_and_cache_files_are_written_by_the_one_writer(tmp_path):
    from twogpu_alexnet.data.stats import StatsAccumulator, save_stats
    from twogpu_alexnet.data.store import _write

    outside = _outside(tmp_path)
    for name in ("store.json", "index.pt", "stats.pt"):
        (tmp_path / name).symlink_to(outside)
    with pytest.raises(UserError, match="store.json is a symbolic link"):
        _write(tmp_path / "store.json", {"kind": "twogpu-alexnet store"})
    with pytest.raises(UserError, match="index.pt is a symbolic link"):
        _write(tmp_path / "index.pt", {"label": torch.zeros(2)})
    acc = StatsAccumulator(4)
    acc.add(torch.zeros(3, 4, 4, dtype=torch.uint8))
    acc.add(torch.full((3, 4, 4), 9, dtype=torch.uint8))
    with pytest.raises(UserError, match="stats.pt is a symbolic link"):
        save_stats(acc.finish(), tmp_path / "stats.pt")
    assert outside.read_text() == _OUTSIDE


# ---------------------------------------------------------------------------------------------
# Disks that fill up, turn read-only, or forbid writing


class _FillingFile:
    """A file on a disk that has ``room`` bytes left: later writes fail as a real full disk does."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def _disk_with_room(monkeypatch, room: int):
    real = files.os.fdopen
    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode="r", *a, **k: _FillingFile(real(fd, mode, *a, **k), room))


def test_torch_zip_writer_on_a_full_disk_is_the_one_sentence(tmp_path, monkeypatch):
    """torch's zip writer turns the failed write into 'RuntimeError: ... unexpected pos'; the writer says
    'the disk is full' instead, removes its temporary file and leaves the old file."""
    target = tmp_path / "x.pt"
    files.write_atomic(target, lambda f: torch.save({"a": torch.ones(3)}, f))
    before = target.read_bytes()
    _disk_with_room(monkeypatch, 2000)  # the zip header fits, the tensor's bytes do not
    with pytest.raises(UserError) as err:
        files.write_atomic(target, lambda f: torch.save({"a": torch.zeros(100_000)}, f), what="a checkpoint")
    assert str(err.value) == ("could not write a checkpoint (the disk is full); the files written before are "
                              "unchanged: free space and run the command again")
    assert os.listdir(tmp_path) == ["x.pt"] and target.read_bytes() == before


@pytest.mark.parametrize("code, words", [(errno.EROFS, "is on a read-only file system"),
                                         (errno.EACCES, "no permission to write in"),
                                         (errno.ENOSPC, "the disk is full")])
def test_each_refusal_of_the_disk_is_one_sentence_and_removes_the_temporary_file(tmp_path, monkeypatch, code, words):
    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(UserError) as err:
        files.write_atomic(target, "new\n", then="continue with --resume RUN")
    assert str(err.value).startswith(f"could not write {target} (") and words in str(err.value)
    assert str(err.value).endswith("and continue with --resume RUN")
    assert os.listdir(tmp_path) == ["metrics.jsonl"] and target.read_text() == "old\n"


def test_a_folder_gone_read_only_is_one_sentence_and_releasing_the_lock_is_no_error(tmp_path, monkeypatch, capsys):
    """The first write of a new run fails on a read-only file system: the trainer removes what it made, and
    the lock file it cannot remove is no second error (no OSError traceback)."""
    run = tmp_path / "run"
    real_unlink = os.unlink

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    def unlink(path, *args, **kwargs):  # the temporary files of the writer go; the lock cannot
        if str(path).endswith(".lock"):
            read_only()
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(files.os, "replace", read_only)
    monkeypatch.setattr(os, "unlink", unlink)
    assert main(["train", "--out", str(run)] + _TINY) == 2
    err = capsys.readouterr().err
    assert f"error: could not write {run / 'config.toml'} ({run} is on a read-only file system)" in err, err
    assert "Traceback" not in err


def test_prepare_on_a_full_disk_is_one_sentence_and_leaves_no_temporary_files(tmp_path, monkeypatch, capsys,
                                                                              data_write_images):
    import numpy as np

    rng = np.random.default_rng(0)
    data_write_images(tmp_path / "src", {f"{c}/{i}.jpg": rng.integers(0, 255, (20, 20, 3)) for c in "ab"
                                         for i in range(2)})
    real_replace = files.os.replace

    def full(src, dst, *args, **kwargs):
        if str(dst).endswith(".data"):  # the first shard's images are written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(files.os, "replace", full)
    store = tmp_path / "store"
    assert main(["prepare", "--data", str(tmp_path / "src"), "--out", str(store), "--size", "32",
                 "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert (f"error: could not write store file {store / 'shards' / '00000.data'} (the disk is full); the files "
            "written before are unchanged: free space and run the same prepare command again") in err, err
    assert "Traceback" not in err
    assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")]


def test_a_hard_link_at_the_lock_or_the_metrics_is_not_written_into(tmp_path):
    outside = _outside(tmp_path)
    os.link(outside, tmp_path / ".lock")
    with pytest.raises(UserError, match=r"\.lock has other names \(hard links\); refusing to write the lock into it"):
        files.open_lock_file(tmp_path / ".lock")
    os.link(outside, tmp_path / "metrics.jsonl")
    with pytest.raises(UserError, match="metrics.jsonl has other names"):
        files.append_text(tmp_path / "metrics.jsonl", "{}\n")
    assert outside.read_text() == _OUTSIDE


def test_files_get_the_usual_permissions_not_mkstemps(tmp_path):
    files.write_atomic(tmp_path / "a.toml", "x = 1\n")
    (tmp_path / "plain").write_text("x = 1\n")
    assert (tmp_path / "a.toml").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
