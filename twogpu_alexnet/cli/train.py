"""``twogpu-alexnet train``: the paper's recipe from one command (no arguments: the built-in demo)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich.table import Table

from ..errors import UserError
from .common import add_json_flag, console_for, print_json
from .options import path_value

DESCRIPTION = """\
Train AlexNet. With no arguments it runs the built-in demo (synthetic images, the cifar preset,
a few epochs on whatever device there is). Exit codes: 0 done, 2 user error, 3 non-finite loss,
130 / 143 stopped by SIGINT / SIGTERM with a checkpoint saved (continue with --resume).

examples:
  twogpu-alexnet train
  twogpu-alexnet train --config configs/paper-2gpu.toml --set data.root=/data/imagenet --out runs/paper
  twogpu-alexnet train --config configs/cifar10.toml --set data.root=/data/cifar10 --set speed.amp=bf16
  twogpu-alexnet train --resume runs/paper --set train.epochs=100
  twogpu-alexnet train --resume runs/paper --from-epoch 10
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train AlexNet (no arguments: a short demo)", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="TOML config (configs/*.toml); default: the built-in demo")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override one config key, e.g. train.epochs=10 (repeatable; values in TOML syntax)")
    p.add_argument("--out", metavar="DIR", type=path_value,
                   help="run folder: a new or empty folder, or a run without checkpoints "
                   "(default: runs/<date>-<time>-<pid>)")
    p.add_argument("--resume", metavar="DIR", type=path_value, help="continue the run in DIR with its saved config")
    p.add_argument("--from-epoch", metavar="N", type=int, help="with --resume: go on from the end of epoch N "
                   "(DIR/checkpoints/epoch_NNN.pt) instead of the newest checkpoint")
    add_json_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..analysis.epoch_hooks import ColorStats, epoch_hooks
    from ..engine.config import load_config
    from ..engine.distributed import context_from_env
    from ..engine.progress import reporter_for
    from ..engine.rundir import check, default_run_dir
    from ..engine.signals import StopRequest
    from ..engine.train import train

    console = console_for(args)  # the summary: stdout (stderr with --json)
    progress = console_for(args, stderr=True)  # progress lines and notes: always stderr
    ctx = context_from_env()
    if args.from_epoch is not None and (not args.resume or args.from_epoch < 1):
        raise UserError(f"--from-epoch {args.from_epoch} needs --resume DIR and an epoch of 1 or more; "
                        "e.g. --resume runs/paper --from-epoch 10")
    if args.resume:
        if args.config or args.out:
            raise UserError("--resume continues a run in its own folder with its saved config; drop --config and "
                            "--out (use --set to change keys)")
        run_dir = Path(args.resume)
        check(run_dir, resume=True)
        config = load_config(run_dir / "config.toml", args.overrides)
    else:
        config = load_config(args.config, args.overrides)
        if ctx.enabled and not args.out:
            raise UserError("under torchrun pass --out DIR (one folder, on a filesystem every node can read)")
        run_dir = Path(args.out) if args.out else default_run_dir()
    if ctx.is_main and args.config is None and not args.resume:
            progress.print("no --config: running the built-in demo (configs/demo.toml)", soft_wrap=True)
    reporter = reporter_for(progress, config.train.log_every)
    hooks = epoch_hooks(config)  # colour statistics and kernel grids at each epoch's end
    with StopRequest() as stop:
        result = train(config, run_dir, resume=bool(args.resume), reporter=reporter, stop=stop, ctx=ctx, hooks=hooks,
                       from_epoch=args.from_epoch)
    if not ctx.is_main:
        return result.exit_code
    if args.json:
        print_json(result_json(result))
    else:
        epochs = all_epochs(result)
        if epochs:
            console.print(summary_table(result, epochs))
        color = next((h.summary for h in hooks if isinstance(h, ColorStats)), None)
        if color:
            console.print(color_table(color))
    return result.exit_code


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def result_json(result) -> dict:
    last = result.epochs[-1] if result.epochs else {}
    return {
        "run_dir": str(result.run_dir), "status": result.status, "exit_code": result.exit_code,
        "mode": result.placement.mode, "devices": list(result.placement.devices),
        "epochs_run": len(result.epochs), "train_loss": last.get("train_loss"),
        "val_top1_error": last.get("val_top1_error"), "val_top5_error": last.get("val_top5_error"),
        "best_val_top1_error": None if math.isinf(result.best_val_top1_error) else result.best_val_top1_error,
        "images_per_s": result.images_per_s, "wall_s": result.wall_s,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "color_score_tower0": last.get("color_score_tower0"), "color_score_tower1": last.get("color_score_tower1"),
        "message": result.message,
    }


def all_epochs(result) -> list[dict]:
    """Every epoch of the run, the ones before a resume included: the epoch lines of RUN/metrics.jsonl (the
    last line of each epoch wins), else the epochs of this invocation."""
    from ..engine.metrics import read_metrics

    try:
        records, _ = read_metrics(result.run_dir / "metrics.jsonl")
    except OSError:
        return list(result.epochs)
    keys = ("epoch", "train_loss", "val_top1_error", "val_top5_error", "lr", "time_s")
    by_epoch = {int(r["epoch"]): r for r in records
                if r.get("kind") == "epoch" and all(k in r for k in keys) and isinstance(r["epoch"], int)}
    for r in result.epochs:               # this invocation's records are the ones in memory
        by_epoch[int(r["epoch"])] = r
    return [by_epoch[e] for e in sorted(by_epoch)]


def summary_table(result, epochs: list[dict] | None = None) -> Table:
    table = Table(title=f"training run: {result.run_dir}")
    for col in ("epoch", "train loss", "val top-1 err", "val top-5 err", "lr", "time"):
        table.add_column(col, justify="right")
    for r in result.epochs if epochs is None else epochs:
        table.add_row(str(r["epoch"]), f"{r['train_loss']:.4f}", _pct(r["val_top1_error"]),
                      _pct(r["val_top5_error"]), f"{r['lr']:.2g}", f"{r['time_s']:.1f} s")
    best = "-" if math.isinf(result.best_val_top1_error) else _pct(result.best_val_top1_error)
    table.caption = (f"{result.placement.mode} on {', '.join(result.placement.devices)}; best val top-1 error {best}; "
                     f"{result.images_per_s:.0f} training images/s; wall {result.wall_s:.1f} s; "
                     f"checkpoint {result.checkpoint or '-'}")
    return table


def color_table(summary: dict) -> Table:
    """The towers' conv1 colour statistics (paper section 6.1): which tower went colour-specific."""
    from ..analysis.kernels import score_name

    table = Table(title=f"conv1 colour specificity per tower, {score_name(summary)} (0 = gray, 1 = pure colour)")
    for col in ("tower", "kernels", "mean", "median", "q1-q3", "share > 0.5"):
        table.add_column(col, justify="right")
    for t in summary["towers"]:
        table.add_row(str(t["tower"]), str(t["n"]), f"{t['mean']:.3f}", f"{t['median']:.3f}",
                      f"{t['q1']:.2f}-{t['q3']:.2f}", f"{100 * t['frac_above']:.0f}%")
    table.caption = summary["verdict"]  # the one colour verdict's sentence
    return table
