"""Colour-specificity scores, the between-tower test and the Figure-3 grid (analysis/kernels.py)."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from twogpu_alexnet.analysis.kernels import (
    GridLayout,
    cohens_d,
    color_energy,
    color_scores,
    conv1_weights,
    grid_layout,
    kernel_grid,
    low_frequency_scores,
    normalize_kernels,
    permutation_test,
    permutation_test_r,
    rank_biserial,
    save_kernel_grid,
    tower_summary,
)
from twogpu_alexnet.errors import UserError

RED_GREEN = torch.tensor([1.0, -1.0, 0.0])
BLUE_YELLOW = torch.tensor([-1.0, -1.0, 2.0])


def gray_kernels(n, k=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, k, k, generator=g).expand(n, 3, k, k).clone()


def opponent_kernels(n, axis, k=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, k, k, generator=g) * axis.view(1, 3, 1, 1)


def mixed_kernels(n, colour_weight, k=5, gen=None):
    """Kernels = gray part + colour part; colour_weight in [0, 1] sets the expected score roughly."""
    gray = torch.randn(n, 1, k, k, generator=gen).expand(n, 3, k, k)
    colour = torch.randn(n, 3, k, k, generator=gen)
    colour = colour - colour.mean(dim=1, keepdim=True)  # pure colour (no achromatic part)
    mix = torch.as_tensor(colour_weight).view(-1, 1, 1, 1)
    return (1 - mix) * gray + mix * colour


# ---------------------------------------------------------------------------------------------
# scores on constructed kernels


def test_gray_kernels_score_zero():
    scores = color_scores(gray_kernels(8))
    assert scores.shape == (8,)
    assert torch.allclose(scores, torch.zeros(8, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("axis", [RED_GREEN, BLUE_YELLOW, torch.tensor([2.0, -1.0, -1.0])])
def test_opponent_kernels_score_one(axis):
    assert torch.allclose(color_scores(opponent_kernels(8, axis)), torch.ones(8, dtype=torch.float64), atol=1e-12)


def test_score_is_scale_invariant_and_in_unit_range():
    w = torch.randn(16, 3, 11, 11, generator=torch.Generator().manual_seed(1))
    base = color_scores(w)
    for factor in (1e-4, 0.37, 250.0, -3.0):
        assert torch.allclose(color_scores(w * factor), base, atol=1e-12)
    assert ((base >= 0) & (base <= 1)).all()
    # i.i.d. random kernels put 2 of 3 colour dimensions outside gray: the mean score is about 2/3
    many = color_scores(torch.randn(2000, 3, 5, 5, generator=torch.Generator().manual_seed(2)))
    assert abs(many.mean().item() - 2 / 3) < 0.01


def test_score_of_a_known_mixture():
    # one pixel: (1, 1, 1) gray plus (1, -1, 0) colour -> energy 3 gray + 2 colour -> score 2/5
    w = torch.zeros(1, 3, 1, 1)
    w[0, :, 0, 0] = torch.tensor([2.0, 0.0, 1.0])
    assert color_scores(w).item() == pytest.approx(2 / 5, abs=1e-12)
    assert color_energy(w)[0].tolist() == pytest.approx([3 / 5, 2 / 5, 0.0], abs=1e-12)


def test_opponent_breakdown():
    rg = color_energy(opponent_kernels(4, RED_GREEN))
    by = color_energy(opponent_kernels(4, BLUE_YELLOW))
    gray = color_energy(gray_kernels(4))
    assert torch.allclose(rg, torch.tensor([[0.0, 1.0, 0.0]] * 4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(by, torch.tensor([[0.0, 0.0, 1.0]] * 4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(gray, torch.tensor([[1.0, 0.0, 0.0]] * 4, dtype=torch.float64), atol=1e-12)
    w = torch.randn(32, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    energy = color_energy(w)
    assert torch.allclose(energy.sum(dim=1), torch.ones(32, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(energy[:, 1] + energy[:, 2], color_scores(w), atol=1e-12)


def test_zero_kernel_and_bad_shapes():
    assert color_scores(torch.zeros(2, 3, 5, 5)).tolist() == [0.0, 0.0]
    with pytest.raises(UserError, match="K x 3 x k x k"):
        color_scores(torch.zeros(4, 1, 5, 5))
    with pytest.raises(UserError, match="no conv1 weights"):
        conv1_weights({"fc8.weight": torch.zeros(10, 4)})


# ---------------------------------------------------------------------------------------------
# statistics


def test_permutation_p_value_matches_exact_enumeration():
    # 3 vs 3 fully separated: 2 of the C(6,3) = 20 splits are as extreme (two-sided) -> p = 0.1
    diff, p = permutation_test([0.1, 0.2, 0.3], [0.7, 0.8, 0.9], permutations=20000, seed=0)
    assert diff == pytest.approx(0.6)
    assert abs(p - 0.1) < 0.01
    # identical samples: every permutation is as extreme as the observed difference 0
    assert permutation_test([0.5] * 5, [0.5] * 5, permutations=100)[1] == 1.0


def test_effect_sizes():
    assert rank_biserial([0.1, 0.2], [0.8, 0.9]) == 1.0
    assert rank_biserial([0.8, 0.9], [0.1, 0.2]) == -1.0
    assert rank_biserial([0.1, 0.5], [0.5, 0.1]) == 0.0
    # d = (mean b - mean a) / pooled sd: means 2 and 5, both sd 1 -> 3
    assert cohens_d([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(3.0)
    assert cohens_d([0.0, 0.0], [1.0, 1.0]) is None


@pytest.mark.parametrize("colour_tower", [0, 1])
def test_planted_split_is_found_in_either_tower(colour_tower):
    gen = torch.Generator().manual_seed(10 + colour_tower)
    gray = mixed_kernels(48, torch.rand(48, generator=gen) * 0.3, gen=gen)  # mostly gray
    colour = mixed_kernels(48, 0.7 + torch.rand(48, generator=gen) * 0.3, gen=gen)  # mostly colour
    towers = [gray, gray]
    towers[colour_tower] = colour
    state = {"towers.0.conv1.weight": towers[0], "towers.1.conv1.weight": towers[1]}
    summary = tower_summary(state)
    assert summary["color_specific_tower"] == colour_tower
    assert summary["p_value"] < 0.001
    sign = 1 if colour_tower == 1 else -1
    assert sign * summary["effect_size"] > 0.9
    assert sign * summary["difference"] > 0.5
    t_colour, t_gray = summary["towers"][colour_tower], summary["towers"][1 - colour_tower]
    assert t_colour["mean"] > 0.5 > t_gray["mean"]
    assert t_colour["frac_above"] > 0.9 and t_gray["frac_above"] < 0.1
    assert t_colour["q1"] <= t_colour["median"] <= t_colour["q3"]
    assert t_colour["n"] == t_gray["n"] == 48
    # the grouped layout (tower 0's half first on dim 0) gives the same answer
    grouped = tower_summary({"conv1.weight": torch.cat(towers)})
    assert grouped["p_value"] == summary["p_value"] and grouped["color_specific_tower"] == colour_tower


@pytest.fixture
def analysis_one_thread():
    """Hundreds of tiny tensor ops: one thread avoids OpenMP spin-waits on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_rank_test_holds_its_level_on_identically_distributed_towers(analysis_one_thread):
    gen = torch.Generator().manual_seed(123)
    draws, below_05, below_25 = 300, 0, 0
    for _ in range(draws):
        scores = torch.rand(40, generator=gen, dtype=torch.float64)  # the same law in both groups
        _, p = permutation_test_r(scores[:20], scores[20:])
        below_05 += p < 0.05
        below_25 += p < 0.25
    # an exact test: P(p < alpha) <= alpha; 300 draws give a binomial sd of 0.013 at 0.05, 0.025 at 0.25
    assert 0.01 <= below_05 / draws <= 0.09, below_05
    assert 0.17 <= below_25 / draws <= 0.33, below_25


def test_exact_rank_test_matches_enumeration_and_monte_carlo():
    import itertools

    # 3 vs 4 with a tie across the groups: enumerate all C(7, 3) = 35 reassignments by hand
    a, b = torch.tensor([0.1, 0.2, 0.2, 0.5]), torch.tensor([0.2, 0.6, 0.7])
    r, p = permutation_test_r(a, b)
    pooled = torch.cat([a, b])
    extreme = 0
    for idx in itertools.combinations(range(7), 3):
        rest = [i for i in range(7) if i not in idx]
        extreme += abs(rank_biserial(pooled[rest], pooled[list(idx)])) >= abs(r) - 1e-12
    assert r == pytest.approx(rank_biserial(a, b)) and p == pytest.approx(extreme / 35)
    # a fully separated 5 vs 5: exactly 2 of C(10, 5) = 252 assignments are as extreme
    r, p = permutation_test_r([0.1, 0.2, 0.3, 0.4, 0.5], [0.6, 0.7, 0.8, 0.9, 1.0])
    assert r == 1.0 and p == pytest.approx(2 / 252)
    # 48 vs 48: the exact p and 100,000 random permutations agree within Monte Carlo error
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(48, generator=gen, dtype=torch.float64), torch.rand(48, generator=gen, dtype=torch.float64) + 0.12
    r, exact = permutation_test_r(a, b)
    r_mc, sampled = permutation_test_r(a, b, permutations=100_000, seed=0)
    assert r == r_mc and abs(sampled - exact) < 4 * math.sqrt(exact * (1 - exact) / 100_000)
    assert permutation_test_r([0.5] * 5, [0.5] * 5) == (0.0, 1.0)


def test_permutation_test_is_fast_and_seeded():
    import time

    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(48, generator=gen), torch.rand(48, generator=gen)
    start = time.perf_counter()
    first = permutation_test_r(a, b)
    elapsed = time.perf_counter() - start
    assert permutation_test_r(a, b, permutations=10_000, seed=5) == permutation_test_r(a, b, permutations=10_000,
                                                                                        seed=5)
    assert first == permutation_test_r(a, b)
    assert elapsed < 2.0  # generous bound for a loaded 2-core machine; typically ~0.06 s


def test_low_frequency_score_tells_a_blob_from_a_gabor():
    k = 11
    y, x = torch.meshgrid(torch.arange(k, dtype=torch.float64) - 5, torch.arange(k, dtype=torch.float64) - 5,
                          indexing="ij")
    blob = torch.exp(-(x ** 2 + y ** 2) / (2 * 2.5 ** 2))  # a wide Gaussian: energy near frequency 0
    gabor = torch.exp(-(x ** 2 + y ** 2) / (2 * 3.0 ** 2)) * torch.cos(2 * math.pi * 0.35 * x)  # 0.35 cycles/px
    kernels = torch.stack([blob.expand(3, k, k), gabor.expand(3, k, k), torch.zeros(3, k, k)])
    low = low_frequency_scores(kernels)
    assert low[0] > 0.9 and low[1] < 0.05 and low[2] == 0
    # a pure DFT frequency: all energy at 2/11 cycles/px, above the 0.125 cut; 1/11 is below it
    for f, expected in ((1, 1.0), (2, 0.0)):
        wave = torch.cos(2 * math.pi * f * x / k).expand(1, 3, k, k)
        assert low_frequency_scores(wave)[0].item() == pytest.approx(expected, abs=1e-9)
    # scale-free, and the colour score does not see frequency
    assert low_frequency_scores(3 * kernels[:2]).tolist() == pytest.approx(low[:2].tolist())


# ---------------------------------------------------------------------------------------------
# the Figure-3 grid


def read_image(path):
    """A PNG as a 3 x H x W uint8 tensor."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


def _distinct_state(k, n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"towers.0.conv1.weight": torch.randn(n, 3, k, k, generator=g),
            "towers.1.conv1.weight": torch.randn(n, 3, k, k, generator=g)}


@pytest.mark.parametrize("k, scale, size", [(11, 4, (288, 738)), (5, 8, (264, 674))])
def test_grid_png_has_documented_size(tmp_path, k, scale, size):
    state = _distinct_state(k)
    layout = grid_layout(state)
    assert layout == GridLayout(kernels=48, kernel=k, ncol=16, scale=scale, padding=2, gap=8)
    # 16 columns of (tile + 2) + 2; per tower 3 rows of (tile + 2) + 2; 8 px between the towers
    assert (layout.height, layout.width) == size
    path = save_kernel_grid(state, tmp_path / "kernels.png")
    image = read_image(str(path))
    assert tuple(image.shape) == (3, *size)


def test_grid_tiles_hold_the_right_kernels(tmp_path):
    state = _distinct_state(5, seed=4)
    layout = grid_layout(state)
    image = read_image(str(save_kernel_grid(state, tmp_path / "k.png"))).to(torch.int32)
    for tower in (0, 1):
        expected = normalize_kernels(state[f"towers.{tower}.conv1.weight"])
        for r in range(layout.rows):
            for c in range(layout.ncol):
                index = r * layout.ncol + c
                y, x = layout.origin(tower, index)
                tile = image[:, y:y + layout.tile, x:x + layout.tile]
                want = expected[index].repeat_interleave(layout.scale, 1).repeat_interleave(layout.scale, 2)
                want = (want * 255 + 0.5).floor().to(torch.int32)
                assert (tile - want).abs().max().item() <= 1, (tower, r, c)
    # the gap between the towers is blank (pad value white)
    gap_rows = image[:, layout.tower_height:layout.tower_height + layout.gap]
    assert (gap_rows == 255).all()


def test_each_kernel_is_normalized_on_its_own():
    state = _distinct_state(11, n=4)
    state["towers.0.conv1.weight"][0] *= 1000  # one huge kernel does not wash out the others
    grid = kernel_grid(state)
    layout = grid_layout(state)
    for tower in (0, 1):
        for index in range(4):
            y, x = layout.origin(tower, index)
            tile = grid[:, y:y + layout.tile, x:x + layout.tile]
            assert tile.min().item() == 0.0 and tile.max().item() == 1.0
    # a kernel keeps its colour balance: gray stays gray after normalization
    gray = normalize_kernels(gray_kernels(2))
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    assert math.isclose(normalize_kernels(torch.zeros(1, 3, 3, 3)).mean().item(), 0.5)
