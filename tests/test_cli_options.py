"""The command line itself: --help and --version without torch, one definition per shared option with its
bounds checked before any work (a table over every subcommand), "did you mean", and printing that survives
an ASCII-only stdout."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twogpu_alexnet.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _run(*args, env=None, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env or ENV, cwd=ROOT, **kw)


TORCH_FREE = [c for c in COMMANDS if c != "kernels"]


@pytest.mark.parametrize("command", [None, *TORCH_FREE])
def test_help_answers_without_importing_torch(command):
    argv = ([command] if command else []) + ["--help"]
    code = ("import sys, runpy; sys.argv = ['twogpu-alexnet', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('twogpu_alexnet', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")
    out = _run("-c", code, *argv)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().endswith("NO-TORCH") and "usage: twogpu-alexnet" in out.stdout


def test_kernels_help_answers_without_importing_torch():
    out = _run("-X", "importtime", "-m", "twogpu_alexnet", "kernels", "--help")
    assert "torch" not in [line.split("|")[-1].strip() for line in out.stderr.splitlines()]


def test_help_and_version_are_fast():
    for argv in (["--help"], ["train", "--help"], ["--version"]):
        t0 = time.perf_counter()
        out = _run("-m", "twogpu_alexnet", *argv)
        elapsed = time.perf_counter() - t0
        assert out.returncode == 0 and elapsed < 3.0, (argv, elapsed)   # about 0.1 s; generous for a busy machine
    assert _run("-m", "twogpu_alexnet", "--version").stdout.strip() == "twogpu-alexnet 0.1.0"


def test_every_command_builds_and_the_top_help_lists_them(capsys):
    parser = build_parser("*")
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"    {name}" in out for name in COMMANDS)


@pytest.mark.parametrize("typo,suggestion", [("trian", "train"), ("evalute", "evaluate"), ("neighbours", "neighbors"),
                                             ("predcit", "predict")])
def test_a_mistyped_command_gets_did_you_mean(capsys, typo, suggestion):
    assert main([typo, "--data", "x"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: unknown command {typo!r}; did you mean {suggestion!r}? the commands are:")
    assert captured.err.count("\n") == 1


def test_an_unknown_word_without_a_close_command_lists_the_commands(capsys):
    assert main(["xyzzy"]) == 2
    assert "did you mean" not in capsys.readouterr().err


def _options(command: str) -> dict:
    """option string -> argparse action, for a command (``bench model`` given as "bench model")."""
    words = command.split()
    parser = build_parser(words[0])
    for word in words:
        sub = next(a for a in parser._actions if a.dest in ("command", "bench"))
        parser = sub.choices.get(word, parser)
    return {s: a for a in parser._actions for s in a.option_strings}


SHARED = {  # option -> the commands that take it; each must be the one shared definition
    "--device": ["evaluate", "predict", "neighbors", "bench model"],
    "--batch-size": ["evaluate", "neighbors", "bench model", "bench options", "bench data"],
    "--workers": ["evaluate", "neighbors", "prepare", "stats"],
}


@pytest.mark.parametrize("option,commands", SHARED.items())
def test_shared_options_have_one_name_default_and_help(option, commands):
    actions = [_options(c)[option] for c in commands]
    if option == "--device":
        assert {a.default for a in actions} == {"auto"}
    if option == "--workers":
        assert {a.default for a in actions} == {None}              # every core
        assert all("-1 = every core" in a.help for a in actions)
    if option == "--batch-size":                                    # --batch is the same option (older lines)
        assert all(_options(c)["--batch"].dest == "batch_size" for c in commands)


# Every numeric option and path a command takes, out of bounds: refused by the option's own definition
# (exit 2, one line naming the option), before anything is read or written.
BAD = [
    (["evaluate", "--checkpoint", "c.pt", "--data", "d", "--workers", "-2"], "--workers must be a whole number"),
    (["evaluate", "--checkpoint", "c.pt", "--data", "d", "--batch-size", "0"], "--batch-size must be a whole number"),
    (["evaluate", "--checkpoint", "c.pt", "--data", "d", "--images", "0"], "--images must be a whole number in 1.."),
    (["evaluate", "--checkpoint", "c.pt", "--data", "d", "--images", "2.5"], "--images must be a whole number"),
    (["neighbors", "--checkpoint", "c", "--data", "d", "--queries", "q", "--out", "o", "--k", "0"], "--k must be"),
    (["neighbors", "--checkpoint", "c", "--data", "d", "--queries", "q", "--out", ""], "--out is empty"),
    (["neighbors", "--checkpoint", "c", "--data", "d", "--queries", "q", "--out", "o", "--batch", "-1"],
     "--batch must be a whole number"),
    (["prepare", "--data", "d", "--out", "s", "--workers", "-3"],
     "--workers must be a whole number (-1 = every core) in -1..1,024, got -3"),
    (["prepare", "--data", "d", "--out", ""], "--out is empty"),
    (["stats", "--data", "d", "--workers", "nope"], "--workers must be a whole number"),
    (["train", "--out", ""], "--out is empty"),
    (["train", "--resume", " "], "--resume is empty"),
    (["predict", "--checkpoint", "c", "x.jpg", "--top", "0"], "--top must be a whole number in 1..1,000"),
    (["export", "--checkpoint", "c", "--out", ""], "--out is empty"),
    (["bench", "model", "--batch", "0"], "--batch must be a whole number in 1..65,536, got 0"),
    (["bench", "options", "--batch-size", "100000"], "--batch-size must be a whole number in 1..65,536"),
    (["bench", "data", "--data", "d", "--images", "0"], "--images must be a whole number"),
    (["bench", "data", "--data", "d", "--workers", "-1"], "--workers must be a whole number in 0..1,024"),
]


@pytest.mark.parametrize("argv,words", BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_out_of_bounds_options_are_one_sentence_before_any_work(tmp_path, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"error: {words}"), captured.err
    assert captured.err.count("\n") == 1 and f"see twogpu-alexnet {argv[0]}" in captured.err
    assert list(tmp_path.iterdir()) == []                            # nothing written


def test_workers_minus_one_means_every_core():
    args = build_parser("prepare").parse_args(["prepare", "--data", "d", "--out", "s", "--workers", "-1"])
    assert args.workers is None
    args = build_parser("evaluate").parse_args(["evaluate", "--checkpoint", "c", "--data", "d", "--workers", "0"])
    assert args.workers == 0


def test_bench_device_errors_speak_cli_words(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    for argv, want in [
        (["bench", "model", "--device", "cuda"], "--device cuda does not exist (this machine has 0 CUDA devices); "
         "use --device cpu"),
        (["bench", "model", "--devices", "cpu", "cuda:1"], "--devices cuda:1 does not exist"),
        (["bench", "options", "--mode", "two-tower", "--devices", "cpu"], "--mode two-tower takes 2 --devices "
         "(tower 0, tower 1), got 1: cpu"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {want}") and err.count("\n") == 1 and "mode=" not in err, err


def test_val_images_is_bounded_like_every_count():
    from twogpu_alexnet import UserError
    from twogpu_alexnet.engine.config import load_config

    with pytest.raises(UserError, match="train.val_images must be 0 or more, got -1"):
        load_config(None, ["train.val_images=-1"])


@pytest.mark.slow
def test_printing_survives_an_ascii_stdout(tmp_path):
    """Emoji class names print as escapes (no UnicodeEncodeError) under PYTHONIOENCODING=ascii."""
    from PIL import Image

    for name in ("caf\u00e9", "\U0001f431"):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (12, 12), (40 * i, 90, 200)).save(tmp_path / "train" / name / f"{i}.png")
    env = {**ENV, "PYTHONIOENCODING": "ascii"}
    out = _run("-m", "twogpu_alexnet", "prepare", "--data", str(tmp_path / "train"), "--out",
               str(tmp_path / "store\u00e9"), "--size", "8", "--workers", "0", env=env)
    assert out.returncode == 0, out.stderr
    assert "UnicodeEncodeError" not in out.stderr and "store\\xe9" in out.stdout
    out = _run("-m", "twogpu_alexnet", "prepare", "--data", str(tmp_path / "train"), "--out",
               str(tmp_path / "store2"), "--size", "8", "--workers", "0", "--json", env=env)
    assert out.returncode == 0 and json.loads(out.stdout)["written"] == 4


HELPS = [c for c in COMMANDS if c not in ("bench", "kernels", "report")] + ["bench model", "bench options",
                                                                               "bench data"]


@pytest.mark.parametrize("command", HELPS)
def test_every_help_shows_its_examples_one_way_and_they_parse(capsys, command):
    import shlex

    assert main([*command.split(), "--help"]) == 0
    text = capsys.readouterr().out
    assert "Example:" not in text and "\nexamples:\n  twogpu-alexnet " in text
    block = text.split("\nexamples:\n", 1)[1]
    examples = [line.strip() for line in block.splitlines() if line.startswith("  twogpu-alexnet ")]
    for line in examples:
        argv = shlex.split(line.split("  #")[0])[1:]
        parser = build_parser(argv[0])
        parser.parse_args(argv)                 # a renamed option fails here
