"""Do the towers specialize? Colour specificity of the conv1 kernels, per tower (paper section 6.1).

The paper's Figure 3: of the 96 conv1 kernels, the 48 on GPU 1 came out largely colour-agnostic and
the 48 on GPU 2 largely colour-specific, in every run. This module measures that, under the protocol
of ``docs/specialization.md`` (fixed before the study's runs).

**The score.** A conv1 kernel ``W`` (3 x k x k) adds up, at each pixel, a colour vector
``(W_r, W_g, W_b)``. The colour-specificity score is the share of the kernel's energy outside the
achromatic direction ``(1, 1, 1) / sqrt(3)``::

    s(W) = || W - mean_rgb(W) ||^2 / || W ||^2          (sums over channels and pixels)

0 for a gray kernel, 1 for a pure colour-opponent kernel (R + G + B = 0 at every pixel), unchanged
when a kernel is scaled; it splits into red-green ``(1, -1, 0) / sqrt(2)`` and blue-yellow
``(-1, -1, 2) / sqrt(6)`` shares. Beside it (secondary), the spatial-frequency score: the share of a
kernel's energy at radial frequencies up to ``LOW_FREQUENCY`` cycles per pixel (Figure 3's
colour blobs are low-frequency, its gray Gabors high).

**The primary score** is that of the learned part ``L = W - c * W0`` (``W0``: conv1 at step 0, kept
in every checkpoint; ``c``: the factor SGD's weight decay has put on ``W0``, see
:mod:`.learned`) whenever ``W0`` is known, else of ``W`` (a published network's weights).

**The per-run verdict** (:func:`specialization`, the one function the trainer, ``kernels``,
``--compare`` and the report call): the rank-biserial correlation ``r`` of tower 1's scores against
tower 0's (P(tower-1 kernel > tower-0 kernel) - P(<)) and a two-sided permutation test of ``r``,
exact over all reassignments of the kernels to the towers (or a seeded random sample of them).
The run *splits* when ``|r| >= MIN_EFFECT`` and ``p < ALPHA``; the colour-specific tower is the
sign of ``r``. Fisher's exact test on the counts of kernels scoring above ``THRESHOLD``, the
difference of means and Cohen's d are descriptive.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from ..errors import UserError
from ..files import write_atomic
from ..model.load import check_finite
from ..spec import get_spec
from . import output_folder
from .plots import save_kernel_figure, save_score_plot
from .protocol import ALPHA, BASELINE, MAX_PERMUTATIONS, MIN_EFFECT, PERMUTATIONS, THRESHOLD  # noqa: F401 (re-exported)

COLOR_AXES = ("achromatic", "red_green", "blue_yellow")
# Rows: an orthonormal basis of RGB space, achromatic first, then the two opponent axes.
_COLOR_BASIS = (
    (1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)),
    (1 / math.sqrt(2), -1 / math.sqrt(2), 0.0),
    (-1 / math.sqrt(6), -1 / math.sqrt(6), 2 / math.sqrt(6)),
)
_CHUNK = 20_000  # permutations drawn at once (memory: chunk x kernels indices)
LOW_FREQUENCY = 0.125  # cycles per pixel (a quarter of Nyquist): the spatial-frequency score's cut


# ----------------------------------------------------------------------------------------------
# Per-kernel scores


def _as_kernels(w) -> torch.Tensor:
    w = torch.as_tensor(w).detach().to("cpu", torch.float64)
    if w.ndim != 4 or w.shape[1] != 3:
        raise UserError(f"conv1 weights must be K x 3 x k x k (RGB kernels), got shape {tuple(w.shape)}")
    return w


def color_energy(w) -> torch.Tensor:
    """Share of each kernel's energy along (achromatic, red-green, blue-yellow): K x 3, rows sum to 1.

    ``w``: K x 3 x k x k conv1 weights (tensor or array). An all-zero kernel gets (0, 0, 0).
    """
    w = _as_kernels(w)
    basis = torch.tensor(_COLOR_BASIS, dtype=torch.float64)
    coords = torch.einsum("ac,kcij->kaij", basis, w)  # the kernel in the opponent colour basis
    energy = coords.square().sum(dim=(2, 3))  # K x 3
    total = energy.sum(dim=1, keepdim=True)
    return torch.where(total > 0, energy / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def color_scores(w) -> torch.Tensor:
    """Colour-specificity score per kernel: ||W - mean_rgb W||^2 / ||W||^2, K values in [0, 1]."""
    w = _as_kernels(w)
    total = w.square().sum(dim=(1, 2, 3))
    color = (w - w.mean(dim=1, keepdim=True)).square().sum(dim=(1, 2, 3))
    scores = torch.where(total > 0, color / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return scores.clamp(0.0, 1.0)


def low_frequency_scores(w, cutoff: float = LOW_FREQUENCY) -> torch.Tensor:
    """Share of each kernel's energy at radial spatial frequency <= ``cutoff`` cycles/pixel, K values in [0, 1].

    The kernel's 2-d DFT at its own size (Parseval: the shares of all frequencies sum to 1), summed
    over the three channels; frequency 0 (the kernel's mean) counts as low. An all-zero kernel scores 0.
    """
    w = _as_kernels(w)
    k_h, k_w = w.shape[-2:]
    power = torch.fft.fft2(w).abs().square().sum(dim=1)  # K x k x k
    fy, fx = torch.fft.fftfreq(k_h, dtype=torch.float64), torch.fft.fftfreq(k_w, dtype=torch.float64)
    low = (fy[:, None].square() + fx[None, :].square()).sqrt() <= cutoff + 1e-12
    total = power.sum(dim=(1, 2))
    share = (power * low).sum(dim=(1, 2)) / total.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(total > 0, share, 0.0).clamp(0.0, 1.0)


def conv1_weights(state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Tower 0's and tower 1's conv1 kernels from a state dict in either layout (cpu tensors)."""
    if "towers.0.conv1.weight" in state and "towers.1.conv1.weight" in state:
        w0, w1 = state["towers.0.conv1.weight"], state["towers.1.conv1.weight"]
    elif "conv1.weight" in state:
        w = state["conv1.weight"]
        if w.ndim < 1 or w.shape[0] % 2:
            raise UserError(f"grouped conv1.weight has shape {tuple(w.shape)}, not two equal halves of kernels; "
                            "pass a state dict of this package's model")
        w0, w1 = w.chunk(2, dim=0)
    else:
        raise UserError("the state dict has no conv1 weights (towers.0.conv1.weight or conv1.weight); "
                        "pass a checkpoint of this package's model")
    w0, w1 = w0.detach().cpu(), w1.detach().cpu()
    _as_kernels(w0), _as_kernels(w1)
    if w0.shape != w1.shape:
        raise UserError(f"conv1 of tower 0 has shape {tuple(w0.shape)} and of tower 1 {tuple(w1.shape)}; the towers "
                        "must match: pass the state dict of one two-tower network")
    return w0, w1


# ----------------------------------------------------------------------------------------------
# Statistics per tower and between towers


def _midranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of ``x``, ties given their average rank."""
    order = x.argsort(stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    for value in x[order][1:][x[order][1:] == x[order][:-1]].unique():  # ties only
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _r_from_rank_sum(rank_sum_b, n_a: int, n_b: int):
    """Rank-biserial r from the rank sum of group b: 2 U_b / (n_a n_b) - 1, U_b = R_b - n_b (n_b + 1) / 2."""
    return 2 * (rank_sum_b - n_b * (n_b + 1) / 2) / (n_a * n_b) - 1


def rank_biserial(a, b) -> float:
    """P(b > a) - P(b < a) over all pairs: the rank-biserial correlation, in [-1, 1]."""
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    sign = torch.sign(b[:, None] - a[None, :])
    return sign.mean().item()


def exact_rank_sum_distribution(ranks: torch.Tensor, n_b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every way of choosing ``n_b`` of the pooled ``ranks`` (mid-ranks, so multiples of 1/2) as group b:
    (possible rank sums, their probabilities), counted by dynamic programming over the items.

    ``counts[j, s]`` = number of j-subsets of the items seen so far whose doubled rank sum is s; float64
    counts (C(96, 48) ~ 6e27) keep 16 significant digits.
    """
    import numpy as np

    doubled = [int(v) for v in torch.round(2 * ranks).to(torch.int64).tolist()]
    total = sum(doubled)
    counts = np.zeros((n_b + 1, total + 1))
    counts[0, 0] = 1.0
    reach = 0  # the largest doubled sum reachable so far
    for v in doubled:
        reach += v
        counts[1:, v:reach + 1] += counts[:-1, :reach + 1 - v].copy()
    probs = torch.from_numpy(counts[n_b] / counts[n_b].sum())
    keep = probs > 0
    return torch.arange(total + 1, dtype=torch.float64)[keep] / 2, probs[keep]


def permutation_test_r(a, b, permutations: int = PERMUTATIONS, seed: int = 0) -> tuple[float, float]:
    """Two-sided permutation test of the rank-biserial r of b against a: returns (r, p).

    ``permutations = 0`` (the default): exact, over all C(n_a + n_b, n_b) reassignments of the pooled
    mid-ranks (:func:`exact_rank_sum_distribution`), p = P(|r_perm| >= |r|). ``permutations > 0``: that
    many random reassignments (seeded, in chunks), p = (1 + #{|r_perm| >= |r|}) / (1 + permutations).
    """
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    n_a, n_b = len(a), len(b)
    ranks = _midranks(torch.cat([a, b]))
    observed = _r_from_rank_sum(ranks[n_a:].sum(), n_a, n_b).item()
    if permutations == 0:
        sums, probs = exact_rank_sum_distribution(ranks, n_b)
        r = _r_from_rank_sum(sums, n_a, n_b)
        return observed, min(1.0, probs[r.abs() >= abs(observed) - 1e-9].sum().item())
    gen = torch.Generator().manual_seed(seed)
    extreme, left = 0, permutations
    while left > 0:
        chunk = min(left, _CHUNK)
        order = torch.rand(chunk, n_a + n_b, generator=gen).argsort(dim=1)[:, n_a:]
        r = _r_from_rank_sum(ranks[order].sum(dim=1), n_a, n_b)
        extreme += int((r.abs() >= abs(observed) - 1e-9).sum())
        left -= chunk
    return observed, (1 + extreme) / (1 + permutations)


def permutation_test(a, b, permutations: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Two-sided permutation test of mean(b) - mean(a): returns (difference, p-value). Descriptive only."""
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    pooled = torch.cat([a, b])
    gen = torch.Generator().manual_seed(seed)
    order = torch.rand(permutations, len(pooled), generator=gen).argsort(dim=1)
    shuffled = pooled[order]
    diffs = shuffled[:, len(a):].mean(dim=1) - shuffled[:, : len(a)].mean(dim=1)
    observed = (b.mean() - a.mean()).item()
    extreme = (diffs.abs() >= abs(observed) - 1e-12).sum().item()
    return observed, (1 + extreme) / (1 + permutations)


def fisher_exact(above_a: int, n_a: int, above_b: int, n_b: int) -> float:
    """Two-sided Fisher exact p-value of ``above_a`` of ``n_a`` against ``above_b`` of ``n_b``.

    Conditional on the margins the count of group a is hypergeometric; p sums the probabilities of
    every table no more likely than the observed one. Exact integer arithmetic (``math.comb``).
    """
    if not (0 <= above_a <= n_a and 0 <= above_b <= n_b):
        raise ValueError(f"counts must lie in 0..n, got {above_a}/{n_a} and {above_b}/{n_b}")
    above = above_a + above_b
    weight = [math.comb(n_a, x) * math.comb(n_b, above - x) for x in range(max(0, above - n_b), min(above, n_a) + 1)]
    observed = math.comb(n_a, above_a) * math.comb(n_b, above_b)
    return min(1.0, sum(w for w in weight if w <= observed) / math.comb(n_a + n_b, above))


def fisher_min_count(n_a: int, n_b: int, alpha: float = ALPHA) -> int | None:
    """The fewest kernels above the threshold at which a perfect split (all in one tower) reaches
    two-sided Fisher p < ``alpha``; None when no count does."""
    for k in range(1, n_b + 1):
        if fisher_exact(0, n_a, k, n_b) < alpha:
            return k
    return None


def cohens_d(a, b) -> float | None:
    """(mean(b) - mean(a)) / pooled standard deviation; None when both towers have zero spread."""
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    na, nb = len(a), len(b)
    pooled = ((na - 1) * a.var() + (nb - 1) * b.var()) / (na + nb - 2)
    if pooled.item() <= 0:
        return None
    return ((b.mean() - a.mean()) / pooled.sqrt()).item()


def _describe(scores: torch.Tensor, energy: torch.Tensor, low: torch.Tensor, tower: int, threshold: float) -> dict:
    q1, median, q3 = torch.quantile(scores, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return {
        "tower": tower,
        "n": len(scores),
        "mean": scores.mean().item(),
        "median": median,
        "q1": q1,
        "q3": q3,
        "min": scores.min().item(),
        "max": scores.max().item(),
        "frac_above": (scores > threshold).double().mean().item(),
        "count_above": int((scores > threshold).sum().item()),
        # mean share of energy along each opponent axis (red_green + blue_yellow = mean score)
        "red_green": energy[:, 1].mean().item(),
        "blue_yellow": energy[:, 2].mean().item(),
        "low_frequency": low.mean().item(),  # mean share of energy below LOW_FREQUENCY cycles/pixel
    }


def summarize_towers(w0, w1, *, threshold: float = THRESHOLD, alpha: float = ALPHA, min_effect: float = MIN_EFFECT,
                     permutations: int = PERMUTATIONS, seed: int = 0) -> dict:
    """Per-tower score statistics, the between-tower tests and the per-run verdict ``split`` for two
    sets of conv1 kernels (the protocol: |rank-biserial| >= ``min_effect`` and permutation p < ``alpha``)."""
    s0, s1 = color_scores(w0), color_scores(w1)
    e0, e1 = color_energy(w0), color_energy(w1)
    f0, f1 = low_frequency_scores(w0), low_frequency_scores(w1)
    r, p_value = permutation_test_r(s0, s1, permutations, seed)
    split = abs(r) >= min_effect and p_value < alpha
    towers = [_describe(s0, e0, f0, 0, threshold), _describe(s1, e1, f1, 1, threshold)]
    return {
        "towers": towers,
        "split": split,
        "color_specific_tower": (1 if r > 0 else 0) if split else None,
        "effect_size": r,
        "effect_size_kind": "rank-biserial (tower 1 vs tower 0)",
        "p_value": p_value,
        "p_value_kind": "two-sided permutation test of the rank-biserial r",
        "fisher_p_value": fisher_exact(towers[0]["count_above"], towers[0]["n"], towers[1]["count_above"],
                                       towers[1]["n"]),
        "fisher_min_count": fisher_min_count(len(s0), len(s1), alpha),
        "cohens_d": cohens_d(s0, s1),
        "difference": (s1.mean() - s0.mean()).item(),
        "low_frequency_effect_size": rank_biserial(f0, f1),
        "threshold": threshold,
        "alpha": alpha,
        "min_effect": min_effect,
        "permutations": permutations,
        "seed": seed,
        "scores": [s0.tolist(), s1.tolist()],
        "low_frequency_scores": [f0.tolist(), f1.tolist()],
    }


def tower_summary(state: dict, **options) -> dict:
    """:func:`summarize_towers` of a state dict's conv1 (the weights ``W``)."""
    return summarize_towers(*conv1_weights(state), **options)


def specialization(state: dict, init: dict | None = None, *, init_scale: float | None = 1.0, **options) -> dict:
    """The one colour verdict: the protocol's statistics of conv1 and whether the towers split.

    ``init``: conv1 at step 0 (a state dict with the same conv1 keys), or None when unknown.
    ``init_scale``: ``c``, the factor weight decay has put on ``W0`` (:mod:`.learned`; 1 gives
    ``W - W0``). With ``init`` the headline is the learned part ``L = W - c * W0``
    (``measured: "learned"``); without it ``W`` (``measured: "weights"``). Returns the headline's
    :func:`summarize_towers` dict plus ``measured``, ``init_scale``, ``moved`` (per tower and kernel
    ``||L|| / ||W0||``), ``weights`` (the statistics of ``W``), ``learned`` (of ``L``, or None) and
    ``verdict`` (one sentence, :func:`verdict_sentence`). Options as :func:`summarize_towers`.
    """
    from .learned import learned_part, movement

    w = conv1_weights(state)
    weights = summarize_towers(*w, **options)
    learned, moved = None, None
    if init is not None:
        w_init = conv1_weights(init)
        for tower, (a, b) in enumerate(zip(w, w_init, strict=True)):
            if a.shape != b.shape:
                raise UserError(f"conv1 at step 0 of tower {tower} has shape {tuple(b.shape)}, the weights "
                                f"{tuple(a.shape)}; pass the step-0 weights of the same network")
        parts = [learned_part(a, b, init_scale) for a, b in zip(w, w_init, strict=True)]
        learned = summarize_towers(*parts, **options)
        moved = [movement(part, b).tolist() for part, b in zip(parts, w_init, strict=True)]
    head = learned if learned is not None else weights
    result = {**head, "measured": "learned" if learned is not None else "weights",
              "init_scale": init_scale if learned is not None else None, "moved": moved,
              "weights": weights, "learned": learned}
    if moved is not None:
        for tower, m in zip(result["towers"], moved, strict=True):
            tower["moved_median"] = float(torch.tensor(m).median())
    result["verdict"] = verdict_sentence(result)
    return result


def score_name(result: dict) -> str:
    """What the headline scores are of: "learned part L = W - c*W0" or "weights W"."""
    if result.get("measured") != "learned":
        return "weights W"
    c = result.get("init_scale")
    return "learned part L = W - W0" if c == 1 else f"learned part L = W - {c:.8g}*W0"


def verdict_sentence(result: dict) -> str:
    """The per-run verdict in words, the same wherever it is printed ("split: ..." or "no split: ...")."""
    stats = (f"{score_name(result)}, rank-biserial r = {result['effect_size']:+.2f}, permutation p = "
             f"{result['p_value']:.2g} (split when |r| >= {result['min_effect']:g} and p < {result['alpha']:g})")
    if result["split"]:
        return f"split: tower {result['color_specific_tower']} is the colour-specific one; {stats}"
    return f"no split; {stats}"


def epoch_color_fields(summary: dict) -> dict:
    """The per-epoch colour fields of a metrics.jsonl line, from :func:`specialization`'s dict.

    ``color_score_tower{0,1}``: mean score of ``W``; ``learned_color_score_tower{0,1}``: of ``L``
    (None without W0); ``color_measured`` says which the verdict is of; then the verdict's numbers,
    ``color_split``, ``color_verdict`` (the sentence), ``conv1_moved_tower{0,1}`` (median
    ``||L|| / ||W0||``) and ``conv1_init_scale``.
    """
    learned = summary["learned"]
    towers = summary["towers"]
    return {
        "color_score_tower0": summary["weights"]["towers"][0]["mean"],
        "color_score_tower1": summary["weights"]["towers"][1]["mean"],
        "learned_color_score_tower0": learned["towers"][0]["mean"] if learned else None,
        "learned_color_score_tower1": learned["towers"][1]["mean"] if learned else None,
        "color_measured": summary["measured"],
        "color_p_value": summary["p_value"],
        "color_fisher_p_value": summary["fisher_p_value"],
        "color_effect_size": summary["effect_size"],
        "color_split": summary["split"],
        "color_specific_tower": summary["color_specific_tower"],
        "color_verdict": summary["verdict"],
        "conv1_moved_tower0": towers[0].get("moved_median"),
        "conv1_moved_tower1": towers[1].get("moved_median"),
        "conv1_init_scale": summary["init_scale"],
    }


def run_specialization(state: dict, init: dict | None, *, run_dir=None, step: int | None = None,
                       meta: dict | None = None, **options) -> dict:
    """:func:`specialization` with ``c`` from the run's SGD history (the trainer's epoch-end hook calls this).

    ``run_dir``: the run folder (its ``metrics.jsonl`` gives the lr of every step); ``step``: the
    steps taken; ``meta``: the checkpoint's entries (``config``, ``optimizer``) or ``{"config": ...}``.
    Adds ``init_scale_exact`` (False when the history had to be filled in from the config).
    """
    from .learned import history, init_scale, sgd_settings

    exact = None
    scale = 1.0
    if init is not None and step is not None:
        meta = meta or {}
        momentum, decay = sgd_settings(meta)
        segments, exact = history(run_dir, step, meta.get("config") or {}, momentum, decay)
        scale = init_scale(segments)
    result = specialization(state, init, init_scale=scale, **options)
    result["init_scale_exact"] = exact if init is not None else None
    return result


# ----------------------------------------------------------------------------------------------
# The Figure-3 grid


@dataclass(frozen=True)
class GridLayout:
    """Geometry of the Figure-3 picture: tower 0's kernels in the top rows, tower 1's below a gap.

    Kernel ``i`` of a tower sits in row ``i // ncol``, column ``i % ncol`` of that tower's block;
    each tile is ``kernel * scale`` pixels square with ``padding`` pixels between tiles and around
    each block, and ``gap`` extra pixels between the two blocks.
    """

    kernels: int  # per tower
    kernel: int  # k of the k x k kernels
    ncol: int = 16
    scale: int = 4
    padding: int = 2
    gap: int = 8

    @property
    def tile(self) -> int:
        return self.kernel * self.scale

    @property
    def rows(self) -> int:
        return -(-self.kernels // self.ncol)

    @property
    def width(self) -> int:
        return self.ncol * (self.tile + self.padding) + self.padding

    @property
    def tower_height(self) -> int:
        return self.rows * (self.tile + self.padding) + self.padding

    @property
    def height(self) -> int:
        return 2 * self.tower_height + self.gap

    def origin(self, tower: int, index: int) -> tuple[int, int]:
        """(y, x) of the top-left pixel of kernel ``index`` of ``tower``."""
        row, col = divmod(index, self.ncol)
        y = tower * (self.tower_height + self.gap) + self.padding + row * (self.tile + self.padding)
        return y, self.padding + col * (self.tile + self.padding)


def default_scale(kernel: int) -> int:
    """Upscaling so a tile is about 40 pixels: 11x11 -> x4 (44 px), 5x5 -> x8 (40 px)."""
    return max(1, math.ceil(40 / kernel))


def grid_layout(state: dict, *, ncol: int = 16, scale: int | None = None, padding: int = 2, gap: int = 8) -> GridLayout:
    w0, _ = conv1_weights(state)
    n, k = w0.shape[0], w0.shape[-1]
    return GridLayout(n, k, min(ncol, n), scale or default_scale(k), padding, gap)


def normalize_kernels(w: torch.Tensor) -> torch.Tensor:
    """Min-max each kernel on its own over all three channels (colours keep their balance) to [0, 1]."""
    w = torch.as_tensor(w, dtype=torch.float32)
    flat = w.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    span = (hi - lo)[:, None, None, None]
    out = (w - lo[:, None, None, None]) / span.clamp_min(1e-12)
    return torch.where(span > 0, out, torch.full_like(w, 0.5))


def kernel_grid(state: dict, *, ncol: int = 16, scale: int | None = None, padding: int = 2, gap: int = 8,
                pad_value: float = 1.0) -> torch.Tensor:
    """The Figure-3 picture as a 3 x H x W tensor in [0, 1] (layout: :class:`GridLayout`)."""
    layout = grid_layout(state, ncol=ncol, scale=scale, padding=padding, gap=gap)
    blocks = []
    for w in conv1_weights(state):
        tiles = normalize_kernels(w).repeat_interleave(layout.scale, dim=2).repeat_interleave(layout.scale, dim=3)
        blocks.append(make_grid(tiles, nrow=layout.ncol, padding=padding, pad_value=pad_value))
    spacer = torch.full((3, gap, layout.width), pad_value)
    grid = torch.cat([blocks[0], spacer, blocks[1]], dim=1)
    assert grid.shape[1:] == (layout.height, layout.width), (grid.shape, layout)
    return grid


def save_kernel_grid(state: dict, path, **options) -> Path:
    """Write the Figure-3 PNG of a state dict's conv1 kernels (options as :func:`kernel_grid`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = kernel_grid(state, **options)
    return write_atomic(path, lambda f: save_image(grid, f, format="png"))


# ----------------------------------------------------------------------------------------------
# One checkpoint, all of the above


def analyze_checkpoint(checkpoint, out_dir, *, preset: str | None = None, **options) -> dict:
    """Load ``checkpoint`` (training checkpoint or plain state dict, either layout), write
    ``out_dir/kernels.png`` (W), ``out_dir/learned.png`` (L, when the checkpoint keeps W0),
    ``out_dir/kernels.json`` and, with matplotlib, ``out_dir/scores.png``.

    Returns :func:`run_specialization`'s dict (the learned part as headline when the checkpoint keeps
    conv1 at step 0; ``c`` from the run folder's history) plus ``preset``, ``control`` (True for a
    one-tower preset, whose two halves of conv1 are an arbitrary split), ``epoch``, ``step`` and ``files``.
    """
    from ..engine.inference import read_checkpoint  # the one reader of checkpoints (evaluate, neighbors, kernels)
    from .learned import run_folder_of

    ck = read_checkpoint(checkpoint, preset)
    state, meta, name = ck.state, ck.meta, ck.preset
    spec = get_spec(name)
    check_conv1(state, spec, checkpoint)
    about = {"checkpoint": str(checkpoint), "preset": name, "epoch": meta.get("epoch"), "step": meta.get("step"),
             # no tower reads only its own tower's maps: the two halves of conv1 are an arbitrary split
             "control": is_control(spec)}
    step = meta.get("step") if isinstance(meta.get("step"), int) else None
    summary = run_specialization(state, meta.get("conv1_init"), run_dir=run_folder_of(checkpoint), step=step,
                                 meta=meta, **options)
    return write_analysis(state, summary, out_dir, about, init=meta.get("conv1_init"),
                          title=f"{Path(checkpoint).name} ({name})")


def is_control(spec) -> bool:
    """A preset with no towers (every connection crosses): its conv1 halves are an arbitrary split."""
    return not any(layer.reads == "own" for layer in spec.convs)


def learned_state(state: dict, init: dict, scale: float) -> dict:
    """The learned part of conv1 as a two-tower conv1 state dict (for the pictures)."""
    from .learned import learned_part

    return {f"towers.{t}.conv1.weight": learned_part(w, w0, scale).float()
            for t, (w, w0) in enumerate(zip(conv1_weights(state), conv1_weights(init), strict=True))}


def write_analysis(state: dict, summary: dict, out_dir, about: dict, *, init: dict | None = None,
                   title: str = "") -> dict:
    """The pictures and ``kernels.json`` of one analysed conv1 in ``out_dir``; ``about`` (where the
    weights come from) leads the returned dict."""
    out = output_folder(out_dir)
    files = {"kernels": str(save_kernel_grid(state, out / "kernels.png"))}
    files["learned"] = None
    panels = [("weights W", kernel_grid(state))]
    if init is not None and summary.get("measured") == "learned":
        learned = learned_state(state, init, summary["init_scale"])
        files["learned"] = str(save_kernel_grid(learned, out / "learned.png"))
        panels.append((score_name(summary), kernel_grid(learned)))
    layout = grid_layout(state)
    figure = save_kernel_figure(panels, out / "figure3.png", title=summary.get("verdict"),
                                tower_rows=(layout.tower_height / 2, layout.tower_height * 1.5 + layout.gap))
    files["figure"] = str(figure) if figure else None
    plot = save_score_plot(summary, out / "scores.png", title=title)
    files["scores"] = str(plot) if plot else None
    result = {**about, **summary, "files": files}
    write_atomic(out / "kernels.json", json.dumps(result, indent=1) + "\n")
    return result


def analyze_state(state: dict, out_dir, about: dict, *, init: dict | None = None, title: str = "",
                  **options) -> dict:
    """:func:`specialization` of ``state`` (``c = 1``) with the pictures and ``kernels.json`` in ``out_dir``."""
    return write_analysis(state, specialization(state, init, **options), out_dir, about, init=init, title=title)


def analyze_weights(path, out_dir, *, key: str | None = None, groups: int = 2, **options) -> dict:
    """Any network's conv1 (see :func:`~twogpu_alexnet.analysis.weights.read_conv1`), its output
    channels split into ``groups`` consecutive equal groups taken as towers (group 0 first)."""
    from .weights import read_conv1

    if groups != 2:
        raise UserError(f"--groups {groups} is not supported: the between-tower test compares two groups; "
                        "use --groups 2")
    w, found = read_conv1(path, key)
    check_finite({found: w}, path)  # no statistics from NaN weights
    if w.shape[0] % groups:
        raise UserError(f"{path}: {found} has {w.shape[0]} output channels, which do not split into {groups} equal "
                        "groups; pass a weight whose output channels divide evenly")
    halves = w.chunk(groups, dim=0)
    state = {f"towers.{i}.conv1.weight": h for i, h in enumerate(halves)}
    about = {"file": str(path), "key": found, "groups": groups, "preset": None, "control": None,
             "epoch": None, "step": None}
    return analyze_state(state, out_dir, about, title=f"{Path(path).name}: {found}", **options)


def check_conv1(state: dict, spec, source=None) -> None:
    """UserError unless conv1 (both halves together) has the shape of ``spec``'s conv1 (all towers)."""
    conv1 = spec.convs[0]
    expected = (conv1.per_tower * spec.towers, spec.in_channels, conv1.kernel, conv1.kernel)
    where = f"{source}: " if source is not None else ""
    try:
        found = tuple(torch.cat(conv1_weights(state)).shape)
    except UserError as exc:
        raise UserError(f"{where}{exc}") from None
    if found != expected:
        raise UserError(f"{where}conv1 has shape {found} but preset {spec.name!r} expects {expected}; pass the "
                        "preset the checkpoint was trained with")
