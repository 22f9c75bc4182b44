"""The options several commands share, each defined once: name, default, help and bounds.

A value out of bounds is refused by argparse itself (``error: argument --workers: ...``, exit 2) before
anything is read, allocated or written. Nothing here imports torch: ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import os

AUTO_DEVICE = "auto"
MAX_BATCH = 65536
MAX_IMAGES = 10**9
MAX_WORKERS = 1024


def whole_number(text: str, expected: str = "a whole number") -> int:
    """An integer written as 64 or 1e4; argparse turns the error into one sentence."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
    return int(value)


def count(text: str, *, low: int, high: int, what: str = "a whole number") -> int:
    """An integer in low..high (written as 64, or 1e4); argparse turns the error into one sentence."""
    value = whole_number(text, f"{what} in {low}..{high:,}")
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be {what} in {low}..{high:,}, got {value}")
    return value


def bounded(low: int, high: int):
    def parse(text: str) -> int:
        return count(text, low=low, high=high)

    parse.__name__ = "count"
    return parse


def workers_value(text: str) -> int | None:
    """0 = in this process, N = N processes, -1 = every core (None)."""
    value = count(text, low=-1, high=MAX_WORKERS, what="a whole number (-1 = every core)")
    return None if value == -1 else value


def path_value(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; name a folder, such as runs/demo")
    return text


def add_device(p, *, what: str = "device to run on") -> None:
    """``--device``: ``auto`` (default) is cuda:0 when a GPU is present, else cpu."""
    p.add_argument("--device", default=AUTO_DEVICE, metavar="DEV",
                   help=f"{what}: cpu, cuda or cuda:N (default: auto = cuda:0 when present, else cpu)")


def add_batch_size(p, default: int | None, *, what: str = "images per batch") -> None:
    """``--batch-size`` (``--batch`` is the same option, kept for older command lines)."""
    shown = "depends on the device" if default is None else str(default)
    p.add_argument("--batch-size", type=bounded(1, MAX_BATCH), default=default, metavar="N",
                   help=f"{what} (default: {shown}; 1..{MAX_BATCH})")
    p.add_argument("--batch", dest="batch_size", type=bounded(1, MAX_BATCH), default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)


def add_workers(p, *, what: str = "loader worker processes", default: int | None = None) -> None:
    """``--workers``: N processes, 0 = in this process, -1 = every core (the default unless given)."""
    shown = "-1 = every core" if default is None else str(default)
    p.add_argument("--workers", type=workers_value, default=default, metavar="N",
                   help=f"{what}: 0 = in this process, -1 = every core ({os.cpu_count()} here) "
                   f"(default: {shown})")


def add_images(p, *, what: str = "evaluate a fixed, seeded subset of N images (default: all)") -> None:
    p.add_argument("--images", type=bounded(1, MAX_IMAGES), default=None, metavar="N", help=what)


def add_out(p, *, required: bool = True, what: str = "output folder") -> None:
    p.add_argument("--out", type=path_value, required=required, metavar="DIR", help=what)


def add_preset(p, *, default: str | None = None,
               what: str = "the preset of the weights (default: from the checkpoint or its shapes)") -> None:
    p.add_argument("--preset", default=default, metavar="P", help=what)



def described(text: str, *examples: str) -> dict:
    """``add_parser`` keywords for a command's help: ``text`` wrapped, then an ``examples:`` block with one
    command per line (the one format of every command's examples)."""
    import textwrap

    body = "\n".join(textwrap.fill(par, 100) for par in text.split("\n\n"))
    block = "\n".join(f"  {e}" for e in examples)
    return {"description": f"{body}\n\nexamples:\n{block}", "formatter_class": argparse.RawDescriptionHelpFormatter}
