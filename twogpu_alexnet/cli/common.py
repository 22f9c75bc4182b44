"""Printing helpers shared by the CLI commands: rich for people, one JSON object for scripts."""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress


def console_for(args, stderr: bool | None = None) -> Console:
    """The rich console every command prints with; with ``--json`` (or ``stderr=True``) it writes to stderr
    so stdout holds only JSON.

    Markup and emoji codes are off: paths, file and class names print exactly as they are (with markup
    on, a path holding ``[/x]`` raises MarkupError and a colour name in square brackets vanishes). Give
    styles with ``style=`` or :class:`rich.text.Text`, never as markup tags inside a printed string.
    """
    if stderr is None:
        stderr = bool(getattr(args, "json", False))
    console = Console(stderr=stderr, highlight=False, markup=False, emoji=False)
    if not console.is_terminal:  # pipes and logs: wide enough for the tables, no wrapping
        console.width = max(console.width, 130)
    return console


def print_json(obj) -> None:
    """Write ``obj`` as one JSON object on stdout and nothing else."""
    sys.stdout.write(json.dumps(obj, indent=None, sort_keys=False, default=_jsonable) + "\n")
    sys.stdout.flush()


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else there")


@contextmanager
def late_progress_bar(console: Console, *columns, transient: bool = False):
    """Yields ``progress(done, total)`` for a library call; the bar appears at its first call.

    Library functions check their inputs before reporting progress, so a user error prints as one
    line with no empty bar above it.
    """
    bar = Progress(*columns, console=console, transient=transient)
    task = None

    def progress(done, total):
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("", total=total)
        bar.update(task, completed=done, total=total)

    try:
        yield progress
    finally:
        if task is not None:
            bar.stop()
