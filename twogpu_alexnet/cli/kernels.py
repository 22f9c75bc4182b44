"""``twogpu-alexnet kernels``: the Figure-3 picture of conv1 and whether the towers specialize."""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from .common import add_json_flag, console_for, print_json
from .options import whole_number

EXAMPLE = """examples:
  twogpu-alexnet kernels --checkpoint runs/paper/checkpoints/last.pt --out runs/paper/analysis
  twogpu-alexnet kernels --weights alexnet.pth --out analysis/torchvision   # any network's conv1
  twogpu-alexnet kernels --compare runs/paper-s0 runs/paper-s1 runs/onetower-s0

Writes DIR/kernels.png (tower 0's conv1 kernels in the top rows, tower 1's below; each kernel
contrast-normalized on its own and upscaled), DIR/kernels.json and, with matplotlib installed,
DIR/scores.png; with a checkpoint of this program also DIR/learned.png (the learned part). The score
of a kernel is the share of its energy outside the gray direction (0 = colour-agnostic, 1 = pure
colour-opponent). A checkpoint of this program keeps conv1 at step 0, and the verdict scores the
learned part L = W - c*W0 (c: what weight decay left of W0). A run splits when the towers'
rank-biserial |r| >= 0.5 and its permutation p < 0.01. --compare prints one row per run folder, the
across-arm test and one conclusion. See docs/specialization.md."""


def add_parser(subparsers) -> None:
    from ..analysis.protocol import ALPHA, MAX_PERMUTATIONS, MIN_EFFECT, PERMUTATIONS, THRESHOLD

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
                   help=f"score above which a kernel counts as colour-specific, for the descriptive counts and "
                   f"Fisher's test (default {THRESHOLD})")
    p.add_argument("--alpha", type=float, default=ALPHA,
                   help=f"a run splits when the permutation p is below this (default {ALPHA}: the protocol)")
    p.add_argument("--min-effect", type=float, default=MIN_EFFECT,
                   help=f"... and |rank-biserial r| is at least this (default {MIN_EFFECT}: the protocol)")
    p.add_argument("--permutations", type=whole_number, default=PERMUTATIONS,
                   help=f"0: the exact permutation test (default {PERMUTATIONS}); 1 to {MAX_PERMUTATIONS:,}: that many "
                   "random permutations")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation test (default 0)")
    add_json_flag(p)
    p.set_defaults(run=run)


def check_options(args) -> None:
    from ..analysis.protocol import MAX_PERMUTATIONS
    from ..errors import UserError

    if not 0 <= args.threshold <= 1:
        raise UserError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if not 0 <= args.min_effect <= 1:
        raise UserError(f"--min-effect must be between 0 and 1, got {args.min_effect}")
    if not (args.permutations == 0 or 1 <= args.permutations <= MAX_PERMUTATIONS):
        raise UserError(f"--permutations must be 0 (exact) or between 1 and {MAX_PERMUTATIONS:,}, got "
                        f"{args.permutations:,}")
    if args.compare is None and not args.out:
        raise UserError("--out DIR is needed with --checkpoint and --weights (the folder for kernels.png)")
    if args.weights is None and (args.key is not None or args.groups != 2):
        raise UserError("--key and --groups go with --weights; drop them or pass --weights FILE")


def run(args) -> int:
    from ..analysis.plots import PLOTS_HINT

    check_options(args)
    console = console_for(args)
    options = dict(threshold=args.threshold, alpha=args.alpha, permutations=args.permutations, seed=args.seed,
                   min_effect=args.min_effect)
    if args.compare is not None:
        from ..analysis.compare import compare_runs

        result = compare_runs(args.compare, **options)
        if args.json:
            print_json(result)
        else:
            console.print(compare_table(result))
            for line in compare_lines(result):
                console.print(line, soft_wrap=True, markup=False)
        return 0
    result = analyze_weights(args, options) if args.weights else analyze_checkpoint(args, options)
    if args.json:
        print_json(result)
        return 0
    console.print(summary_table(result))
    console.print(verdict(result), soft_wrap=True, markup=False)
    if result["control"]:
        console.print(
            f"{result['preset']} has no towers: its two conv1 halves are an arbitrary split (the control).", style="dim"
        )
    files = result["files"]
    written = [f for f in (files["kernels"], files.get("learned"), files.get("figure"), files["scores"]) if f]
    console.print(f"wrote {', '.join(written)}", soft_wrap=True, markup=False)
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
    return f"{Path(result['file']).name}: {result['key']}"


def summary_table(result: dict) -> Table:
    from ..analysis.kernels import score_name

    title = f"conv1 colour score per tower, {score_name(result)}: {_source(result)}"
    table = Table(title=title)
    for name in ("tower", "n", "mean", "median", "q1", "q3", f">{result['threshold']:g}", "red-green",
                 "blue-yell.", "low freq.", "moved"):
        table.add_column(name, justify="right")
    for t in result["towers"]:
        moved = t.get("moved_median")
        table.add_row(
            str(t["tower"]), str(t["n"]), f"{t['mean']:.3f}", f"{t['median']:.3f}",
            f"{t['q1']:.3f}", f"{t['q3']:.3f}", f"{t['count_above']} ({100 * t['frac_above']:.0f}%)",
            f"{t['red_green']:.3f}", f"{t['blue_yellow']:.3f}", f"{t['low_frequency']:.3f}",
            "-" if moved is None else _percent(moved),
        )
    w = result["weights"]["towers"]
    caption = (f"weights W: mean {w[0]['mean']:.3f} / {w[1]['mean']:.3f} (random kernels: {result_baseline():.3f}), "
               f"r = {result['weights']['effect_size']:+.2f} (tower 0 / tower 1)")
    if result.get("measured") == "learned":
        caption += "; moved: median ||L|| / ||W0|| per kernel"
        if result.get("init_scale_exact") is False:
            caption += "; c taken from the config (no step history in metrics.jsonl)"
    table.caption = caption
    return table


def _percent(share: float) -> str:
    """A movement as a percentage: whole percents, two significant digits below 1%."""
    return f"{100 * share:.0f}%" if share >= 0.01 else f"{100 * share:.2g}%"


def result_baseline() -> float:
    from ..analysis.protocol import BASELINE

    return BASELINE


def verdict(result: dict) -> str:
    stats = (f"{result['difference']:+.3f} difference of means (tower 1 - tower 0), Fisher p = "
             f"{result['fisher_p_value']:.2g} (descriptive)")
    return f"{result['verdict']}; {stats}"


def compare_table(result: dict) -> Table:
    table = Table(title="conv1 colour specialization across runs, per-run verdict at the last checkpoint",
                  caption="of: L = the learned part W - c*W0, W = the weights; r: rank-biserial (tower 1 vs 0); "
                  "split: |r| >= 0.5 and p < 0.01; moved: median ||L|| / ||W0||; * = control (no towers)")
    for name in ("run", "preset", "steps", "of", "t0 mean", "t1 mean", "moved", "r", "p", "split"):
        table.add_column(name, justify="left" if name in ("run", "preset", "of") else "right", no_wrap=True)
    for r in result["runs"]:
        tower = r["color_specific_tower"]
        moved = r["moved_median"]
        table.add_row(
            Path(r["run"]).name, r["preset"] + (" *" if r["control"] else ""), str(r["steps"]),
            "L" if r["measured"] == "learned" else "W", f"{r['tower0_mean']:.3f}", f"{r['tower1_mean']:.3f}",
            "-" if moved[0] is None else f"{_percent(moved[0])} / {_percent(moved[1])}",
            f"{r['effect_size']:+.2f}", f"{r['p_value']:.2g}",
            f"yes (tower {tower})" if r["split"] else "no",
        )
    return table


def compare_lines(result: dict) -> list[str]:
    a = result["across"]
    lines = [f"two-tower runs that split: {a['two_tower_splits']} of {a['two_tower_runs']}; controls that split: "
             f"{a['control_splits']} of {a['control_runs']}"]
    if a["fisher_p"] is not None:
        lines.append(f"one-sided Fisher p = {a['fisher_p']:.2g} (alpha {a['alpha']:g})")
    if a["split_rate"] is not None:
        lines.append(f"two-tower split rate {a['split_rate']:.2f}, at least {a['split_rate_lower']:.2f} "
                     f"({100 * a['confidence']:g}% one-sided Clopper-Pearson)")
    lines.append(f"conclusion: {result['conclusion']}")
    return lines
