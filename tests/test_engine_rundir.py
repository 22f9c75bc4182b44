"""The run folder's one owner: what --out accepts, the lock of a running trainer, default names and
the leftovers of killed trainers, all settled before any data is read."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from twogpu_alexnet.cli import main
from twogpu_alexnet.engine import rundir
from twogpu_alexnet.engine.config import load_config, to_toml
from twogpu_alexnet.engine.rundir import RunFolder
from twogpu_alexnet.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.synthetic_images=16", "data.synthetic_val_images=8", "train.batch_size=8", "train.epochs=1",
        "train.max_steps_per_epoch=1", "train.lr=0.001", "analysis.color_stats=false"]
ARGS = [a for s in TINY for a in ("--set", s)]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def no_data(monkeypatch):
    """Fails the test if the trainer opens any data."""
    from twogpu_alexnet.engine import train as train_module

    monkeypatch.setattr(train_module, "open_data", lambda *a, **k: pytest.fail("data was read"))


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_trainer_on_a_running_folder_is_one_sentence_naming_the_holder(tmp_path, capsys):
    """Another process holds the run folder; a second `train --out` and a `--resume` of it both refuse
    (exit 2) and name the holder's pid. Once the holder is gone, the folder can be used."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom twogpu_alexnet.engine.rundir import RunFolder\n"
         "with RunFolder(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n", str(run)],
        stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "--out", str(run)] + ARGS) == 2
        err = capsys.readouterr().err
        assert f"error: {run} is in use by another trainer (pid {holder.pid} on " in err, err
        assert "choose another --out" in err and "Traceback" not in err
        (run / "config.toml").write_text(to_toml(load_config(None, TINY)))
        assert main(["train", "--resume", str(run)]) == 2
        assert f"is in use by another trainer (pid {holder.pid} on " in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--out", str(run)] + ARGS) == 0  # the kernel dropped the dead holder's lock


def test_the_lock_is_held_for_the_whole_run_and_released_after(tmp_path):
    run = tmp_path / "run"
    with RunFolder(run):
        with (pytest.raises(UserError, match=rf"{run} is in use by another trainer \(pid {os.getpid()} on "),
              RunFolder(run)):
            pass
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # the refused one removed nothing
    with RunFolder(run):  # released
        pass


def test_out_refuses_a_folder_that_is_not_a_run(tmp_path, capsys, no_data):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "config.toml").write_text('title = "my own project"\n')
    (mine / "metrics.jsonl").write_text('{"mine": 1}\n')
    (mine / "sub" / "notes.txt").write_text("keep me")
    before = _tree(mine)
    assert main(["train", "--out", str(mine)] + ARGS) == 2
    err = capsys.readouterr().err
    assert f"error: --out {mine} is a folder with other files (config.toml, metrics.jsonl, sub), not a run of " \
           "twogpu-alexnet; choose a new or empty folder" in err, err
    assert _tree(mine) == before and sorted(p.name for p in mine.iterdir()) == ["config.toml", "metrics.jsonl", "sub"]


def test_out_takes_a_new_or_empty_folder_or_a_run_without_checkpoints(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    started = tmp_path / "started"  # a run killed before its first checkpoint
    started.mkdir()
    (started / "config.toml").write_text(to_toml(load_config(None, TINY)))
    (started / "metrics.jsonl").write_text("")
    for folder in (tmp_path / "new" / "deeper", empty, started):
        rundir.check(folder, resume=False)
        with RunFolder(folder) as f:
            assert f.path == folder and (folder / ".lock").read_text().startswith(f"pid {os.getpid()} on ")


@pytest.mark.parametrize("case", ["below-a-file", "a-file", "read-only-fs", "not-writable"])
def test_out_that_cannot_be_written_is_refused_before_any_data_is_read(tmp_path, monkeypatch, no_data, case):
    from twogpu_alexnet.engine.train import train

    (tmp_path / "file").write_text("a file")
    out = tmp_path / "file" / "run" if case == "below-a-file" else tmp_path / "file" if case == "a-file" \
        else tmp_path / "ro" / "run"
    (tmp_path / "ro").mkdir()
    if case == "read-only-fs":
        real = os.statvfs  # as a read-only mount reports itself
        monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_flag=os.ST_RDONLY)
                            if Path(p) == tmp_path / "ro" else real(p))
    if case == "not-writable":
        if os.geteuid() == 0:
            pytest.skip("root writes to any folder")
        (tmp_path / "ro").chmod(0o500)
    words = {"below-a-file": f"--out {out} cannot be written: {out} is below {tmp_path / 'file'}, which is a file",
             "a-file": f"--out {out} is a file; choose a folder",
             "read-only-fs": f"--out {out} cannot be written: {tmp_path / 'ro'} is on a read-only file system",
             "not-writable": f"--out {out} cannot be written: {tmp_path / 'ro'} is not writable"}[case]
    with pytest.raises(UserError) as err:
        train(load_config(None, TINY), out)
    assert words in str(err.value), str(err.value)
    assert not (tmp_path / "ro" / "run").exists()


def test_a_folder_made_for_a_run_that_fails_before_it_starts_is_removed_again(tmp_path, monkeypatch):
    from twogpu_alexnet.engine import train as train_module

    def refuse(*args, **kwargs):
        raise UserError("no data here")

    monkeypatch.setattr(train_module, "open_data", refuse)
    with pytest.raises(UserError, match="no data here"):
        train_module.train(load_config(None, TINY), tmp_path / "runs" / "a")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()  # a folder the user made stays, without the lock file
    with pytest.raises(UserError, match="no data here"):
        train_module.train(load_config(None, TINY), tmp_path / "mine")
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]


def test_default_run_names_differ_for_trainers_started_at_once(tmp_path):
    script = "from twogpu_alexnet.engine.rundir import default_run_dir\nprint(default_run_dir())"
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                              env=_env()) for _ in range(2)]
    names = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert names[0] != names[1] and all(n.startswith("runs/") for n in names), names


def test_stale_temporary_checkpoints_of_dead_trainers_are_removed_when_a_run_opens(tmp_path, notes):
    from twogpu_alexnet.engine.train import train

    run = tmp_path / "run"
    train(load_config(None, TINY), run)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # exited and reaped: no such process now
    folder = run / "checkpoints"
    (folder / f".epoch_002.pt.tmp-{dead_pid}").write_bytes(b"x" * 1000)  # kill -9 while writing
    (folder / f".last.pt.tmp-{dead_pid}").write_bytes(b"x" * 10)
    (folder / f".best.pt.tmp-{os.getpid()}").write_bytes(b"alive")  # a running process's file stays
    result = train(load_config(run / "config.toml", ["train.epochs=2"]), run, resume=True, reporter=notes)
    assert result.status == "done"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [".best.pt.tmp-" + str(os.getpid()), "best.pt", "epoch_001.pt", "epoch_002.pt", "last.pt"])
    assert any(line.startswith(f"removed 2 temporary file(s) left by a stopped trainer in {folder} "
                               f"(.epoch_002.pt.tmp-{dead_pid}, .last.pt.tmp-{dead_pid}; 0.0 MB)")
               for line in notes.lines), notes.lines
