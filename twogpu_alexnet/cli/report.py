"""``twogpu-alexnet report``: curves, tables and kernel grids of a training run on one HTML page."""
from __future__ import annotations

import argparse

from .common import add_json_flag, console_for, print_json

EXAMPLE = """example:
  twogpu-alexnet report --run runs/cifar

Reads RUN/metrics.jsonl, RUN/config.toml, RUN/kernels/*.png and RUN/checkpoints/last.pt; writes
RUN/report/report.html (self-contained: pictures embedded) and the curves loss.png, error.png,
lr.png and color_score.png beside it. The curves need matplotlib:
pip install 'twogpu-alexnet[plots]'."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="one self-contained HTML page with a run's curves, tables and kernel grids",
        description="Build the report page of a training run.\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--run", dest="run_dir", required=True, metavar="DIR", help="the run folder (twogpu-alexnet train --out DIR)"
    )
    p.add_argument("--out", metavar="DIR", help="where to write report.html and the curves (default RUN/report)")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..analysis.report import build_report

    console = console_for(args)
    result = build_report(args.run_dir, args.out)
    if args.json:
        print_json(result)
        return 0
    top1 = result["best_val_top1_error"]
    console.print(
        f"{result['epochs']} epoch(s), {result['steps']} step line(s)"
        + (f"; best val top-1 error {top1:.2%} (epoch {result['best_top1_epoch']})" if top1 is not None else "")
    )
    if result["plots_missing"]:
        console.print(f"no curves: {result['plots_missing']}", style="yellow")
    else:
        console.print(f"curves: {', '.join(result['plots'].values()) or 'none (no values yet)'}")
    if result["unreadable_lines"]:
        console.print(f"skipped {result['unreadable_lines']} unreadable line(s) of metrics.jsonl", style="yellow")
    console.print(f"wrote {result['html']}")
    return 0
