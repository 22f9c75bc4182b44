"""Plots drawn with matplotlib, an optional extra (``pip install 'twogpu-alexnet[plots]'``).

Every function here returns None instead of a path when matplotlib is not installed; callers say
so with :data:`PLOTS_HINT`. The kernel grids (``kernels.png``) never need matplotlib.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

from .. import files

PLOTS_HINT = "install matplotlib to draw the plots: pip install 'twogpu-alexnet[plots]' (or pip install matplotlib)"
TOWER_COLORS = ("#4c72b0", "#dd8452")


def load_pyplot():
    """matplotlib.pyplot with the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_score_plot(summary: dict, path, title: str | None = None) -> Path | None:
    """Per-tower distribution of the colour scores (box + every kernel as a dot) and the mean
    energy shares along the opponent axes, from :func:`~twogpu_alexnet.analysis.kernels.tower_summary`."""
    plt = load_pyplot()
    if plt is None:
        return None
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    rng = np.random.default_rng(0)
    scores = summary["scores"]
    import matplotlib

    new_api = tuple(int(v) for v in matplotlib.__version__.split(".")[:2]) >= (3, 10)
    left.boxplot(
        scores, widths=0.5, showfliers=False, **({"orientation": "horizontal"} if new_api else {"vert": False})
    )
    for tower, s in enumerate(scores):
        y = tower + 1 + rng.uniform(-0.18, 0.18, len(s))
        left.scatter(s, y, s=14, alpha=0.8, color=TOWER_COLORS[tower], zorder=3)
    left.axvline(summary["threshold"], color="gray", ls="--", lw=1)
    if summary.get("measured") != "learned":  # 2/3 is the level of random W, not of the learned part
        left.axvline(2 / 3, color="gray", ls=":", lw=1)
        left.text(2 / 3, 2.45, " random kernels (2/3)", fontsize=7, color="gray", va="top")
    left.set_yticks([1, 2], ["tower 0", "tower 1"])
    left.set_xlim(-0.02, 1.02)
    left.set_xlabel("colour-specificity score (share of energy outside gray)")
    what = "L" if summary.get("measured") == "learned" else "W"
    left.set_title(f"score of {what}: r = {summary['effect_size']:+.2f}, p = {summary['p_value']:.2g}: "
                   f"{'split' if summary.get('split') else 'no split'}", fontsize=8)

    shares = [(1 - t["red_green"] - t["blue_yellow"], t["red_green"], t["blue_yellow"]) for t in summary["towers"]]
    bottom = np.zeros(2)
    axes_colors = zip(("achromatic", "red-green", "blue-yellow"), ("0.6", "#c44e52", "#dda032"), strict=True)
    for i, (label, color) in enumerate(axes_colors):
        values = np.array([s[i] for s in shares])
        right.bar(["tower 0", "tower 1"], values, bottom=bottom, color=color, label=label)
        bottom += values
    right.set_ylim(0, 1)
    right.set_ylabel("mean share of kernel energy")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)  # off the bars
    if title:  # wrapped, and room kept above the axes, so it is never cut
        fig.suptitle(textwrap.fill(title, 110), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.9 if title else 1))
    return _save_png(fig, path)


def save_training_curves(steps: list[dict], epochs: list[dict], out_dir) -> dict[str, Path] | None:
    """loss.png, error.png, lr.png and color_score.png from a run's metrics.jsonl lines.

    ``steps``/``epochs``: the parsed ``kind == "step"`` / ``"epoch"`` lines. A plot whose values are
    all missing is not drawn. Returns {name: path}, or None when matplotlib is missing.
    """
    plt = load_pyplot()
    if plt is None:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def series(rows, key):
        pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None and r.get("epoch") is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    def finish(fig, ax, name, ylabel):
        from matplotlib.ticker import MaxNLocator

        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # beside the axes, where it covers no data
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        fig.tight_layout()
        written[name] = _save_png(fig, out / f"{name}.png")

    # loss: every step (x = fractional epoch) and the per-epoch training mean
    step_rows = [r for r in steps if r.get("loss") is not None]
    ex, ey = series(epochs, "train_loss")
    if step_rows or ey:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        if step_rows:
            ax.plot(_step_epochs(step_rows), [r["loss"] for r in step_rows], lw=0.6, alpha=0.5, label="step")
        if ey:
            ax.plot(ex, ey, "o-", label="epoch mean")
        finish(fig, ax, "loss", "training loss")

    x1, y1 = series(epochs, "val_top1_error")
    x5, y5 = series(epochs, "val_top5_error")
    if y1 or y5:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        if y1:
            ax.plot(x1, [100 * v for v in y1], "o-", label="top-1")
        if y5:
            ax.plot(x5, [100 * v for v in y5], "s-", label="top-5")
        finish(fig, ax, "error", "validation error (%)")

    lx, ly = series(epochs, "lr")
    if step_rows and any(r.get("lr") is not None for r in step_rows):
        lr_rows = [r for r in step_rows if r.get("lr") is not None]
        lx, ly = _step_epochs(lr_rows), [r["lr"] for r in lr_rows]
    if ly:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot(lx, ly, "-" if len(ly) > 50 else "o-")
        if min(ly) > 0:
            ax.set_yscale("log")
        finish(fig, ax, "lr", "learning rate")

    # colour: W per tower (solid), the learned part L = W - c*W0 (dashed) and W's random-kernel level 2/3
    curves = [(series(epochs, f"{prefix}color_score_tower{tower}"), tower, style, f"tower {tower}{what}")
              for prefix, style, what in (("", "o-", " (W)"), ("learned_", "s--", " (L)")) for tower in (0, 1)]
    if any(y for (_, y), *_ in curves):
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        for (x, y), tower, style, label in curves:
            if y:
                ax.plot(x, y, style, color=TOWER_COLORS[tower], label=label)
        ax.axhline(2 / 3, color="gray", ls=":", lw=1, label="W of random kernels (2/3)")
        ax.set_ylim(0, 1)
        finish(fig, ax, "color_score", "mean conv1 colour score")
    return written


def _step_epochs(rows: list[dict]) -> list[float]:
    """x positions for step lines: the epoch number minus 1, plus the share of that epoch's steps done,
    so a step line of epoch e lands in (e - 1, e], where that epoch's summary line sits at e."""
    totals: dict[int, int] = {}
    for r in rows:
        totals[r["epoch"]] = totals.get(r["epoch"], 0) + 1
    seen: dict[int, int] = {}
    xs = []
    for r in rows:
        seen[r["epoch"]] = seen.get(r["epoch"], 0) + 1
        xs.append(r["epoch"] - 1 + seen[r["epoch"]] / totals[r["epoch"]])
    return xs


def save_kernel_figure(panels: list[tuple[str, object]], path, title: str | None = None,
                       tower_rows: tuple[int, int] | None = None) -> Path | None:
    """Kernel grids side by side (e.g. W and the learned part L), each titled, towers labelled.

    ``panels``: (title, 3 x H x W tensor from :func:`~twogpu_alexnet.analysis.kernels.kernel_grid`);
    ``tower_rows``: the y centres of tower 0's and tower 1's blocks, for the labels.
    """
    plt = load_pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 2.4), squeeze=False)
    for ax, (name, grid) in zip(axes[0], panels, strict=True):
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        if tower_rows:
            ax.set_yticks(list(tower_rows), ["tower 0", "tower 1"], fontsize=8)
        else:
            ax.set_yticks([])
    if title:
        fig.suptitle(textwrap.fill(title, 60 * len(panels)), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.85 if title else 1))
    return _save_png(fig, path)


def _save_png(fig, path) -> Path:
    """Write ``fig`` to ``path`` as a PNG through the one writer, and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path
