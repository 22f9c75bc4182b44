"""``twogpu-alexnet kernels``: the Figure-3 picture of conv1 and whether the towers specialize."""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from .common import add_json_flag, console_for, print_json

EXAMPLE = """examples:
  twogpu-alexnet kernels --checkpoint runs/paper/checkpoints/last.pt --out runs/paper/analysis
  twogpu-alexnet kernels --weights alexnet.pth --out analysis/torchvision   # any network's conv1
  twogpu-alexnet kernels --compare runs/paper-s0 runs/paper-s1 runs/onetower-s0

Writes DIR/kernels.png (tower 0's conv1 kernels in the top rows, tower 1's below; each kernel
contrast-normalized on its own and upscaled), DIR/kernels.json and, with matplotlib installed,
DIR/scores.png. The score of a kernel is the share of its energy outside the gray direction
(0 = colour-agnostic, 1 = pure colour-opponent; random kernels score 2/3). A checkpoint of this
program keeps conv1 at step 0, and the statistics score what training added (W - W0).
--compare prints one row per run folder. See docs/specialization.md."""


def _count(text: str) -> int:
    """An integer that may be written as 1e4; argparse reports anything else."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def add_parser(subparsers) -> None:
    from ..analysis.kernels import ALPHA, MAX_PERMUTATIONS, MIN_COLOR_SHARE, PERMUTATIONS, THRESHOLD

    p = subparsers.add_parser(
        "kernels",
        help="conv1 kernels as in the paper's Figure 3, and the towers' colour specialization",
        description="Draw the conv1 kernels of a checkpoint (or of any network's first layer) tower by tower\n"
        "and test whether one tower is more colour-specific than the other.\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="C", help="training checkpoint or plain state dict (either layout)")
    source.add_argument("--weights", metavar="FILE",
                        help="any network's conv1: a .pt/.pth/.npy tensor (out x 3 x k x k) or state dict")
    source.add_argument("--compare", nargs="+", metavar="RUN_DIR", help="one table row per training run folder")
    p.add_argument(
        "--preset", metavar="P", help="the preset the weights belong to (default: from the checkpoint or its shapes)"
    )
    p.add_argument("--key", metavar="NAME", help="--weights: the state dict entry holding conv1 (default: the only "
                   "4-d tensor with 3 input channels)")
    p.add_argument("--groups", type=int, default=2, help="--weights: consecutive equal groups of output channels "
                   "taken as towers (default 2)")
    p.add_argument("--out", metavar="DIR", help="folder for kernels.png, kernels.json and scores.png "
                   "(needed with --checkpoint and --weights)")
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help=f"score above which a kernel counts as colour-specific (default {THRESHOLD})")
    p.add_argument("--alpha", type=float, default=ALPHA,
                   help=f"significance level for naming the colour-specific tower (default {ALPHA})")
    p.add_argument("--min-share", type=float, default=MIN_COLOR_SHARE,
                   help=f"share of colour-specific kernels below which a split is not measurable yet "
                   f"(default {MIN_COLOR_SHARE})")
    p.add_argument("--permutations", type=_count, default=PERMUTATIONS,
                   help=f"permutations of the test, 1 to {MAX_PERMUTATIONS:,} (default {PERMUTATIONS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation test (default 0)")
    add_json_flag(p)
    p.set_defaults(run=run)


def check_options(args) -> None:
    from ..analysis.kernels import MAX_PERMUTATIONS
    from ..errors import UserError

    if not 0 <= args.threshold <= 1:
        raise UserError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if not 0 <= args.min_share <= 1:
        raise UserError(f"--min-share must be between 0 and 1, got {args.min_share}")
    if not 1 <= args.permutations <= MAX_PERMUTATIONS:
        raise UserError(f"--permutations must be between 1 and {MAX_PERMUTATIONS:,}, got {args.permutations:,}")
    if args.compare is None and not args.out:
        raise UserError("--out DIR is needed with --checkpoint and --weights (the folder for kernels.png)")
    if args.weights is None and (args.key is not None or args.groups != 2):
        raise UserError("--key and --groups go with --weights; drop them or pass --weights FILE")


def run(args) -> int:
    from ..analysis.plots import PLOTS_HINT

    check_options(args)
    console = console_for(args)
    options = dict(threshold=args.threshold, alpha=args.alpha, permutations=args.permutations, seed=args.seed,
                   min_share=args.min_share)
    if args.compare is not None:
        from ..analysis.compare import compare_runs

        result = compare_runs(args.compare, **options)
        if args.json:
            print_json(result)
        else:
            console.print(compare_table(result))
            console.print(compare_counts(result), soft_wrap=True)
        return 0
    result = analyze_weights(args, options) if args.weights else analyze_checkpoint(args, options)
    if args.json:
        print_json(result)
        return 0
    console.print(summary_table(result))
    console.print(verdict(result), soft_wrap=True)
    if result["control"]:
        console.print(
            f"{result['preset']} has no towers: its two conv1 halves are an arbitrary split (the control).", style="dim"
        )
    console.print(
        f"wrote {result['files']['kernels']}"
        + (f" and {result['files']['scores']}" if result["files"]["scores"] else "")
    )
    if not result["files"]["scores"]:
        console.print(f"no score plot: {PLOTS_HINT}", style="dim", soft_wrap=True)
    return 0


def analyze_checkpoint(args, options: dict) -> dict:
    """The --checkpoint path: one training checkpoint or state dict of this package's model."""
    from ..analysis.kernels import analyze_checkpoint as analyze

    return analyze(args.checkpoint, args.out, preset=args.preset, **options)


def analyze_weights(args, options: dict) -> dict:
    from ..analysis.kernels import analyze_weights as analyze

    return analyze(args.weights, args.out, key=args.key, groups=args.groups, **options)


def _source(result: dict) -> str:
    if result.get("checkpoint"):
        return f"{Path(result['checkpoint']).name} ({result['preset']})"
    return f"{Path(result['weights']).name}: {result['key']}"


def summary_table(result: dict) -> Table:
    learned = result.get("measured") == "learned"
    title = f"conv1 colour score per tower, {'learned part W - W0' if learned else 'weights W'}: {_source(result)}"
    table = Table(title=title)
    for name in ("tower", "n", "mean", "baseline", "median", "q1", "q3", f">{result['threshold']:g}", "red-green",
                 "blue-yell."):
        table.add_column(name, justify="right")
    for t in result["towers"]:
        table.add_row(
            str(t["tower"]), str(t["n"]), f"{t['mean']:.3f}", f"{result['baseline']:.3f}", f"{t['median']:.3f}",
            f"{t['q1']:.3f}", f"{t['q3']:.3f}", f"{t['count_above']} ({100 * t['frac_above']:.0f}%)",
            f"{t['red_green']:.3f}", f"{t['blue_yellow']:.3f}",
        )
    if learned:
        w = result["weights"]["towers"]
        table.caption = (f"weights W: mean {w[0]['mean']:.3f} / {w[1]['mean']:.3f}, above {result['threshold']:g}: "
                         f"{w[0]['count_above']} / {w[1]['count_above']} (tower 0 / tower 1)")
    return table


def verdict(result: dict) -> str:
    stats = (f"difference {result['difference']:+.3f} (tower 1 - tower 0), permutation p = {result['p_value']:.4g}, "
             f"Fisher p = {result['fisher_p_value']:.4g}, rank-biserial {result['effect_size']:+.2f}")
    return f"{stats}: {result['verdict']}"


def compare_table(result: dict) -> Table:
    table = Table(title="conv1 colour specialization across runs",
                  caption="of: W-W0 = the learned part (the run kept conv1 at step 0), W = the weights; colour: "
                  "kernels above the threshold, both towers (few = too few to test); * = control (no towers)")
    for name in ("run", "preset", "epoch", "steps", "of", "colour", "t0 mean", "t1 mean", "effect", "p perm.",
                 "p Fisher", "tower"):
        table.add_column(name, justify="left" if name in ("run", "preset", "of") else "right", no_wrap=True)
    for r in result["runs"]:
        tower = r["color_specific_tower"]
        table.add_row(
            Path(r["run"]).name, r["preset"] + (" *" if r["control"] else ""),
            str(r["epoch"]), str(r["steps"]), "W-W0" if r["measured"] == "learned" else "W",
            f"{r['color_kernels']}/{r['kernels']}" + ("" if r["measurable"] else " few"),
            f"{r['tower0_mean']:.3f}", f"{r['tower1_mean']:.3f}", f"{r['effect_size']:+.2f}", f"{r['p_value']:.2g}",
            f"{r['fisher_p_value']:.2g}", "-" if tower is None else str(tower),
        )
    return table


def compare_counts(result: dict) -> str:
    line = (f"two-tower runs that split: {result['two_tower_split']} of {result['two_tower_runs']}; "
            f"controls that split: {result['control_split']} of {result['control_runs']}")
    if result["not_measurable"]:
        line += (f"; {result['not_measurable']} run(s) not measurable yet (too few colour kernels in conv1: "
                 "'-' there means no test, not no split)")
    return line
