"""``twogpu-alexnet kernels``: the Figure-3 picture of conv1 and whether the towers specialize."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .common import add_json_flag, console_for, print_json

EXAMPLE = """example:
  twogpu-alexnet kernels --checkpoint runs/cifar/checkpoints/last.pt --out runs/cifar/analysis

Writes DIR/kernels.png (tower 0's conv1 kernels in the top rows, tower 1's below; each kernel
contrast-normalized on its own and upscaled), DIR/kernels.json and, with matplotlib installed,
DIR/scores.png. The score of a kernel is the share of its energy outside the gray direction
(0 = colour-agnostic, 1 = pure colour-opponent); see docs/specialization.md."""


def add_parser(subparsers) -> None:
    import argparse

    from ..analysis.kernels import ALPHA, PERMUTATIONS, THRESHOLD

    p = subparsers.add_parser(
        "kernels",
        help="conv1 kernels as in the paper's Figure 3, and the towers' colour specialization",
        description="Draw the conv1 kernels of a checkpoint tower by tower and test whether one tower\n"
        "is more colour-specific than the other (permutation test).\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint", required=True, metavar="C", help="training checkpoint or plain state dict (either layout)"
    )
    p.add_argument(
        "--preset", metavar="P", help="the preset the weights belong to (default: from the checkpoint or its shapes)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for kernels.png, kernels.json and scores.png")
    p.add_argument(
        "--threshold",
        type=float,
        default=THRESHOLD,
        help=f"score above which a kernel counts as colour-specific (default {THRESHOLD})",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=ALPHA,
        help=f"significance level for naming the colour-specific tower (default {ALPHA})",
    )
    p.add_argument(
        "--permutations", type=int, default=PERMUTATIONS, help=f"permutations of the test (default {PERMUTATIONS})"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation test (default 0)")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..analysis.kernels import analyze_checkpoint
    from ..analysis.plots import PLOTS_HINT
    from ..errors import UserError

    if not 0 <= args.threshold <= 1:
        raise UserError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if args.permutations < 1:
        raise UserError(f"--permutations must be a positive integer, got {args.permutations}")
    console = console_for(args)
    result = analyze_checkpoint(
        args.checkpoint, args.out, preset=args.preset, threshold=args.threshold,
        alpha=args.alpha, permutations=args.permutations, seed=args.seed,
    )
    if args.json:
        print_json(result)
        return 0
    console.print(summary_table(result))
    console.print(verdict(result))
    if result["control"]:
        console.print(
            f"{result['preset']} has no towers: its two conv1 halves are an arbitrary split (the control).", style="dim"
        )
    console.print(
        f"wrote {result['files']['kernels']}"
        + (f" and {result['files']['scores']}" if result["files"]["scores"] else "")
    )
    if not result["files"]["scores"]:
        console.print(f"no score plot: {PLOTS_HINT}", style="dim")
    return 0


def summary_table(result: dict) -> Table:
    title = f"conv1 colour score per tower: {Path(result['checkpoint']).name} ({result['preset']})"
    table = Table(title=title)
    for name in ("tower", "n", "mean", "median", "q1", "q3", f">{result['threshold']:g}", "red-green", "blue-yell."):
        table.add_column(name, justify="right")
    for t in result["towers"]:
        table.add_row(
            str(t["tower"]), str(t["n"]), f"{t['mean']:.3f}", f"{t['median']:.3f}", f"{t['q1']:.3f}", f"{t['q3']:.3f}",
            f"{100 * t['frac_above']:.0f}%", f"{t['red_green']:.3f}", f"{t['blue_yellow']:.3f}",
        )
    return table


def verdict(result: dict) -> str:
    tower = result["color_specific_tower"]
    stats = (f"difference {result['difference']:+.3f} (tower 1 - tower 0), p = {result['p_value']:.4g}, "
             f"rank-biserial {result['effect_size']:+.2f}")
    if tower is None:
        return f"{stats}: no significant difference between the towers at alpha {result['alpha']:g}"
    return f"{stats}: tower {tower} is the colour-specific one"
