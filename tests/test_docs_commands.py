"""Every ``twogpu-alexnet`` command in README.md and docs/*.md runs, on the CPU, on tiny data.

test_docs_examples.py parses each documented command; this module runs each distinct one (a command
shown on several pages runs once) in this process through ``twogpu_alexnet.cli.main``, so a command a
page shows that stops working, or stops writing what the page says it writes, fails here.

- **One sandbox** folder, built once, holds what the pages name: tiny class folders at
  ``imagenette/{train,val}`` (the 10 Imagenette wnids; ``ILSVRC2012``, ``imagenet-sized``, ``panoramas``
  and ``/data/imagenet`` are links to it), ``cifar10/{train,test}/<class>/NNNN.jpg`` (also at
  ``/data/cifar10``), ``photos/*.jpg``, ``photo.jpg``, conv1 weight files of the shapes the pages name
  (``alexnet.pth``, ``caffenet.pth``, ``caffenet_conv1.npy``, ...), plain state dicts (``a.pt`` ...
  ``e.pt``, ``state-dict.pt``) and the run folders no CPU command makes: ``runs/paper`` (10 short epochs
  of ``configs/paper-2gpu.toml`` on the CPU: grouped, fp32, the cifar preset) and the ``kernels
  --compare`` arms (``runs/paper-s0`` ...: links to it; ``runs/onetower-s0`` ...: a ``cifar-onetower``
  run). Absolute paths in a command (``/data/imagenet``, ``/tmp/demo-run``) are moved into the sandbox,
  a synopsis' placeholders filled in (``--preset P``), globs expanded, and ``NAME=value`` before a command
  set for it. No ``TWOGPU_ALEXNET_*`` variable comes in from outside; CUDA is hidden; one torch thread.
- **Order**: the pages' order (README.md, then docs/ by name), except that a command whose input does
  not exist yet waits for the command that makes it (``runs/cifar``, ``weights.pt``, ``store/val``).
- **Small**: every flag a page shows stays; what is added comes after it. ``train`` gets ``--set``
  overrides for the keys it does not set (:data:`TRAIN_TINY`: the cifar preset, 1 step of 2 images
  per epoch, 2 validation images, one epoch, no colour statistics), and a resumed run is extended by
  at most one epoch (``train.epochs`` capped at the epochs done + 1): the pages' counts are for real
  training. ``prepare`` gets ``--size 32`` (the cifar preset's input), the readers ``--workers 0``,
  ``bench`` the cifar preset, batch 2 and one timed step, ``bench data`` ``--seconds 0.2``. The paper
  preset runs where it costs little (``info --preset paper``); a paper-sized checkpoint is 436 MiB.
- **Checked**: exit 0, or for a command a page shows failing (``$ command`` then ``error: ...``) exit 2
  and that very line; what it writes (``--out`` of train, prepare, export, kernels, neighbors; a
  run's ``checkpoints/last.pt``; ``report.html``; a ``# runs/...`` path commented on its line); with
  ``--json`` one JSON object on stdout.
- **Skipped**, each by a rule in :func:`skip_reason` that says why: a CUDA device, a config that trains
  two towers on two GPUs, a 224-pixel preset a train command names itself, a launch script, a command
  named in prose without its required options. The run prints a count per rule, and
  test_the_skip_rules_leave_most_commands_to_run lists every skipped command when the number run falls
  under :data:`FLOOR`, so a rule cannot swallow the rest.

About 30 s on a 2-core CPU, most of it torch's first calls and the checkpoints; hence slow.
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_docs_examples import PAGES, ROOT, check_command, cli_argv, commands_with_env, fenced_blocks, shell_texts

pytestmark = pytest.mark.slow

FLOOR = 70  # commands run; 78 of the 111 distinct commands and launch-script lines today (the rest: rules below)
COMMENT_PATH = re.compile(r"#\s*(runs/\S+)")
WNIDS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
         "n03394916", "n03417042", "n03425413", "n03445777", "n03888605"]  # Imagenette's 10 classes
CIFAR_CLASSES = ["airplane", "cat", "ship"]
TRAIN_TINY = {"model.preset": "cifar", "data.workers": "0", "train.epochs": "1", "train.batch_size": "2",
              "train.max_steps_per_epoch": "1", "train.val_images": "2", "data.synthetic_images": "8",
              "data.synthetic_val_images": "4", "analysis.color_stats": "false", "analysis.kernel_grid_epochs": "[]"}
CPU_STAND_IN = {"model.mode": "grouped", "speed.amp": "none"}  # a two-GPU config on the CPU (the fixture's runs)
SMALL_PRESETS = ("cifar", "cifar-onetower")
PLACEHOLDERS = {"P": "paper", "STORE": "store/train"}  # in a synopsis: `info --preset P`, `stats --data STORE`
ALIASES = {"--batch": "--batch-size"}


@dataclass
class Documented:
    """One distinct command the pages show."""

    argv: tuple[str, ...]      # after ``twogpu-alexnet`` (a launch script: the whole command)
    env: tuple[tuple[str, str], ...]
    cli: bool                  # a twogpu-alexnet command (else a launch/ script)
    complete: bool             # in a code block (False: named in prose)
    pages: list[str] = field(default_factory=list)
    error: str | None = None   # the ``error: ...`` line a page shows it printing
    named: str | None = None   # a ``# runs/...`` path commented on its line

    def __str__(self):
        env = "".join(f"{k}={shlex.quote(v)} " for k, v in self.env)
        return env + shlex.join((["twogpu-alexnet"] if self.cli else []) + list(self.argv))


def shown_errors(text: str) -> dict[tuple[str, ...], str]:
    """{argv: the ``error:`` line printed under it} for each ``$ twogpu-alexnet ...`` line of a page's blocks
    followed by an error line."""
    found = {}
    for block in fenced_blocks(text):
        lines = block.code.splitlines()
        for line, after in zip(lines, lines[1:], strict=False):
            if line.startswith("$ ") and after.startswith("error: "):
                for _, argv in commands_with_env(line[2:]):
                    if (args := cli_argv(argv)) is not None:
                        found[tuple(args)] = after
    return found


def documented() -> list[Documented]:
    """Every distinct twogpu-alexnet command and launch script the pages show, in the pages' order."""
    found: dict[tuple, Documented] = {}
    for page in PAGES:
        text = page.read_text()
        errors = shown_errors(text)
        for shell, complete in shell_texts(text):
            for line in re.sub(r"\\\n", " ", shell).splitlines():
                comment = COMMENT_PATH.search(line)
                for env, argv in commands_with_env(line):
                    args = cli_argv(argv)
                    if args is None and not argv[0].startswith("launch/"):
                        continue
                    key = (tuple(args if args is not None else argv), tuple(env.items()))
                    doc = found.setdefault(key, Documented(key[0], key[1], args is not None, complete))
                    doc.complete |= complete
                    doc.pages += [page.name] if page.name not in doc.pages else []
                    doc.error = doc.error or errors.get(key[0])
                    doc.named = doc.named or (comment and comment[1])
    return list(found.values())


# --- the rules: what is skipped, and why ------------------------------------------------------------------

LAUNCH = "a launch/ script (torchrun and GPUs, or a study of hours)"
CUDA = "needs a CUDA device"
TWO_GPUS = "trains two towers on two GPUs"
BIG_PRESET = "trains the 224-pixel preset it names"
PROSE = "named in prose without its required options"
RULES = (LAUNCH, CUDA, TWO_GPUS, BIG_PRESET, PROSE)


def option_values(args, flag: str) -> list[str]:
    """The value of every ``flag VALUE`` in ``args``."""
    return [b for a, b in zip(args, args[1:], strict=False) if a == flag]


def overrides(args) -> dict[str, str]:
    """The ``--set KEY=VALUE`` of ``args`` (a later one wins)."""
    return dict(s.partition("=")[::2] for s in option_values(args, "--set"))


def skip_reason(doc: Documented) -> str | None:
    """Why ``doc`` is not run here (one of :data:`RULES`, with the detail), or None: it runs."""
    if not doc.cli:
        return (f"{LAUNCH}: test_docs_examples.py checks its --set keys, tests/test_launch_*.py its DRY=1 "
                "rehearsal")
    args = doc.argv
    if any(re.fullmatch(r"cuda(:\d+)?", t) for t in args):
        return CUDA
    if args[:1] == ("train",):
        from twogpu_alexnet.engine.config import load_config
        from twogpu_alexnet.errors import UserError

        config = option_values(args, "--config")
        with contextlib.suppress(UserError):  # a config that does not load: running the command says so
            if config and load_config(ROOT / config[-1], option_values(args, "--set")).model.mode == "two-tower":
                return f"{TWO_GPUS} ({config[-1]} sets model.mode = \"two-tower\")"
        preset = overrides(args).get("model.preset")
        if preset is not None and preset not in SMALL_PRESETS:
            return (f"{BIG_PRESET} (model.preset={preset}): one checkpoint is about 0.5 GB; "
                    "test_docs_examples.py loads its config")
    if not doc.complete and "arguments are required" in (check_command(["twogpu-alexnet", *args]) or ""):
        return PROSE
    return None


# --- making a command small ------------------------------------------------------------------------------

def has(args, flag: str) -> bool:
    return any(ALIASES.get(a, a) == flag for a in args)


def append_missing(args: list[str], *pairs: tuple[str, str | None]) -> list[str]:
    """``args`` with each ``flag [value]`` appended that ``args`` does not already give."""
    for flag, value in pairs:
        if not has(args, flag):
            args = args + [flag] + ([value] if value is not None else [])
    return args


def sets(keys: dict[str, str]) -> list[str]:
    return [a for k, v in keys.items() for a in ("--set", f"{k}={v}")]


def epochs_done(run: Path) -> int:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return max((x["epoch"] for x in lines if x.get("kind") == "epoch"), default=0)


def moved(token: str, sandbox: Path, previous: str | None) -> str:
    """``token`` with an absolute path moved into the sandbox and a synopsis placeholder filled in."""
    if previous is not None and previous.startswith("-") and token in PLACEHOLDERS:
        return PLACEHOLDERS[token]
    key, eq, value = token.rpartition("=")
    if value.startswith("/") and (not eq or re.fullmatch(r"[\w.]+", key)):
        return f"{key}{eq}{sandbox / value.lstrip('/')}"
    return token


def moved_args(doc: Documented, sandbox: Path) -> list[str]:
    """``doc``'s argv with absolute paths moved into the sandbox, placeholders filled in and (predict) globs
    expanded, as a shell would."""
    args = [moved(t, sandbox, p) for t, p in zip(doc.argv, (None, *doc.argv), strict=False)]
    if args[:1] == ["predict"]:
        args = [a for p in args for a in ((sorted(glob.glob(p)) or [p]) if "*" in p else [p])]
    return args


def small(doc: Documented, sandbox: Path) -> list[str]:
    """The argv that runs ``doc`` here: its own, paths moved into the sandbox, with the small settings appended."""
    from twogpu_alexnet.engine.config import load_config

    args = moved_args(doc, sandbox)
    command = args[:2] if args[:1] == ["bench"] else args[:1]
    if command == ["train"]:
        args = [str(ROOT / a) if a.startswith("configs/") else a for a in args]
        given = overrides(args)
        if (run := option_values(args, "--resume")):
            done = next(map(int, option_values(args, "--from-epoch")), None) or epochs_done(Path(run[-1]))
            saved = load_config(Path(run[-1]) / "config.toml", []).train.epochs
            if int(given.get("train.epochs", saved)) > done + 1:
                args += sets({"train.epochs": str(done + 1)})
        else:
            args += sets({k: v for k, v in TRAIN_TINY.items() if k not in given})
    elif command == ["prepare"] and has(args, "--data"):
        args = append_missing(args, ("--size", "32"), ("--workers", "0"))
    elif command in (["stats"], ["evaluate"], ["neighbors"]):
        args = append_missing(args, ("--workers", "0"))
    elif command in (["bench", "model"], ["bench", "options"]):
        args = append_missing(args, ("--preset", "cifar"), ("--batch-size", "2"), ("--warmup", "0"),
                              ("--repeats", "1"), ("--steps", "1"))
        if command == ["bench", "options"]:
            args = append_missing(args, ("--only", "channels_last"))
    elif command == ["bench", "data"]:
        args = append_missing(args, ("--seconds", "0.2"))
    return args


def inputs(args: list[str]) -> list[str]:
    """The files and folders ``args`` reads, as the real parser reads them (a command waits until they exist)."""
    from twogpu_alexnet.cli import build_parser

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ns = build_parser().parse_args(args)
    except SystemExit:  # --version, or a command the parser refuses: running it says so
        return []
    names = []
    for attr in ("checkpoint", "data", "run_dir", "resume", "weights", "queries", "compare"):
        value = getattr(ns, attr, None)
        names += value if isinstance(value, list) else [value] if value else []
    if ns.command == "predict":
        names += ns.images
    if ns.command == "prepare" and ns.verify and not ns.data:
        names.append(ns.out)
    if ns.command == "train":
        names += [v for k, v in overrides(args).items() if k == "data.root"]
    return [str(n) for n in names]


def written(args: list[str], runs_before: set[str]) -> list[str]:
    """What ``args`` should have written that is not there."""
    out = next(iter(option_values(args, "--out")), None)
    expected = []
    if args[:1] == ["train"]:
        run = option_values(args, "--resume") or ([out] if out else None)
        if run is None:  # no --out: a new runs/<date>-<time>-<pid>
            new = sorted(set(os.listdir("runs")) - runs_before)
            run = [f"runs/{new[-1]}" if new else "runs/<no new run folder>"]
        expected += [f"{run[0]}/checkpoints/last.pt", f"{run[0]}/metrics.jsonl"]
    elif args[:1] == ["prepare"] and out:
        expected.append(f"{out}/store.json")
    elif args[:1] == ["export"]:
        expected.append(out)
    elif args[:1] == ["kernels"] and out and not has(args, "--compare"):
        expected.append(f"{out}/kernels.png")
    elif args[:1] == ["neighbors"]:
        expected.append(f"{out}/neighbors.png")
    elif args[:1] == ["report"]:
        expected.append(f"{out or option_values(args, '--run')[0] + '/report'}/report.html")
    return [p for p in expected if not Path(p).is_file()]


# --- the sandbox ----------------------------------------------------------------------------------------

def write_images(folder: Path, classes, per_class: int, shape, suffix: str, rng, start: int = 0) -> None:
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            img[..., c % 3] = 40 + 20 * c
            Image.fromarray(img).save(folder / name / f"{i:04d}{suffix}", "JPEG", quality=90)


def link_run(src: Path, dst: Path) -> None:
    """A copy of run folder ``src`` at ``dst``: checkpoints hard-linked (written by rename, never in place)."""
    shutil.copytree(src, dst, copy_function=lambda s, d: os.link(s, d) if s.endswith(".pt") else shutil.copy2(s, d),
                    ignore=shutil.ignore_patterns(".lock"))


def call(args: list[str]) -> tuple[int, str, str]:
    """Run ``twogpu-alexnet ARGS`` here; (exit code, stdout, stderr)."""
    from twogpu_alexnet.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def checked_call(args: list[str]) -> None:
    code, out, err = call(args)
    assert code == 0, f"twogpu-alexnet {shlex.join(args)} exited {code}\n{out[-2000:]}\n{err[-2000:]}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    import torch

    from twogpu_alexnet import build_model

    root = tmp_path_factory.mktemp("docs-commands")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("TWOGPU_ALEXNET_") or name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT"):
                mp.delenv(name)
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        mp.setenv("COLUMNS", "200")
        mp.setattr(torch.cuda, "is_available", lambda: False)  # also where CUDA was set up before this module
        mp.setattr(torch.cuda, "device_count", lambda: 0)
        mp.chdir(root)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny tensors: a second thread only waits (and spins) on a busy machine
        rng = np.random.default_rng(0)
        write_images(root / "imagenette" / "train", WNIDS, 2, (40, 50), ".JPEG", rng)
        write_images(root / "imagenette" / "val", WNIDS, 1, (50, 40), ".JPEG", rng)
        for name in ("ILSVRC2012", "imagenet-sized", "panoramas", "data/imagenet"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(root / "imagenette", target_is_directory=True)
        write_images(root / "cifar10" / "train", CIFAR_CLASSES, 2, (32, 32), ".jpg", rng)
        for i, name in enumerate(CIFAR_CLASSES):      # test/cat/0001.jpg, test/ship/0002.jpg, as the pages name
            write_images(root / "cifar10" / "test", [name], 1, (32, 32), ".jpg", rng, start=[3, 1, 2][i])
        (root / "data" / "cifar10").symlink_to(root / "cifar10", target_is_directory=True)
        (root / "photos").mkdir()
        for name in ("photos/tench.jpg", "photos/church.jpg", "photo.jpg"):
            Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(root / name, "JPEG")
        gen = torch.Generator().manual_seed(0)
        for name in ("alexnet.pth", "alexnet-owt-7be5be79.pth"):   # torchvision's alexnet: conv1 is features.0
            torch.save({"features.0.weight": torch.randn(64, 3, 11, 11, generator=gen),
                        "features.0.bias": torch.zeros(64), "classifier.6.weight": torch.randn(10, 16, generator=gen)},
                       root / name)
        conv1 = torch.randn(96, 3, 11, 11, generator=gen)       # CaffeNet's conv1
        torch.save({"conv1.weight": conv1, "conv2.weight": torch.randn(256, 48, 5, 5, generator=gen)},
                   root / "caffenet.pth")
        np.save(root / "caffenet_conv1.npy", conv1.numpy())
        for seed, name in enumerate(("a.pt", "b.pt", "c.pt", "d.pt", "e.pt", "state-dict.pt")):
            torch.manual_seed(seed)
            torch.save(build_model("cifar", num_classes=10).state_dict(), root / name)

        # runs no CPU command makes: the paper-2gpu run (10 epochs, for --from-epoch 10) and the --compare arms
        tiny = {**TRAIN_TINY, **CPU_STAND_IN, "train.epochs": "10"}
        checked_call(["train", "--config", str(ROOT / "configs/paper-2gpu.toml"), "--set",
                      f"data.root={root / 'data/imagenet'}", "--out", "runs/paper", *sets(tiny)])
        checked_call(["train", "--out", "runs/onetower-s0", *sets({**TRAIN_TINY, "model.preset": "cifar-onetower"})])
        for name in ("runs/paper-s0", "runs/paper-s1", "paper-s0", "paper-s1"):
            link_run(root / "runs/paper", root / name)
        for name in ("runs/paper-onetower-s4", "paper-onetower-s0"):
            link_run(root / "runs/onetower-s0", root / name)
        yield root
        torch.set_num_threads(threads)


# --- the tests ------------------------------------------------------------------------------------------

def test_documented_commands_run_on_the_cpu(sandbox, monkeypatch, capsys):
    docs = documented()
    pending, problems, ran = [doc for doc in docs if skip_reason(doc) is None], [], 0
    while pending:
        # the first command whose inputs exist; else the first, which then fails naming what is missing
        doc = next((d for d in pending if all(Path(p).exists() for p in inputs(moved_args(d, sandbox)))), pending[0])
        pending.remove(doc)
        args = small(doc, sandbox)
        where = f"{doc} ({', '.join(doc.pages)})\n    ran as: twogpu-alexnet {shlex.join(args)}"
        if absent := [p for p in inputs(args) if not Path(p).exists()]:
            problems.append(f"{where}\n    reads {', '.join(absent)}: no documented command makes it and the sandbox "
                            "does not have it")
            continue
        runs_before = set(os.listdir("runs"))
        with monkeypatch.context() as mp:
            for name, value in doc.env:
                mp.setenv(name, value)
            code, out, err = call(args)
        ran += 1
        tail = f"\n    stdout: {out[-1500:]}\n    stderr: {err[-1500:]}"
        if doc.error is not None:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            if code != 2 or last != doc.error:
                problems.append(f"{where}\n    the page shows it failing with\n    {doc.error}\n    it exited {code}: "
                                f"{last}")
            continue
        if code != 0:
            problems.append(f"{where}\n    exited {code}{tail}")
            continue
        if "--json" in args:
            try:
                assert isinstance(json.loads(out), dict)
            except (ValueError, AssertionError):
                problems.append(f"{where}\n    --json: stdout is not one JSON object{tail}")
        missing = written(args, runs_before) + ([doc.named] if doc.named and not Path(doc.named).exists() else [])
        if missing:
            problems.append(f"{where}\n    did not write {', '.join(missing)}{tail}")
    reasons = [reason for doc in docs if (reason := skip_reason(doc)) is not None]
    counts = {rule: sum(r.startswith(rule) for r in reasons) for rule in RULES}
    with capsys.disabled():
        print(f"\n{ran} documented commands ran; skipped: " + "; ".join(f"{n} {r}" for r, n in counts.items() if n))
    assert not problems, f"{len(problems)} of {ran} documented commands failed:\n" + "\n".join(problems)


def test_the_skip_rules_leave_most_commands_to_run():
    docs = documented()
    skipped = [(str(d), reason) for d in docs if (reason := skip_reason(d)) is not None]
    listing = "\n".join(f"  {d}  <- {r}" for d, r in skipped)
    assert len(docs) - len(skipped) >= FLOOR, (f"only {len(docs) - len(skipped)} of {len(docs)} documented commands "
                                               f"run (floor {FLOOR}); skipped:\n{listing}")
    assert all(r.startswith(RULES) for _, r in skipped), listing


def test_the_rules_and_the_small_settings(tmp_path, monkeypatch):
    doc = Documented(("train", "--config", "configs/paper-2gpu.toml", "--set", "data.root=/d", "--out", "runs/x"), (),
                     True, True)
    assert "two GPUs" in skip_reason(doc)
    doc = Documented(("bench", "model", "--device", "cuda:0"), (), True, True)
    assert skip_reason(doc) == "needs a CUDA device"
    doc = Documented(("train", "--config", "configs/paper-half-1gpu.toml", "--set", "model.preset=original-half"),
                     (), True, True)
    assert "original-half" in skip_reason(doc)
    doc = Documented(("bench", "model", "--device", "cpu", "--batch", "8"), (), True, True)
    assert small(doc, Path("/s")) == ["bench", "model", "--device", "cpu", "--batch", "8", "--preset", "cifar",
                                      "--warmup", "0", "--repeats", "1", "--steps", "1"]
    doc = Documented(("evaluate", "--checkpoint", "a.pt", "--data", "/data/imagenet/val"), (), True, True)
    assert small(doc, Path("/s")) == ["evaluate", "--checkpoint", "a.pt", "--data", "/s/data/imagenet/val",
                                      "--workers", "0"]
    doc = Documented(("train", "--config", "configs/cifar10.toml", "--set", "data.root=/data/cifar10",
                      "--set", "train.batch_size=8"), (), True, True)
    args = small(doc, Path("/s"))
    assert args[:5] == ["train", "--config", str(ROOT / "configs/cifar10.toml"), "--set", "data.root=/s/data/cifar10"]
    assert overrides(args)["train.batch_size"] == "8" and overrides(args)["train.epochs"] == "1"
    assert small(Documented(("info", "--preset", "P"), (), True, False), Path("/s")) == ["info", "--preset", "paper"]
    assert skip_reason(Documented(("report",), (), True, False)) == PROSE
    assert skip_reason(Documented(("report", "--run", "r"), (), True, True)) is None

    monkeypatch.chdir(tmp_path)  # a resumed run goes on for one more epoch at most
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.toml").write_text('[data]\nsource = "synthetic"\n[train]\nepochs = 3\n')
    (tmp_path / "r" / "metrics.jsonl").write_text('{"kind": "epoch", "epoch": 1}\n{"kind": "step", "epoch": 2}\n')
    resume = ("train", "--resume", "r")
    assert small(Documented(resume, (), True, True), tmp_path) == [*resume, "--set", "train.epochs=2"]
    assert small(Documented((*resume, "--from-epoch", "2"), (), True, True), tmp_path) == [*resume, "--from-epoch", "2"]
    longer = (*resume, "--set", "train.epochs=100")
    assert small(Documented(longer, (), True, True), tmp_path) == [*longer, "--set", "train.epochs=2"]
