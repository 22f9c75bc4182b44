"""Do the towers specialize? Colour specificity of the conv1 kernels, per tower (paper section 6.1).

The paper's Figure 3: of the 96 conv1 kernels, the 48 on GPU 1 came out largely colour-agnostic and
the 48 on GPU 2 largely colour-specific, in every run. This module measures that.

**The score.** A conv1 kernel ``W`` (3 x k x k) adds up, at each pixel, a colour vector
``(W_r, W_g, W_b)``. Split every such vector into its component along the achromatic direction
``(1, 1, 1) / sqrt(3)`` and the rest. The achromatic part responds to brightness alone; the rest
responds to colour differences and ignores brightness. The colour-specificity score is the share of
the kernel's energy outside the achromatic direction::

    s(W) = || W - mean_rgb(W) ||^2 / || W ||^2          (sums over channels and pixels)

It is 0 for a gray kernel (the same weights in R, G and B), 1 for a pure colour-opponent kernel
(R + G + B = 0 at every pixel), and does not change when a kernel is scaled. The non-achromatic
energy splits further along two orthogonal opponent axes: red-green ``(1, -1, 0) / sqrt(2)`` and
blue-yellow ``(-1, -1, 2) / sqrt(6)``; the three shares (achromatic, red-green, blue-yellow) sum to
1 and ``s = red_green + blue_yellow``. An all-zero kernel has no colour and scores 0.

**The statistics.** Per tower: mean, median, quartiles, and the fraction of kernels above
``THRESHOLD`` (0.5: more than half the kernel's energy is colour). Between towers: the difference of
mean scores (tower 1 minus tower 0) with a two-sided permutation p-value (the 96 scores shuffled
between towers ``PERMUTATIONS`` times, seeded), beside it Fisher's exact test on the counts of
kernels above the threshold per tower, the rank-biserial correlation as effect size
(P(tower 1 kernel > tower 0 kernel) - P(<), in [-1, 1], positive when tower 1 is more colourful)
and Cohen's d. ``color_specific_tower`` is the tower with the higher mean when p < ``ALPHA``,
else None.

**Against chance.** A kernel of i.i.d. random weights scores 2/3 on average (``BASELINE``: two of
the three colour axes are not gray), so a freshly initialised conv1 looks "colourful" in both
towers. What training added is the learned part ``W - W0`` (``W0``: conv1 at step 0, which the
trainer keeps in its checkpoints); :func:`specialization` scores it beside ``W``. When fewer than
``MIN_COLOR_SHARE`` of the learned kernels (both towers together) are colour-specific, a split
cannot be seen yet, and the verdict says so instead of "no significant difference".
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
from .plots import save_score_plot

COLOR_AXES = ("achromatic", "red_green", "blue_yellow")
# Rows: an orthonormal basis of RGB space, achromatic first, then the two opponent axes.
_COLOR_BASIS = (
    (1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)),
    (1 / math.sqrt(2), -1 / math.sqrt(2), 0.0),
    (-1 / math.sqrt(6), -1 / math.sqrt(6), 2 / math.sqrt(6)),
)
THRESHOLD = 0.5  # a kernel is "colour-specific" when more than half its energy is colour
ALPHA = 0.05  # significance level for naming the colour-specific tower
PERMUTATIONS = 10_000
MAX_PERMUTATIONS = 1_000_000  # the test holds permutations x kernels indices in memory at once
BASELINE = 2 / 3  # mean score of kernels with i.i.d. random weights (the init): chance level
MIN_COLOR_SHARE = 0.10  # below this share of colour-specific kernels a split is "not measurable yet"


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


def conv1_weights(state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Tower 0's and tower 1's conv1 kernels from a state dict in either layout (cpu tensors)."""
    if "towers.0.conv1.weight" in state and "towers.1.conv1.weight" in state:
        w0, w1 = state["towers.0.conv1.weight"], state["towers.1.conv1.weight"]
    elif "conv1.weight" in state:
        w = state["conv1.weight"]
        if w.shape[0] % 2:
            raise UserError(f"grouped conv1.weight has {w.shape[0]} kernels, not two equal halves; "
                            "pass a state dict of this package's model")
        w0, w1 = w.chunk(2, dim=0)
    else:
        raise UserError("the state dict has no conv1 weights (towers.0.conv1.weight or conv1.weight); "
                        "pass a checkpoint of this package's model")
    w0, w1 = w0.detach().cpu(), w1.detach().cpu()
    _as_kernels(w0), _as_kernels(w1)
    return w0, w1


# ----------------------------------------------------------------------------------------------
# Statistics per tower and between towers


def permutation_test(a, b, permutations: int = PERMUTATIONS, seed: int = 0) -> tuple[float, float]:
    """Two-sided permutation test of mean(b) - mean(a): returns (difference, p-value).

    All permutations at once: a ``permutations x n`` index matrix from a seeded generator.
    p = (1 + #{|d_perm| >= |d_obs|}) / (1 + permutations), never 0.
    """
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


def rank_biserial(a, b) -> float:
    """P(b > a) - P(b < a) over all pairs: the rank-biserial correlation, in [-1, 1]."""
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    sign = torch.sign(b[:, None] - a[None, :])
    return sign.mean().item()


def cohens_d(a, b) -> float | None:
    """(mean(b) - mean(a)) / pooled standard deviation; None when both towers have zero spread."""
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    na, nb = len(a), len(b)
    pooled = ((na - 1) * a.var() + (nb - 1) * b.var()) / (na + nb - 2)
    if pooled.item() <= 0:
        return None
    return ((b.mean() - a.mean()) / pooled.sqrt()).item()


def _describe(scores: torch.Tensor, energy: torch.Tensor, tower: int, threshold: float) -> dict:
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
    }


def summarize_towers(w0, w1, *, threshold: float = THRESHOLD, alpha: float = ALPHA,
                     permutations: int = PERMUTATIONS, seed: int = 0) -> dict:
    """Per-tower score statistics and the between-tower tests for two sets of conv1 kernels."""
    s0, s1 = color_scores(w0), color_scores(w1)
    e0, e1 = color_energy(w0), color_energy(w1)
    difference, p_value = permutation_test(s0, s1, permutations, seed)
    specific = None
    if p_value < alpha and difference != 0:
        specific = 1 if difference > 0 else 0
    towers = [_describe(s0, e0, 0, threshold), _describe(s1, e1, 1, threshold)]
    return {
        "towers": towers,
        "color_specific_tower": specific,
        "p_value": p_value,
        "fisher_p_value": fisher_exact(towers[0]["count_above"], towers[0]["n"], towers[1]["count_above"],
                                       towers[1]["n"]),
        "baseline": BASELINE,
        "effect_size": rank_biserial(s0, s1),
        "effect_size_kind": "rank-biserial (tower 1 vs tower 0)",
        "cohens_d": cohens_d(s0, s1),
        "difference": difference,
        "threshold": threshold,
        "alpha": alpha,
        "permutations": permutations,
        "seed": seed,
        "scores": [s0.tolist(), s1.tolist()],
    }


def tower_summary(state: dict, **options) -> dict:
    """Colour specificity of a state dict's conv1 kernels, per tower, with the between-tower test.

    Returns ``towers`` (per tower: n, mean, median, q1, q3, min, max, frac_above, red_green,
    blue_yellow), ``color_specific_tower`` (0, 1 or None), ``p_value``, ``effect_size``
    (rank-biserial), ``cohens_d``, ``difference`` and the per-kernel ``scores``. Options as
    :func:`summarize_towers`.
    """
    w0, w1 = conv1_weights(state)
    return summarize_towers(w0, w1, **options)


def specialization(state: dict, init: dict | None = None, *, min_share: float = MIN_COLOR_SHARE, **options) -> dict:
    """Do the towers split, measured against chance: the headline statistics and a verdict.

    ``init``: conv1 at step 0 (a state dict with the same conv1 keys), or None when unknown. With
    it the headline is the learned part ``W - W0``; without it, ``W`` (whose scores include the
    random init, baseline 2/3). Returns the headline :func:`summarize_towers` dict plus
    ``measured`` ("learned" or "weights"), ``weights`` (the statistics of W), ``learned`` (of
    W - W0, or None), ``gate`` (colour-specific kernels of the headline, both towers together,
    against ``min_share``) and ``verdict``, one sentence. ``color_specific_tower`` is None while
    the gate is closed.
    """
    w = conv1_weights(state)
    weights = summarize_towers(*w, **options)
    learned = None
    if init is not None:
        w_init = conv1_weights(init)
        for tower, (a, b) in enumerate(zip(w, w_init)):
            if a.shape != b.shape:
                raise UserError(f"conv1 at step 0 of tower {tower} has shape {tuple(b.shape)}, the weights "
                                f"{tuple(a.shape)}; pass the step-0 weights of the same network")
        learned = summarize_towers(w[0] - w_init[0], w[1] - w_init[1], **options)
    head = learned if learned is not None else weights
    colour = sum(t["count_above"] for t in head["towers"])
    kernels = sum(t["n"] for t in head["towers"])
    gate = {"color_kernels": colour, "kernels": kernels, "share": colour / kernels, "min_share": min_share,
            "measurable": colour > 0 and colour >= min_share * kernels}
    result = {**head, "measured": "learned" if learned is not None else "weights", "weights": weights,
              "learned": learned, "gate": gate}
    if not gate["measurable"]:
        result["color_specific_tower"] = None
    result["verdict"] = verdict_sentence(result)
    return result


def epoch_color_fields(summary: dict) -> dict:
    """The per-epoch colour fields of a metrics.jsonl line, from :func:`specialization`'s dict.

    ``learned_color_score_tower{0,1}``: mean score of W - W0 per tower (None without W0);
    ``color_kernels``: colour-specific kernels of the headline (both towers), ``color_measured``
    says which headline; then its p-values, effect size, the tower named and whether it is measurable.
    """
    learned = summary["learned"]
    return {
        "learned_color_score_tower0": learned["towers"][0]["mean"] if learned else None,
        "learned_color_score_tower1": learned["towers"][1]["mean"] if learned else None,
        "color_measured": summary["measured"],
        "color_kernels": summary["gate"]["color_kernels"],
        "color_measurable": summary["gate"]["measurable"],
        "color_p_value": summary["p_value"],
        "color_fisher_p_value": summary["fisher_p_value"],
        "color_effect_size": summary["effect_size"],
        "color_specific_tower": summary["color_specific_tower"],
    }


def verdict_sentence(result: dict) -> str:
    """"tower t is the colour-specific one", "no significant difference ..." or "not measurable yet ..."."""
    gate = result.get("gate")
    if gate and not gate["measurable"]:
        what = "learned few" if result.get("measured") == "learned" else "few"
        return (f"not measurable yet: conv1 has {what} colour kernels ({gate['color_kernels']} of "
                f"{gate['kernels']}; at least {100 * gate['min_share']:g}% are needed)")
    tower = result["color_specific_tower"]
    if tower is None:
        return f"no significant difference between the towers at alpha {result['alpha']:g}"
    return f"tower {tower} is the colour-specific one"


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
    ``out_dir/kernels.png``, ``out_dir/kernels.json`` and, with matplotlib, ``out_dir/scores.png``.

    Returns :func:`specialization`'s dict (the learned part W - W0 as headline when the checkpoint
    keeps conv1 at step 0) plus ``preset``, ``control`` (True for a one-tower preset, whose two
    halves of conv1 are an arbitrary split), ``epoch``, ``step`` and ``files``.
    """
    from ..engine.inference import read_checkpoint  # the one reader of checkpoints (evaluate, neighbors, kernels)

    ck = read_checkpoint(checkpoint, preset)
    state, meta, name = ck.state, ck.meta, ck.preset
    spec = get_spec(name)
    check_conv1(state, spec)
    about = {"checkpoint": str(checkpoint), "preset": name, "epoch": meta.get("epoch"), "step": meta.get("step"),
             # no tower reads only its own tower's maps: the two halves of conv1 are an arbitrary split
             "control": not any(layer.reads == "own" for layer in spec.convs)}
    return analyze_state(state, out_dir, about, init=meta.get("conv1_init"), title=f"{Path(checkpoint).name} ({name})",
                         **options)


def analyze_state(state: dict, out_dir, about: dict, *, init: dict | None = None, title: str = "",
                  **options) -> dict:
    """:func:`specialization` of ``state`` with the pictures and ``kernels.json`` in ``out_dir``;
    ``about`` (where the weights come from) leads the returned dict."""
    out = output_folder(out_dir)
    summary = specialization(state, init, **options)
    files = {"kernels": str(save_kernel_grid(state, out / "kernels.png"))}
    plot = save_score_plot(summary, out / "scores.png", title=title)
    files["scores"] = str(plot) if plot else None
    result = {**about, **summary, "files": files}
    write_atomic(out / "kernels.json", json.dumps(result, indent=1) + "\n")
    return result


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
    about = {"weights": str(path), "key": found, "groups": groups, "preset": None, "control": None}
    return analyze_state(state, out_dir, about, title=f"{Path(path).name}: {found}", **options)


def check_conv1(state: dict, spec) -> None:
    """UserError unless conv1 (both halves together) has the shape of ``spec``'s conv1 (all towers)."""
    conv1 = spec.convs[0]
    expected = (conv1.per_tower * spec.towers, spec.in_channels, conv1.kernel, conv1.kernel)
    found = tuple(torch.cat(conv1_weights(state)).shape)
    if found != expected:
        raise UserError(f"conv1 has shape {found} but preset {spec.name!r} expects {expected}; pass the preset "
                        "the checkpoint was trained with")
