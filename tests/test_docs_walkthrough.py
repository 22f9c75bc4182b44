"""The README's walk-throughs run as written, command after command on one folder.

test_docs_examples.py parses every documented command and test_docs_commands.py runs each one on its own;
this module runs the two sequences a newcomer types first, in order on one folder, taken from README.md's
text with the extraction helpers there, so a command the README shows that stops working (or stops
writing the file the README names) fails here:

- Quickstart: the demo ``train --out runs/demo``, made tiny with ``--set`` overrides appended, then
  each next-step command on that folder exactly as written (report, kernels, export, resume), each
  checked for exit 0 and for the file it names (``--out``, a ``# runs/...`` comment, the resumed epoch's
  checkpoint).
- Training: ``prepare``, ``train``, ``evaluate`` and ``predict`` on a tiny class-folder set generated
  here at the paths the README names (``imagenette/...``), with ``prepare --size 32`` and the cifar
  preset appended so that it runs in seconds; ``configs/`` is this checkout's.

The demo runs as the user types it, ``python -m twogpu_alexnet`` in a fresh interpreter; the commands
after it run in this process through ``twogpu_alexnet.cli.main`` (a fresh interpreter each would spend
most of the time importing torch). Everything runs on the CPU (CUDA hidden) in a temporary folder, with
this checkout first on the path and no ``TWOGPU_ALEXNET_*`` or torchrun variable from outside.
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_docs_examples import ROOT, cli_argv, commands, fenced_blocks

pytestmark = pytest.mark.slow

README = ROOT / "README.md"
COMMENT_PATH = re.compile(r"#\s*(runs/\S+)")
DEMO_TINY = ["data.synthetic_images=64", "data.synthetic_val_images=32"]
TRAIN_TINY = ["model.preset=cifar", "data.workers=0", "train.epochs=1", "train.batch_size=4",
              "train.max_steps_per_epoch=2", "train.val_images=0", "analysis.kernel_grid_epochs=[]"]


def section_blocks(title: str) -> list[list[tuple[list[str], str | None]]]:
    """Per shell block of README section ``title`` that runs twogpu-alexnet: (argv after ``twogpu-alexnet``,
    the ``# runs/...`` path commented on its line) of each of its commands."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    found = []
    for block in fenced_blocks(text[start:end if end > 0 else None]):
        if block.lang not in ("bash", "sh", "shell", ""):
            continue
        steps = []
        for line in re.sub(r"\\\n", " ", block.code).splitlines():
            comment = COMMENT_PATH.search(line)
            steps += [(args, comment and comment[1]) for argv in commands(line) if (args := cli_argv(argv))]
        if steps:
            found.append(steps)
    assert found, f"README.md's {title} section has no shell block running twogpu-alexnet"
    return found


def value(args: list[str], flag: str) -> str | None:
    return next((b for a, b in zip(args, args[1:], strict=False) if a == flag), None)


def sets(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


OUTSIDE = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def run_cli(args: list[str], cwd: Path, fresh: bool = False) -> str:
    """Run ``twogpu-alexnet ARGS`` in ``cwd`` on the CPU (``fresh``: as ``python -m twogpu_alexnet`` in a new
    interpreter; else in this process, see the :func:`cpu_only` fixture); its stdout, checked to exit 0."""
    if fresh:
        env = {k: v for k, v in os.environ.items() if k not in OUTSIDE and not k.startswith("TWOGPU_ALEXNET_")}
        env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
                   CUDA_VISIBLE_DEVICES="", COLUMNS="200", PYTHONWARNINGS="ignore::DeprecationWarning")
        proc = subprocess.run([sys.executable, "-m", "twogpu_alexnet", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        from twogpu_alexnet.cli import main

        assert Path.cwd() == cwd, "in-process commands run in the test's folder (the cpu_only fixture)"
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(list(args))
        out, err = stdout.getvalue(), stderr.getvalue()
    assert code == 0, f"twogpu-alexnet {shlex.join(args)} exited {code}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    return out


@pytest.fixture
def cpu_only(tmp_path, monkeypatch):
    """This process as a fresh shell would be: in ``tmp_path``, CUDA hidden, no variables of ours or torchrun's."""
    import torch

    for name in list(os.environ):
        if name in OUTSIDE or name.startswith("TWOGPU_ALEXNET_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_quickstart_runs_as_written(cpu_only):
    tmp_path = cpu_only
    steps = [step for block in section_blocks("Quickstart") for step in block]
    (demo, _), *next_steps = steps
    assert demo[:1] == ["train"] and "--config" not in demo and "--resume" not in demo, demo
    assert {args[0] for args, _ in next_steps} >= {"report", "kernels", "export", "train"}, next_steps
    run_cli(demo + sets(DEMO_TINY), tmp_path, fresh=True)  # the first command, exactly as a user runs it
    run = tmp_path / value(demo, "--out")
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "metrics.jsonl").is_file()

    for args, named in next_steps:
        run_cli(args, tmp_path)
        where = f"after twogpu-alexnet {shlex.join(args)}"
        if named:
            assert (tmp_path / named).is_file(), f"{where}: no {named}, which the README names"
        if (out := value(args, "--out")) is not None:
            out = tmp_path / out
            wrote = out.is_file() if out.suffix else out.is_dir() and any(out.glob("*.png"))
            assert wrote, f"{where}: nothing written to {out}"
        if args[:2] == ["train", "--resume"]:
            epochs = int(next(s for s in args if s.startswith("train.epochs=")).partition("=")[2])
            folder = tmp_path / args[2]
            assert (folder / "checkpoints" / f"epoch_{epochs:03d}.pt").is_file(), f"{where}: no epoch {epochs}"
            lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
            assert [x["epoch"] for x in lines if x["kind"] == "epoch"] == list(range(1, epochs + 1))


def test_training_section_runs_on_a_tiny_class_folder_set(cpu_only):
    tmp_path = cpu_only
    steps = [args for args, _ in section_blocks("Training")[0]]
    assert [args[0] for args in steps] == ["prepare", "prepare", "train", "evaluate", "predict"], steps
    *_, predict = steps
    pattern = next(a for a in predict[1:] if "*" in a)
    shown = Path(pattern).parent.name  # the class the README predicts on
    rng = np.random.default_rng(0)
    for args in steps[:2]:
        split = tmp_path / value(args, "--data")
        for c, name in enumerate([shown, "n01440764" if shown != "n01440764" else "n02102040"]):
            (split / name).mkdir(parents=True)
            for i in range(4):
                img = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
                img[..., c] = 220
                Image.fromarray(img).resize((64, 48), Image.BILINEAR).save(
                    split / name / f"{i:02d}{Path(pattern).suffix or '.JPEG'}", "JPEG")

    for args in steps:
        if args[0] == "prepare":
            args = args + ["--size", "32"]  # the cifar preset's size
            run_cli(args, tmp_path)
            assert (tmp_path / value(args, "--out") / "store.json").is_file()
        elif args[0] == "train":
            args = [str(ROOT / a) if a.startswith("configs/") else a for a in args] + sets(TRAIN_TINY)
            run_cli(args, tmp_path)
            assert (tmp_path / value(args, "--out") / "checkpoints" / "best.pt").is_file()
        elif args[0] == "evaluate":
            out = run_cli(args, tmp_path)
            assert "top-1 error" in out and "top-5 error" in out, out
        else:
            images = sorted(glob.glob(pattern, root_dir=tmp_path))
            assert images, pattern
            out = run_cli([a for a in args if a != pattern] + images, tmp_path)
            assert all(image in out for image in images) and shown in out, out
