"""``twogpu-alexnet`` command line: a thin argparse layer over the library.

Each command lives in its own module here with two functions, ``add_parser(subparsers)`` and
``run(args) -> int``. Only this package parses arguments, prints and exits. Only the module of the
command being run is imported (the others appear in the top-level help by their one-line summary),
and no command module imports torch before its ``run``: ``--help`` and ``--version`` answer at once.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import re
import sys

from ..errors import UserError

# command name -> (module in this package, one-line summary for the top-level help)
COMMANDS = {
    "info": ("info", "show the layer table of a preset (per layer and tower)"),
    "train": ("train", "train AlexNet (no arguments: a short demo)"),
    "evaluate": ("evaluate", "top-1/top-5 error of checkpoints (ensembles, 10 views) on a folder or a store"),
    "predict": ("predict", "top-5 classes of image files, from a checkpoint or a weights file"),
    "export": ("export", "write a checkpoint's weights alone (either layout, with preset and class names)"),
    "prepare": ("prepare", "resize one split to 256x256 (shorter side 256, centre crop) into a store that "
                "training reads fast"),
    "stats": ("stats", "compute the training mean image and RGB PCA (prepare already does this for a store)"),
    "bench": ("bench", "benchmarks: model (training step), options, data (input pipeline)"),
    "kernels": ("kernels", "conv1 kernels as in the paper's Figure 3, and the towers' colour specialization"),
    "neighbors": ("neighbors", "nearest training images to query images in fc7 space (the paper's Figure 4)"),
    "report": ("report", "one self-contained HTML page with a run's curves, tables and kernel grids"),
}


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line: ``error: --workers must be ..., got -2; see ... --help``."""

    def error(self, message: str):
        message = re.sub(r"^argument (-[\w-]+)(?:/[\w/-]+)?: ", r"\1 ", message)
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def version() -> str:
    from .. import __version__

    return __version__


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The parser; ``command`` names the one command whose options are built ("*": all of them, None: none)."""
    parser = Parser(
        prog="twogpu-alexnet",
        description="The 2012 AlexNet with its two-GPU layout: inspect, train, evaluate, analyse.",
        epilog="Run twogpu-alexnet COMMAND --help for a command's options; docs/cli.md has examples of each.",
    )
    parser.add_argument("--version", action="version", version=f"twogpu-alexnet {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        if command in ("*", name):
            importlib.import_module(f".{module}", __name__).add_parser(sub)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def command_of(argv: list[str]) -> str | None:
    """The command ``argv`` names (its first word that is not an option), or None."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def unknown_command(word: str) -> str:
    close = difflib.get_close_matches(word, COMMANDS, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown command {word!r}; {hint}the commands are: {', '.join(COMMANDS)} (twogpu-alexnet --help)"


def safe_streams() -> None:
    """Printing never fails on an encoding (``PYTHONIOENCODING=ascii``, a C locale): what the stream cannot
    encode is written as a backslash escape."""
    for stream in (sys.stdout, sys.stderr):
        # not a text stream we own (pytest's capture, a pipe wrapper): left as it is
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    safe_streams()
    command = command_of(argv)
    if command is not None and command not in COMMANDS:
        print(f"error: {unknown_command(command)}", file=sys.stderr)
        return 2
    parser = build_parser(command)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:      # --help, --version (0) or a refused option (2): a code, as from a command
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        from ..data.decode import pixel_limit

        pixel_limit()                     # a bad TWOGPU_ALEXNET_MAX_PIXELS is one sentence before any work
        return int(args.run(args) or 0)
    except UserError as exc:       # plain print, not rich: paths in the sentence are printed as they are
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
