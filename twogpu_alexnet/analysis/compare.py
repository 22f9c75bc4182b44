"""Across runs: one verdict per training run, the across-arm test and one conclusion (the protocol of
``docs/specialization.md``).

Each run folder's ``checkpoints/last.pt`` gets the per-run verdict of
:func:`~twogpu_alexnet.analysis.kernels.run_specialization` (``split``). The two-tower runs' split
count is tested against the controls' (one-tower presets, whose two conv1 halves are an arbitrary
split) with one-sided Fisher's exact test at ``ALPHA``; the two-tower split rate gets its one-sided
Clopper-Pearson lower bound; :func:`conclusion` turns those numbers into one sentence.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import UserError
from ..model.load import infer_preset, load_weights
from ..spec import get_spec
from .kernels import ALPHA, check_conv1, is_control, run_specialization

PROTOCOL_RUNS = (10, 5)  # two-tower runs, controls
CONFIDENCE = 0.95  # of the one-sided Clopper-Pearson lower bound of the split rate


def fisher_one_sided(a: int, n_a: int, b: int, n_b: int) -> float:
    """One-sided Fisher exact p of "group a's rate exceeds group b's": P(X >= a), X hypergeometric with
    the table's margins (``a`` of ``n_a`` and ``b`` of ``n_b``). Exact integer arithmetic."""
    if not (0 <= a <= n_a and 0 <= b <= n_b) or n_a + n_b == 0:
        raise ValueError(f"counts must lie in 0..n, got {a}/{n_a} and {b}/{n_b}")
    k = a + b
    upper = sum(math.comb(n_a, x) * math.comb(n_b, k - x) for x in range(a, min(k, n_a) + 1))
    return upper / math.comb(n_a + n_b, k)


def clopper_pearson_lower(x: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson lower bound of a rate from ``x`` successes of ``n``: the p at which
    P(X >= x | n, p) = 1 - confidence (0 when x = 0), by bisection on the exact binomial tail."""
    if not 0 <= x <= n or n == 0:
        raise ValueError(f"need 0 <= x <= n and n > 0, got {x} of {n}")
    if x == 0:
        return 0.0
    tail = 1 - confidence

    def upper_tail(p: float) -> float:
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(x, n + 1))

    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if upper_tail(mid) < tail else (lo, mid)
    return (lo + hi) / 2


def across(rows: list[dict], alpha: float = ALPHA, confidence: float = CONFIDENCE) -> dict:
    """The across-arm numbers of the protocol from per-run rows (each with ``control`` and ``split``)."""
    towers = [r for r in rows if not r["control"]]
    controls = [r for r in rows if r["control"]]
    a, n_a = sum(r["split"] for r in towers), len(towers)
    b, n_b = sum(r["split"] for r in controls), len(controls)
    return {
        "two_tower_splits": a, "two_tower_runs": n_a, "control_splits": b, "control_runs": n_b,
        "fisher_p": fisher_one_sided(a, n_a, b, n_b) if n_a and n_b else None,
        "split_rate": a / n_a if n_a else None,
        "split_rate_lower": clopper_pearson_lower(a, n_a, confidence) if n_a else None,
        "confidence": confidence, "alpha": alpha,
    }


def conclusion(rows: list[dict], result: dict) -> str:
    """One sentence that follows from the numbers, by the protocol's rule (docs/specialization.md)."""
    a, n_a = result["two_tower_splits"], result["two_tower_runs"]
    b, n_b = result["control_splits"], result["control_runs"]
    steps = sorted({r["steps"] for r in rows}, key=lambda s: (s is None, s or 0))
    size = "" if (n_a, n_b) == PROTOCOL_RUNS else (f" (the protocol asks for {PROTOCOL_RUNS[0]} + {PROTOCOL_RUNS[1]}"
                                                   f" runs; there were {n_a} + {n_b})")
    counts = f"{a} of {n_a} two-tower runs and {b} of {n_b} controls split"
    if len(steps) != 1 or steps[0] is None:
        return (f"inconclusive: the runs do not share one step count ({', '.join(map(str, steps))}); the protocol "
                f"compares runs at one fixed step count{size}")
    if n_a == 0 or n_b == 0:
        return f"inconclusive: {counts}; the across-arm test needs two-tower runs and controls{size}"
    p, lower = result["fisher_p"], result["split_rate_lower"]
    tested = f"one-sided Fisher p = {p:.2g}"
    if p < result["alpha"]:
        return (f"the towers split: {counts} at {steps[0]} steps ({tested} < {result['alpha']:g}); split rate "
                f"{a / n_a:.2f}, at least {lower:.2f} ({100 * result['confidence']:g}% Clopper-Pearson){size}")
    if a == 0:
        return f"no split at {steps[0]} steps: {counts} ({tested}){size}"
    return f"inconclusive: {counts} at {steps[0]} steps ({tested}, not below {result['alpha']:g}){size}"


def compare_runs(run_dirs, **options) -> dict:
    """``runs`` (one row per run folder, in the order given), ``across`` and ``conclusion``.

    Options as :func:`~twogpu_alexnet.analysis.kernels.summarize_towers` (threshold, alpha,
    min_effect, permutations, seed).
    """
    if not run_dirs:
        raise UserError("--compare needs at least one run folder (twogpu-alexnet train --out DIR)")
    rows = [run_row(Path(d), **options) for d in run_dirs]
    numbers = across(rows, options.get("alpha", ALPHA))
    return {"runs": rows, "across": numbers, "conclusion": conclusion(rows, numbers)}


def run_row(run: Path, **options) -> dict:
    """The per-run verdict of one run folder's last checkpoint, as one flat row."""
    path = run / "checkpoints" / "last.pt"
    if not run.is_dir():
        raise UserError(f"run folder {run} does not exist; pass folders written by twogpu-alexnet train --out")
    if not path.is_file():
        raise UserError(f"{run} has no checkpoints/last.pt; pass folders written by twogpu-alexnet train --out")
    state, meta = load_weights(path)
    name = meta.get("preset") or infer_preset(state)
    spec = get_spec(name)
    check_conv1(state, spec, path)
    step = meta.get("step") if isinstance(meta.get("step"), int) else None
    s = run_specialization(state, meta.get("conv1_init"), run_dir=run, step=step, meta=meta, **options)
    t0, t1 = s["towers"]
    return {
        "run": str(run),
        "preset": name,
        "control": is_control(spec),
        "seed": ((meta.get("config") or {}).get("train") or {}).get("seed"),
        "epoch": meta.get("epoch"),
        "steps": step,
        "measured": s["measured"],
        "init_scale": s["init_scale"],
        "init_scale_exact": s["init_scale_exact"],
        "split": s["split"],
        "effect_size": s["effect_size"],
        "p_value": s["p_value"],
        "color_specific_tower": s["color_specific_tower"],
        "tower0_mean": t0["mean"],
        "tower1_mean": t1["mean"],
        "moved_median": [t0.get("moved_median"), t1.get("moved_median")],
        "low_frequency": [t0["low_frequency"], t1["low_frequency"]],
        "fisher_p_value": s["fisher_p_value"],
        "weights_tower0_mean": s["weights"]["towers"][0]["mean"],
        "weights_tower1_mean": s["weights"]["towers"][1]["mean"],
        "weights_effect_size": s["weights"]["effect_size"],
        "verdict": s["verdict"],
    }
