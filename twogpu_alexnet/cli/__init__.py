"""``twogpu-alexnet`` command line: a thin argparse layer over the library.

Each command lives in its own module here with two functions, ``add_parser(subparsers)`` and
``run(args) -> int``. Only this package parses arguments, prints and exits.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

# command name -> module in this package (each imports what its run() needs inside run())
COMMANDS = {
    "info": "info",
    "train": "train",
    "evaluate": "evaluate",
    "prepare": "prepare",
    "stats": "stats",
    "bench": "bench",
    "kernels": "kernels",
    "neighbors": "neighbors",
    "report": "report",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twogpu-alexnet",
        description="The 2012 AlexNet with its two-GPU layout: inspect, train, evaluate, analyse.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(f".{module}", __name__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
