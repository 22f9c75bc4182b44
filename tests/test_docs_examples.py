"""The examples in README.md and docs/*.md run as written, so they cannot rot.

- Every ```python block runs on the CPU, each in a fresh namespace in an empty folder, with GPU
  device names ("cuda", "cuda:0", "cuda:1", ...) swapped for "cpu". A block that cannot run on a CPU
  by nature (it needs ImageNet, say) is preceded by ``<!-- no-test: the reason -->``, so the
  exemption is visible in the page.
- Every ``twogpu-alexnet`` command in a code block or an inline code span is parsed by the real
  argparse parser with abbreviations off, so a renamed command or flag fails here; ``train``'s
  ``--config`` and ``--set`` are loaded as the trainer loads them, and the configs/ and launch/ files
  a command names exist (and a launch script's ``--set`` keys load). ``[--option VALUE]`` in a
  synopsis counts as the option, ``{a,b}`` as its first choice. In an output block (``text``,
  ``console``, or any block with ``$ `` prompts) the commands are the lines after a prompt.
- Every such command also runs, on the CPU with tiny data, in test_docs_commands.py (those needing a
  GPU, and the launch scripts, are skipped there by rules that say why); the README's Quickstart and
  Training walk-throughs run once more, in order on one folder, in test_docs_walkthrough.py.
- Relative links point to files that exist; the README stays under 12 KB, shows every command and
  CI's test command, and every public Python name is in the README or docs/api.md.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 12 * 1024

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
NO_TEST = re.compile(r"<!--\s*no-test:\s*(?P<reason>.*?)\s*-->")
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
GPU_NAME = re.compile(r"""(["'])cuda(?::\d+)?\1""")
REPO_FILE = re.compile(r"^(?:launch|configs|docs)/[\w./-]+\.(?:sh|py|toml|md)$")
LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)\s]+)\)")
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    no_test: str | None  # the reason given in a preceding <!-- no-test: ... --> comment


def fenced_blocks(text: str, page: str = "page") -> list[Block]:
    """The fenced code blocks of a markdown text, in order."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        close = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        prev = i - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = NO_TEST.search(lines[prev]) if prev >= 0 else None
        start, body, i = i + 1, [], i + 1
        while i < len(lines) and not close.match(lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        blocks.append(Block(page, start, m["lang"].lower(), "\n".join(body) + "\n", marker and marker["reason"]))
        i += 1
    return blocks


def prose_and_indented_code(text: str) -> tuple[list[str], list[str]]:
    """(lines outside fenced blocks, indented code blocks as texts)."""
    outside, blocks, current, in_fence, fence, prev_blank = [], [], [], False, "", True
    for line in text.splitlines():
        m = FENCE.match(line)
        if in_fence:
            in_fence = not re.match(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$", line)
            continue
        if m:
            in_fence, fence = True, m["fence"]
            continue
        if line.startswith("    ") and line.strip() and (prev_blank or current):
            current.append(line[4:])
        else:
            if current and line.strip():
                blocks.append("\n".join(current))
                current = []
            outside.append(line)
        prev_blank = not line.strip()
    if current:
        blocks.append("\n".join(current))
    return outside, blocks


def shell_texts(text: str) -> list[tuple[str, bool]]:
    """Every piece of a page that may hold a shell command, as (text, complete).

    Code blocks hold complete commands (in ``text``/``console`` blocks only the lines after a ``$ ``
    prompt; Python, TOML and JSON blocks none); inline code in prose may name a command without its
    required options (`twogpu-alexnet report`), so ``complete`` is False there.
    """
    texts = []
    for block in fenced_blocks(text):
        prompts = [line[2:] for line in block.code.splitlines() if line.startswith("$ ")]
        if block.lang in ("text", "console") or prompts:  # output: the commands are the lines after a "$ " prompt
            texts.append(("\n".join(prompts), True))
        elif block.lang not in ("python", "py", "toml", "json"):
            texts.append((block.code, True))
    outside, indented = prose_and_indented_code(text)
    texts += [(code, True) for code in indented]
    texts += [(span, False) for line in outside for span in INLINE.findall(line)]
    return texts


def commands(shell: str) -> list[list[str]]:
    """Each simple command of a shell text as argv (env assignments and ``time`` dropped)."""
    return [argv for _, argv in commands_with_env(shell)]


def commands_with_env(shell: str) -> list[tuple[dict[str, str], list[str]]]:
    """Each simple command of a shell text as (the ``NAME=value`` assignments before it, argv)."""
    shell = re.sub(r"\\\n", " ", shell)
    shell = re.sub(r"\[(--?[^\[\]]*)\]", r"\1", shell)  # synopsis: [--json] -> --json
    shell = re.sub(r"\{([\w.:-]+)(?:,[\w.:-]+)+\}", r"\1", shell)  # choices: {none,bf16} -> none
    found = []
    for line in shell.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split, lex.commenters = True, "#"
        try:
            tokens = list(lex)
        except ValueError:  # unbalanced quotes: prose, not a command
            continue
        segment: list[str] = []
        for token in [*tokens, ";"]:
            if token in SEPARATORS:
                env = {}
                while segment and (re.match(r"^[A-Za-z_]\w*=", segment[0]) or segment[0] == "time"):
                    word = segment.pop(0)
                    if word != "time":
                        name, _, value = word.partition("=")
                        env[name] = value
                argv = [t[:-3] if t.endswith("...") else t for t in segment if t != "..."]
                if argv:
                    found.append((env, argv))
                segment = []
            else:
                segment.append(token)
    return found


def cli_argv(argv: list[str]) -> list[str] | None:
    """The arguments of a ``twogpu-alexnet`` (or ``python3 -m twogpu_alexnet``) command, else None."""
    if argv and argv[0] == "twogpu-alexnet":
        return argv[1:]
    if len(argv) >= 3 and argv[0] in ("python", "python3") and argv[1:3] == ["-m", "twogpu_alexnet"]:
        return argv[3:]
    return None


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


def _parser() -> argparse.ArgumentParser:
    from twogpu_alexnet.cli import build_parser

    parser = build_parser()
    _no_abbreviations(parser)
    return parser


def check_command(argv: list[str], complete: bool = True) -> str | None:
    """None if ``argv`` is a valid command line as the docs show it, else what is wrong.

    ``complete=False``: a command named in prose; missing required options are fine there.
    """
    from twogpu_alexnet.engine.config import load_config
    from twogpu_alexnet.errors import UserError

    for token in argv:
        for path in (token, token.partition("=")[2]):
            if REPO_FILE.match(path) and not (ROOT / path).is_file():
                return f"names {path}, which does not exist"
    if (args := cli_argv(argv)) is None:
        if not argv[0].startswith("launch/"):
            return None
        # a launch script passes --set on to train: check the keys
        overrides = [value for flag, value in zip(argv, argv[1:], strict=False) if flag == "--set"]
        try:
            load_config(None, overrides)
        except UserError as exc:
            return f"config: {exc}"
        return None
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parsed = _parser().parse_args(args)
    except SystemExit as exc:
        message = err.getvalue().strip().splitlines()[-1] if exc.code else None
        if message and not complete and "the following arguments are required" in message:
            return None
        return message
    if getattr(parsed, "command", None) == "train":
        config = None if parsed.resume or parsed.config is None else ROOT / parsed.config
        try:
            load_config(config, parsed.overrides)
        except UserError as exc:
            return f"config: {exc}"
    return None


def _python_blocks():
    for page in PAGES:
        for block in fenced_blocks(page.read_text(), page.name):
            if block.lang in ("python", "py"):
                yield pytest.param(block, id=f"{page.name}:{block.line}")


@pytest.mark.parametrize("block", list(_python_blocks()))
def test_python_block_runs_on_cpu(block, tmp_path, monkeypatch):
    if block.no_test:
        pytest.skip(f"marked no-test in {block.page}: {block.no_test}")
    monkeypatch.chdir(tmp_path)
    code = compile(GPU_NAME.sub(r"\1cpu\1", block.code), f"{block.page}:{block.line}", "exec")
    exec(code, {"__name__": "__docs_example__"})


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_shell_commands_parse(page, monkeypatch):
    monkeypatch.chdir(ROOT)
    problems = []
    for text, complete in shell_texts(page.read_text()):
        for argv in commands(text):
            problem = check_command(argv, complete)
            if problem:
                problems.append(f"{shlex.join(argv)}\n    -> {problem}")
    assert not problems, f"{page.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_point_to_files(page):
    outside, _ = prose_and_indented_code(page.read_text())
    targets = {target.partition("#")[0] for line in outside for target in LINK.findall(line)}
    missing = sorted(t for t in targets if t and not (page.parent / t).exists())
    assert not missing, f"{page.name} links to files that do not exist: {missing}"


def test_no_test_markers_give_a_reason():
    for page in PAGES:
        for block in fenced_blocks(page.read_text(), page.name):
            assert block.no_test != "", f"{page.name}:{block.line}: <!-- no-test: --> needs a reason"


def test_readme_is_short_and_finds_every_command_and_name():
    import twogpu_alexnet
    from twogpu_alexnet.cli import COMMANDS

    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= README_LIMIT, "the README is for newcomers: move details to docs/"
    ci_test = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert ci_test and all(f"&& {line.strip()}\n" in readme for line in ci_test), "README's test command is CI's"
    used = {argv[1] for text, _ in shell_texts(readme) for argv in commands(text) if cli_argv(argv)}
    assert set(COMMANDS) <= used, f"commands not shown in README.md: {sorted(set(COMMANDS) - used)}"
    api = readme + (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in twogpu_alexnet.__all__ if name != "__version__" and name not in api]
    assert not missing, f"public names documented in neither README.md nor docs/api.md: {missing}"


# --- the extraction and the checks themselves ---------------------------------------------------------

SAMPLE = """\
Text with `twogpu-alexnet info --preset cifar` and `twogpu-alexnet report` inline.

<!-- no-test: needs the ILSVRC-2012 devkit -->
```python
raise RuntimeError("never run")
```

```bash
NNODES=2 time twogpu-alexnet train --config configs/demo.toml \\
    --set train.epochs=3 --out runs/x   # a comment
pip install . && python3 -m twogpu_alexnet evaluate --checkpoint a.pt --data val [--ten-crop] [--json]
```

    twogpu-alexnet neighbors --checkpoint c.pt --data train --queries a.jpg b.jpg... --out nn

```text
$ twogpu-alexnet prepare --data d --out s --format {jpeg,raw}
twogpu-alexnet this-is-output
```

```
$ TWOGPU_ALEXNET_MAX_PIXELS=9 twogpu-alexnet stats --data d
twogpu-alexnet this-is-output-too
```
"""


def test_extraction_finds_blocks_markers_and_commands():
    blocks = fenced_blocks(SAMPLE)
    assert [(b.lang, b.line, b.no_test) for b in blocks] == [
        ("python", 4, "needs the ILSVRC-2012 devkit"), ("bash", 8, None), ("text", 16, None), ("", 21, None)]
    texts = shell_texts(SAMPLE)
    found = [argv for text, _ in texts for argv in commands(text)]
    assert found == [
        ["twogpu-alexnet", "train", "--config", "configs/demo.toml", "--set", "train.epochs=3", "--out", "runs/x"],
        ["pip", "install", "."],
        ["python3", "-m", "twogpu_alexnet", "evaluate", "--checkpoint", "a.pt", "--data", "val", "--ten-crop",
         "--json"],
        ["twogpu-alexnet", "prepare", "--data", "d", "--out", "s", "--format", "jpeg"],
        ["twogpu-alexnet", "stats", "--data", "d"],
        ["twogpu-alexnet", "neighbors", "--checkpoint", "c.pt", "--data", "train", "--queries", "a.jpg", "b.jpg",
         "--out", "nn"],
        ["twogpu-alexnet", "info", "--preset", "cifar"],
        ["twogpu-alexnet", "report"],
    ]
    assert [complete for text, complete in texts for _ in commands(text)] == [True] * 6 + [False] * 2
    assert [check_command(argv, complete=False) for argv in found] == [None] * 8
    assert commands_with_env("A=1 B= time twogpu-alexnet info; C=2 ls") == [
        ({"A": "1", "B": ""}, ["twogpu-alexnet", "info"]), ({"C": "2"}, ["ls"])]
    assert "required: --run" in check_command(["twogpu-alexnet", "report"])


@pytest.mark.parametrize("argv, problem", [
    ("twogpu-alexnet infoo --preset paper", "invalid choice"),
    ("twogpu-alexnet info --presett paper", "unrecognized arguments"),
    ("twogpu-alexnet evaluate --checkpoint a.pt --data val --ten", "unrecognized arguments"),  # no abbreviations
    ("twogpu-alexnet train --set train.lrr=0.1", "unknown config key train.lrr"),
    ("twogpu-alexnet train --config configs/paper-2gpu.toml", "data.root is empty"),
    ("launch/train_3gpu.sh /data/imagenet runs/x", "launch/train_3gpu.sh, which does not exist"),
    ("launch/train_1gpu.sh /data/imagenet runs/x --set train.batchsize=64", "unknown config key train.batchsize"),
])
def test_a_wrong_command_is_caught(argv, problem, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert problem in (check_command(shlex.split(argv)) or "")


def test_gpu_names_are_swapped_for_the_cpu():
    code = 'build_model("paper", mode="two-tower", devices=("cuda:0", "cuda:1")); x.to(\'cuda\')'
    swapped = 'build_model("paper", mode="two-tower", devices=("cpu", "cpu")); x.to(\'cpu\')'
    assert GPU_NAME.sub(r"\1cpu\1", code) == swapped
