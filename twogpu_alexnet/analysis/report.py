"""One self-contained HTML page for a training run: curves, tables and the Figure-3 grids.

Reads the run folder the trainer writes (``metrics.jsonl``, ``config.toml``, ``kernels/*.png``,
``checkpoints/last.pt``) and writes ``report.html`` plus the curve PNGs into an output folder
(default ``RUN/report``). Pictures are embedded as base64 data URIs, so the page can be mailed or
moved alone. The curves need matplotlib (the ``plots`` extra); without it the page still holds the
tables and the kernel grids and says how to get the curves.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from .. import files
from ..engine.metrics import read_metrics
from ..errors import UserError
from ..model.load import load_weights, read_file
from . import output_folder
from .kernels import grid_layout, kernel_grid, learned_state, run_specialization, score_name
from .plots import PLOTS_HINT, save_kernel_figure, save_training_curves

CURVES = ("loss", "error", "lr", "color_score")
EPOCH_COLUMNS = (
    ("epoch", "epoch", "{}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("val_top1_error", "val top-1 error", "{:.2%}"),
    ("val_top5_error", "val top-5 error", "{:.2%}"),
    ("lr", "lr", "{:.3g}"),
    ("time_s", "time (s)", "{:.0f}"),
    ("skipped", "skipped", "{}"),
    ("color_score_tower0", "colour of W, tower 0", "{:.3f}"),
    ("color_score_tower1", "colour of W, tower 1", "{:.3f}"),
    ("learned_color_score_tower0", "colour of L, tower 0", "{:.3f}"),
    ("learned_color_score_tower1", "colour of L, tower 1", "{:.3f}"),
    ("color_effect_size", "r (of L)", "{:+.2f}"),
    ("color_p_value", "p (of L)", "{:.2g}"),
    ("color_split", "split", "{}"),
)


def run_metrics(run_dir) -> tuple[list[dict], list[dict], int]:
    """(step lines, epoch lines, unreadable lines) of ``run_dir/metrics.jsonl``.

    A line that is not a well-formed record (not a JSON object, e.g. the last one of a run killed
    mid-write, or an epoch / step line whose counters are not whole numbers or whose values are not
    numbers) is counted and skipped. For an epoch that appears more than once (a resumed run), the
    last line wins.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run folder {run} does not exist; pass the --out folder of twogpu-alexnet train")
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise UserError(
            f"{run} has no metrics.jsonl; pass the folder of a training run (twogpu-alexnet train --out DIR)"
        )
    rows, bad = read_metrics(path)
    steps, epochs = [], {}
    for row in rows:
        if not _well_formed(row):
            bad += 1
        elif row["kind"] == "epoch":
            epochs[row["epoch"]] = row
        elif row["kind"] == "step":
            steps.append(row)
    return steps, [epochs[e] for e in sorted(epochs)], bad


_COUNTERS = {"epoch": ("epoch",), "step": ("epoch", "step")}  # whole numbers each kind of line must carry
_VALUES = ("train_loss", "val_top1_error", "val_top5_error", "lr", "time_s", "img_s", "loss", "skipped",
           "color_score_tower0", "color_score_tower1", "learned_color_score_tower0", "learned_color_score_tower1")


def _well_formed(row) -> bool:
    """A JSON object whose kind's counters are whole numbers and whose known values are numbers or null."""
    if not isinstance(row, dict):
        return False
    if row.get("kind") not in _COUNTERS:
        return True  # other kinds of line are kept out of the tables without complaint
    if not all(isinstance(row.get(k), int) and not isinstance(row.get(k), bool) for k in _COUNTERS[row["kind"]]):
        return False
    return all(row.get(k) is None or (isinstance(row[k], (int, float)) and not isinstance(row[k], bool))
               for k in _VALUES)


def build_report(run_dir, out_dir=None) -> dict:
    """Write ``report.html`` (and the curve PNGs) for ``run_dir``; returns what was written and found."""
    run = Path(run_dir)
    steps, epochs, bad = run_metrics(run)
    out = output_folder(out_dir) if out_dir else output_folder(files.make_folder(run / "report", "the report"))
    curves = save_training_curves(steps, epochs, out)
    grids = sorted((run / "kernels").glob("*.png")) if (run / "kernels").is_dir() else []
    towers, towers_note, figure = _last_checkpoint_summary(run, out)
    summary = _summary(epochs)
    config = (run / "config.toml").read_text(errors="replace") if (run / "config.toml").is_file() else None
    summary.update(_run_facts(config, steps, towers))
    configs = checkpoint_configs(run)

    page = _page(run, summary, epochs, curves, grids, towers, towers_note, config, bad, figure, configs)
    html_path = out / "report.html"
    files.write_atomic(html_path, page)
    return {
        "run": str(run),
        "html": str(html_path),
        "plots": {name: str(p) for name, p in (curves or {}).items()},
        "plots_missing": None if curves is not None else PLOTS_HINT,
        "kernel_grids": [str(p) for p in grids],
        "kernel_figure": str(figure) if figure else None,
        "configs": [{"checkpoints": names, "step": step} for names, step, _ in configs],
        "epochs": len(epochs),
        "steps": len(steps),
        "unreadable_lines": bad,
        **summary,
        "towers": towers,
    }


def _summary(epochs: list[dict]) -> dict:
    def best(key):
        rows = [r for r in epochs if _number(r.get(key))]
        if not rows:
            return None, None
        row = min(rows, key=lambda r: r[key])
        return row[key], row["epoch"]

    top1, top1_epoch = best("val_top1_error")
    top5, top5_epoch = best("val_top5_error")
    last = epochs[-1] if epochs else {}
    return {
        "best_val_top1_error": top1, "best_top1_epoch": top1_epoch,
        "best_val_top5_error": top5, "best_top5_epoch": top5_epoch,
        "last_epoch": last.get("epoch"), "last_val_top1_error": last.get("val_top1_error"),
        "last_val_top5_error": last.get("val_top5_error"), "last_train_loss": last.get("train_loss"),
        "total_time_s": sum(r["time_s"] for r in epochs if _number(r.get("time_s"))) or None,
    }


def _last_checkpoint_summary(run: Path, out: Path):
    """The colour statistics of checkpoints/last.pt and its W-beside-L figure, or (None, why not, None)."""
    path = run / "checkpoints" / "last.pt"
    if not path.is_file():
        return None, "no checkpoints/last.pt in this run", None
    try:
        state, meta = load_weights(path)
        step = meta.get("step") if isinstance(meta.get("step"), int) else None
        init = meta.get("conv1_init")
        summary = run_specialization(state, init, run_dir=run, step=step, meta=meta)
    except UserError as exc:
        return None, str(exc), None
    summary["epoch"] = meta.get("epoch")
    summary["preset"] = meta.get("preset")
    panels = [("weights W", kernel_grid(state))]
    if summary["measured"] == "learned":
        panels.append((score_name(summary), kernel_grid(learned_state(state, init, summary["init_scale"]))))
    layout = grid_layout(state)
    rows = (layout.tower_height / 2, layout.tower_height * 1.5 + layout.gap)
    figure = save_kernel_figure(panels, out / "kernels_last.png",
                                title=f"checkpoints/last.pt, epoch {meta.get('epoch')}", tower_rows=rows)
    return summary, None, figure


def checkpoint_configs(run: Path) -> list[tuple[list[str], int | None, str]]:
    """Every distinct config the run's kept checkpoints were written under (a resume with --set changes it):
    (checkpoint names, the earliest step among them, the config as TOML), earliest first. Tensors are
    memory-mapped, not read."""

    from ..engine.config import from_dict, to_toml

    found: dict[str, tuple[list[str], int | None]] = {}
    folder = run / "checkpoints"
    for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
        try:
            payload = read_file(path, mmap=True)  # the one checkpoint reader
            text = to_toml(from_dict(payload["config"]))
        except Exception:  # unreadable, not a training checkpoint, or a config of another version: left out
            continue
        step = payload.get("step") if isinstance(payload.get("step"), int) else None
        names, first = found.get(text, ([], None))
        found[text] = (names + [path.name], step if first is None or (step is not None and step < first) else first)
    return sorted(((names, step, text) for text, (names, step) in found.items()),
                  key=lambda c: (c[1] is None, c[1] or 0))


def _run_facts(config: str | None, steps: list[dict], towers: dict | None) -> dict:
    """Preset, device, steps and data of the run, from config.toml and the metrics (None where unknown)."""
    import tomllib

    try:
        c = tomllib.loads(config) if config else {}
    except tomllib.TOMLDecodeError:
        c = {}
    model, data, train = c.get("model", {}), c.get("data", {}), c.get("train", {})
    last_step = max((r["step"] for r in steps), default=None)
    return {"preset": model.get("preset") or (towers or {}).get("preset"),
            "device": f"{model.get('mode', '?')} on {', '.join(model.get('devices') or []) or 'auto'}"
            if model else None,
            "steps_done": last_step, "batch_size": train.get("batch_size"),
            "data": f"{data.get('source', '?')}: {data.get('root') or '(built in)'}" if data else None}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _cell(value, fmt: str) -> str:
    if value is None:
        return ""
    try:
        return html.escape(fmt.format(value))
    except (ValueError, TypeError):
        return html.escape(str(value))


def _table(headers, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; image-rendering: pixelated; }
.curves img { width: 48%; image-rendering: auto; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; }
figcaption, .note { color: #666; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def _page(run, summary, epochs, curves, grids, towers, towers_note, config, bad, figure=None, configs=()) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run.name)} - "
        f"twogpu-alexnet report</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Run {html.escape(run.name)}</h1>",
        f"<p class='note'>{html.escape(str(run.resolve()))}</p>",
    ]

    parts.append("<h2>Summary</h2>")
    rows = [
        ("preset", _cell(summary["preset"], "{}")),
        ("device", _cell(summary["device"], "{}")),
        ("data", _cell(summary["data"], "{}")),
        ("steps (batch)", _cell(summary["steps_done"], "{}") + _cell(summary["batch_size"], " ({})")),
        ("epochs", _cell(summary["last_epoch"], "{}")),
        ("best val top-1 error", _cell(summary["best_val_top1_error"], "{:.2%}") + _at(summary["best_top1_epoch"])),
        ("best val top-5 error", _cell(summary["best_val_top5_error"], "{:.2%}") + _at(summary["best_top5_epoch"])),
        ("last train loss", _cell(summary["last_train_loss"], "{:.4f}")),
        ("training time", _cell(summary["total_time_s"], "{:.0f} s")),
    ]
    parts.append(_table(("", "value"), [(html.escape(k), v) for k, v in rows]))
    if bad:
        parts.append(f"<p class='note'>{bad} unreadable line(s) in metrics.jsonl were skipped.</p>")

    parts.append("<h2>Curves</h2>")
    if curves is None:
        parts.append(f"<p class='note'>No curves: {html.escape(PLOTS_HINT)}, then run twogpu-alexnet report again.</p>")
    elif not curves:
        parts.append("<p class='note'>No epoch or step lines with values to plot yet.</p>")
    else:
        parts.append("<div class='curves'>" + "".join(_image(curves[n], n) for n in CURVES if n in curves) + "</div>")

    parts.append("<h2>Do the towers specialize?</h2>")
    if towers is not None:
        parts.append(_towers_html(towers))
    else:
        parts.append(f"<p class='note'>No colour statistics: {html.escape(towers_note)}.</p>")
    if figure:
        parts.append(f"<figure>{_image(figure, 'conv1 of checkpoints/last.pt: W and the learned part')}<figcaption>"
                     "conv1 of checkpoints/last.pt: the weights W and the learned part L side by side; tower 0 in "
                     "the top rows, tower 1 below</figcaption></figure>")
    if grids:
        parts.append("<p>conv1 kernels W at the saved epochs, as in the paper's Figure 3: tower 0 in the top rows, "
                     "tower 1 below; each kernel contrast-normalized on its own.</p>")
        parts += [
            f"<figure>{_image(p, p.stem)}<figcaption>{html.escape(p.stem.replace('_', ' '))}</figcaption></figure>"
            for p in grids
        ]
    else:
        parts.append("<p class='note'>No kernel grids in kernels/ (the trainer saves them at chosen epochs).</p>")

    parts.append("<h2>Epochs</h2>")
    present = [c for c in EPOCH_COLUMNS if any(r.get(c[0]) is not None for r in epochs)]
    parts.append(_table([c[1] for c in present], [[_cell(r.get(k), f) for k, _, f in present] for r in epochs]))
    if config is not None:
        parts.append("<h2>Configuration</h2><p class='note'>config.toml: the settings of the run's latest start "
                     "(a resume with --set rewrites it).</p>" f"<pre>{html.escape(config)}</pre>")
    if len(configs) > 1:
        parts.append(f"<p>The kept checkpoints were written under {len(configs)} different configurations (the run "
                     "was resumed with other settings); earliest first:</p>")
        for names, step, text in configs:
            parts.append(f"<p class='note'>{html.escape(', '.join(names))} (from step {html.escape(str(step))}):</p>"
                         f"<pre>{html.escape(text)}</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _at(epoch) -> str:
    return "" if epoch is None else f" (epoch {html.escape(str(epoch))})"


def _towers_html(t: dict) -> str:
    rows = [[str(s["tower"]), str(s["n"]), f"{s['mean']:.3f}", f"{s['median']:.3f}",
             f"{s['q1']:.3f}", f"{s['q3']:.3f}", f"{s['count_above']} ({s['frac_above']:.0%})", f"{s['red_green']:.3f}",
             f"{s['blue_yellow']:.3f}", f"{s['low_frequency']:.3f}",
             "" if s.get("moved_median") is None else f"{s['moved_median']:.0%}"] for s in t["towers"]]
    table = _table(("tower", "kernels", "mean", "median", "q1", "q3", f"> {t['threshold']:g}",
                    "red-green", "blue-yellow", "low frequency", "moved"), rows)
    where = f"checkpoints/last.pt (epoch {t['epoch']})" if t.get("epoch") is not None else "checkpoints/last.pt"
    w = t["weights"]["towers"]
    return (f"<p>Colour-specificity score (share of a kernel's energy outside gray) of the "
            f"{html.escape(score_name(t))} of conv1, in {html.escape(where)}:</p>" + table
            + f"<p><b>{html.escape(t['verdict'])}</b>.</p>"
            + f"<p class='note'>Descriptive: difference of means {t['difference']:+.3f} (tower 1 - tower 0), "
            f"Fisher p = {t['fisher_p_value']:.2g} (kernels above {t['threshold']:g}); the weights W score "
            f"{w[0]['mean']:.3f} / {w[1]['mean']:.3f} (random kernels 0.667), "
            f"r = {t['weights']['effect_size']:+.2f}.</p>")
