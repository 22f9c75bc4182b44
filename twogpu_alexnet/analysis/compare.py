"""Across runs: one row per training run, the form a claim about the towers' split needs.

For each run folder, the colour statistics of ``checkpoints/last.pt`` (the learned part W - W0 when
the checkpoint keeps conv1 at step 0), and the counts that matter: how many two-tower runs split,
how many controls (one-tower presets, whose two conv1 halves are an arbitrary split) do.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..model.load import infer_preset, load_weights
from ..spec import get_spec
from .kernels import check_conv1, specialization


def compare_runs(run_dirs, **options) -> dict:
    """``runs`` (one row per run folder, in the order given) and the split counts.

    Options as :func:`~twogpu_alexnet.analysis.kernels.specialization` (threshold, alpha,
    permutations, seed, min_share).
    """
    if not run_dirs:
        raise UserError("--compare needs at least one run folder (twogpu-alexnet train --out DIR)")
    rows = [run_row(Path(d), **options) for d in run_dirs]
    towers = [r for r in rows if not r["control"]]
    controls = [r for r in rows if r["control"]]
    return {
        "runs": rows,
        "two_tower_runs": len(towers),
        "two_tower_split": sum(r["color_specific_tower"] is not None for r in towers),
        "control_runs": len(controls),
        "control_split": sum(r["color_specific_tower"] is not None for r in controls),
        "not_measurable": sum(not r["measurable"] for r in rows),
    }


def run_row(run: Path, **options) -> dict:
    """The colour statistics of one run folder's last checkpoint, as one flat row."""
    path = run / "checkpoints" / "last.pt"
    if not run.is_dir():
        raise UserError(f"run folder {run} does not exist; pass folders written by twogpu-alexnet train --out")
    if not path.is_file():
        raise UserError(f"{run} has no checkpoints/last.pt; pass folders written by twogpu-alexnet train --out")
    state, meta = load_weights(path)
    name = meta.get("preset") or infer_preset(state)
    spec = get_spec(name)
    check_conv1(state, spec)
    s = specialization(state, meta.get("conv1_init"), **options)
    gate = s["gate"]
    return {
        "run": str(run),
        "preset": name,
        "control": not any(layer.reads == "own" for layer in spec.convs),
        "epoch": meta.get("epoch"),
        "steps": meta.get("step"),
        "measured": s["measured"],
        "color_kernels": gate["color_kernels"],
        "kernels": gate["kernels"],
        "color_share": gate["share"],
        "measurable": gate["measurable"],
        "tower0_mean": s["towers"][0]["mean"],
        "tower1_mean": s["towers"][1]["mean"],
        "weights_tower0_mean": s["weights"]["towers"][0]["mean"],
        "weights_tower1_mean": s["weights"]["towers"][1]["mean"],
        "effect_size": s["effect_size"],
        "p_value": s["p_value"],
        "fisher_p_value": s["fisher_p_value"],
        "color_specific_tower": s["color_specific_tower"],
        "verdict": s["verdict"],
    }
