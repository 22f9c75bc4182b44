"""Specialization under the protocol: the learned part, the per-run verdict, Fisher's exact test
(analysis/kernels.py), any network's conv1 (analysis/weights.py) and runs compared (compare.py)."""
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from twogpu_alexnet.analysis.kernels import (
    BASELINE,
    color_scores,
    fisher_exact,
    specialization,
    summarize_towers,
    verdict_sentence,
)
from twogpu_alexnet.cli import main


def mixed_kernels(n, colour_weight, k=5, gen=None):
    """Kernels = gray part + pure colour part; colour_weight in [0, 1] per kernel."""
    gray = torch.randn(n, 1, k, k, generator=gen).expand(n, 3, k, k)
    colour = torch.randn(n, 3, k, k, generator=gen)
    colour = colour - colour.mean(dim=1, keepdim=True)
    mix = torch.as_tensor(colour_weight).view(-1, 1, 1, 1)
    return (1 - mix) * gray + mix * colour


def two_towers(w0, w1):
    return {"towers.0.conv1.weight": w0, "towers.1.conv1.weight": w1}


def random_init(n=48, k=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return two_towers(0.01 * torch.randn(n, 3, k, k, generator=g), 0.01 * torch.randn(n, 3, k, k, generator=g))


# ---------------------------------------------------------------------------------------------
# Fisher's exact test


def test_fisher_exact_matches_hand_computed_hypergeometric_sums():
    # 3 of 4 vs 1 of 4 (the tea-tasting table): P(x) = C(4,x) C(4,4-x) / 70 = 1,16,36,16,1 / 70;
    # two-sided sums the tables no more likely than 16/70: (1 + 16 + 16 + 1) / 70
    assert fisher_exact(3, 4, 1, 4) == pytest.approx(float(Fraction(34, 70)), abs=1e-15)
    # 5 of 5 vs 0 of 5: only the two extreme tables, each 1 / C(10,5)
    assert fisher_exact(5, 5, 0, 5) == pytest.approx(2 / 252, abs=1e-15)
    assert fisher_exact(0, 5, 5, 5) == fisher_exact(5, 5, 0, 5)  # symmetric in the groups
    # 8 of 10 vs 1 of 6: margins 9 above of 16; hypergeometric weights C(10,x) C(6,9-x), x = 3..9
    weights = {x: math.comb(10, x) * math.comb(6, 9 - x) for x in range(3, 10)}
    observed = weights[8]
    expected = Fraction(sum(w for w in weights.values() if w <= observed), math.comb(16, 9))
    assert fisher_exact(8, 10, 1, 6) == pytest.approx(float(expected), abs=1e-15)
    assert abs(fisher_exact(8, 10, 1, 6) - 0.03496503) < 1e-7  # the value R's fisher.test prints
    assert fisher_exact(2, 4, 2, 4) == 1.0 and fisher_exact(0, 48, 0, 48) == 1.0
    with pytest.raises(ValueError):
        fisher_exact(5, 4, 0, 4)


# ---------------------------------------------------------------------------------------------
# the learned part and the protocol's per-run verdict


def test_learned_part_scores_what_training_added():
    init = random_init()
    g = torch.Generator().manual_seed(1)
    gray = torch.randn(48, 1, 11, 11, generator=g).expand(48, 3, 11, 11)
    colour = torch.randn(48, 3, 11, 11, generator=g)
    colour = colour - colour.mean(dim=1, keepdim=True)
    # tower 0 learned gray kernels, tower 1 colour ones, each a tenth of the init's size
    trained = two_towers(init["towers.0.conv1.weight"] + 0.001 * gray, init["towers.1.conv1.weight"] + 0.001 * colour)
    s = specialization(trained, init)
    assert s["measured"] == "learned" and s["init_scale"] == 1.0
    learned = s["learned"]["towers"]
    assert learned[0]["mean"] == pytest.approx(0.0, abs=1e-9) and learned[1]["mean"] == pytest.approx(1.0)
    assert learned[0]["count_above"] == 0 and learned[1]["count_above"] == 48
    # the weights themselves are dominated by the init: both towers near the random baseline 2/3
    weights = s["weights"]["towers"]
    assert abs(weights[0]["mean"] - BASELINE) < 0.05 and abs(weights[1]["mean"] - BASELINE) < 0.05
    # the learned part separates the towers completely, the weights only partly
    assert s["effect_size"] == 1.0 and abs(s["weights"]["effect_size"]) < 1.0
    assert s["split"] is True and s["color_specific_tower"] == 1 and s["towers"] == s["learned"]["towers"]
    assert s["verdict"].startswith("split: tower 1 is the colour-specific one; learned part L = W - W0, "
                                   "rank-biserial r = +1.00")
    # movement ||L|| / ||W0|| per kernel: 0.001 * ||gray_k|| / (0.01 * ||init_k||)
    expected = (0.001 * gray.flatten(1).norm(dim=1) / init["towers.0.conv1.weight"].flatten(1).norm(dim=1)).double()
    assert torch.allclose(torch.tensor(s["moved"][0], dtype=torch.float64), expected, rtol=1e-5)


def test_learned_part_removes_the_decayed_init():
    init = random_init()
    g = torch.Generator().manual_seed(3)
    colour = torch.randn(48, 3, 11, 11, generator=g)
    colour = colour - colour.mean(dim=1, keepdim=True)
    gray = torch.randn(48, 1, 11, 11, generator=g).expand(48, 3, 11, 11)
    c = 0.3  # decay has shrunk W0 to 30%: W - W0 would hold -0.7 W0 (random, score ~2/3) in both towers
    trained = two_towers(c * init["towers.0.conv1.weight"] + 0.002 * gray,
                         c * init["towers.1.conv1.weight"] + 0.002 * colour)
    right = specialization(trained, init, init_scale=c)
    assert right["towers"][0]["mean"] == pytest.approx(0.0, abs=1e-9) and right["split"]
    assert right["verdict"].startswith("split: tower 1") and "L = W - 0.3*W0" in right["verdict"]
    naive = specialization(trained, init, init_scale=1.0)  # W - W0
    assert naive["towers"][0]["mean"] > 0.3  # the leftover -0.7 W0 looks colourful


def test_negative_control_step_zero_does_not_split():
    init = random_init()
    s = specialization({k: v.clone() for k, v in init.items()}, init)
    # L = 0: every kernel scores 0, r = 0
    assert s["towers"][0]["mean"] == 0 and s["effect_size"] == 0 and s["p_value"] == 1.0
    assert s["split"] is False and s["color_specific_tower"] is None
    assert s["verdict"].startswith("no split; learned part L = W - W0, rank-biserial r = +0.00")
    # without W0 the random init itself: about 2/3 in both towers, and no split
    w_only = specialization(init)
    assert w_only["measured"] == "weights" and w_only["split"] is False
    assert w_only["verdict"].startswith("no split; weights W")


def kernels_with_scores(scores, k=5, seed=0):
    """Kernels whose colour score is exactly ``scores``: sqrt(1 - s) of a unit gray kernel plus sqrt(s)
    of a unit colour-opponent one (orthogonal to every gray kernel)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.as_tensor(scores, dtype=torch.float64).view(-1, 1, 1, 1)
    gray = torch.randn(len(s), 1, k, k, generator=g, dtype=torch.float64).expand(len(s), 3, k, k)
    colour = torch.randn(len(s), 3, k, k, generator=g, dtype=torch.float64)
    colour = colour - colour.mean(dim=1, keepdim=True)
    unit = lambda w: w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # noqa: E731
    return (1 - s).sqrt() * unit(gray) + s.sqrt() * unit(colour)


def constructed_run(m, n=48):
    """Two towers of n kernels, scores on a grid of step 1/120 from 0.1, tower 1's raised by m + 1/2 steps
    (no ties): tower 1's kernel i is below tower 0's j when j > i + m, so r = 1 - (n - m - 1)(n - m) / n^2."""
    base = 0.1 + torch.arange(n, dtype=torch.float64) / 120
    return summarize_towers(kernels_with_scores(base), kernels_with_scores(base + (m + 0.5) / 120, seed=1))


def expected_r(m, n=48):
    return 1 - (n - m - 1) * (n - m) / n ** 2


def test_protocol_verdicts_on_constructed_runs():
    assert color_scores(kernels_with_scores([0.0, 0.3, 1.0])).tolist() == pytest.approx([0.0, 0.3, 1.0])
    split = constructed_run(24)  # r = 0.760
    assert split["effect_size"] == pytest.approx(expected_r(24)) and split["p_value"] < 1e-6 and split["split"] is True
    assert split["color_specific_tower"] == 1 and verdict_sentence(split).startswith("split: tower 1")
    flipped = summarize_towers(kernels_with_scores(torch.full((48,), 0.8)), kernels_with_scores(torch.full((48,), 0.2)))
    assert flipped["effect_size"] == -1.0 and flipped["split"] and flipped["color_specific_tower"] == 0
    none = summarize_towers(kernels_with_scores(torch.full((48,), 0.4)), kernels_with_scores(torch.full((48,), 0.4)))
    assert none["effect_size"] == 0.0 and none["p_value"] == pytest.approx(1.0) and none["split"] is False
    assert none["color_specific_tower"] is None and verdict_sentence(none).startswith("no split; weights W")
    # significant but small: r = 0.357, p < 0.01, is no split
    small = constructed_run(9)
    assert small["effect_size"] == pytest.approx(expected_r(9)) and small["p_value"] < 0.01 and small["split"] is False
    assert constructed_run(0)["p_value"] > 0.5  # half a step apart: r = 0.02
    # large but not significant: a perfect split of 4 kernels per tower has r = 1 and exact p = 2 / 70
    tiny = summarize_towers(kernels_with_scores([0.1, 0.2, 0.3, 0.4]), kernels_with_scores([0.6, 0.7, 0.8, 0.9]))
    assert tiny["effect_size"] == 1.0 and tiny["p_value"] == pytest.approx(2 / 70) and tiny["split"] is False
    # five per tower is the smallest perfect split that passes: 2 / 252 < 0.01
    low, high = [0.1, 0.2, 0.3, 0.4, 0.5], [0.6, 0.7, 0.8, 0.9, 1.0]
    five = summarize_towers(kernels_with_scores(low), kernels_with_scores(high))
    assert five["p_value"] == pytest.approx(2 / 252) and five["split"] is True


def test_fisher_min_count_is_the_smallest_perfect_split_that_passes():
    s = summarize_towers(*random_init(seed=5).values())
    assert s["fisher_min_count"] == 8
    assert fisher_exact(0, 48, 7, 48) >= 0.01 > fisher_exact(0, 48, 8, 48)


def gabor_and_blob_conv1(n=96, k=11, seed=0, noise=0.3):
    """The synthetic positive control: group 0 gray high-frequency Gabors, group 1 colour-opponent
    low-frequency blobs (Figure 3's two towers), both with i.i.d. noise."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(k) - k // 2, torch.arange(k) - k // 2, indexing="ij")
    kernels = []
    for i in range(n // 2):
        theta = math.pi * i / (n // 2)
        u = x * math.cos(theta) + y * math.sin(theta)
        gabor = torch.exp(-(x ** 2 + y ** 2) / 18.0) * torch.cos(2 * math.pi * 0.3 * u)
        kernels.append(gabor.expand(3, k, k))
    for i in range(n // 2):
        blob = torch.exp(-((x - (i % 3 - 1)) ** 2 + (y - (i % 5 - 2)) ** 2) / 12.0)
        opponent = torch.randn(3, generator=g)
        opponent = opponent - opponent.mean()
        kernels.append(opponent[:, None, None] * blob)
    w = torch.stack(kernels)
    w = w / w.flatten(1).norm(dim=1)[:, None, None, None]
    return w + noise * torch.randn(w.shape, generator=g) / math.sqrt(3 * k * k)


def test_synthetic_positive_control_splits(tmp_path, capsys):
    path = tmp_path / "conv1.npy"
    np.save(path, gabor_and_blob_conv1().numpy())
    code, result, _ = run_weights(path, tmp_path / "out", capsys)
    assert code == 0 and result["split"] is True and result["color_specific_tower"] == 1
    assert result["effect_size"] >= 0.9 and result["p_value"] < 1e-6
    # the frequency score sees the other half of Figure 3: tower 1's blobs are low-frequency
    t0, t1 = result["towers"]
    assert t1["low_frequency"] > 0.8 > 0.2 > t0["low_frequency"] and result["low_frequency_effect_size"] > 0.9


# ---------------------------------------------------------------------------------------------
# kernels --weights: any network's conv1


def planted_conv1(n=96, k=11, colour_group=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    gray = torch.randn(n // 2, 1, k, k, generator=g).expand(n // 2, 3, k, k)
    colour = torch.randn(n // 2, 3, k, k, generator=g)
    colour = colour - colour.mean(dim=1, keepdim=True)
    return torch.cat([gray, colour] if colour_group == 1 else [colour, gray])


def run_weights(path, out, capsys, *extra):
    code = main(["kernels", "--weights", str(path), "--out", str(out), "--json", *extra])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.mark.parametrize("form", ["tensor", "torchvision", "caffe", "npy", "wrapped"])
def test_weights_reads_tensors_and_state_dicts(form, tmp_path, capsys):
    w = planted_conv1()
    path = tmp_path / ("w.npy" if form == "npy" else "w.pth")
    if form == "tensor":
        torch.save(w, path)
    elif form == "torchvision":  # torchvision's AlexNet: features.0 is conv1, features.3 conv2 (64 inputs)
        torch.save({"features.0.weight": w, "features.0.bias": torch.zeros(96),
                    "features.3.weight": torch.zeros(192, 96, 5, 5), "classifier.1.weight": torch.zeros(8, 16)}, path)
    elif form == "caffe":  # Caffe-converted CaffeNet: conv1, grouped conv2 (48 inputs per group)
        torch.save({"conv1.weight": w, "conv1.bias": torch.zeros(96), "conv2.weight": torch.zeros(256, 48, 5, 5),
                    "fc6.weight": torch.zeros(16, 32)}, path)
    elif form == "npy":
        np.save(path, w.numpy())
    else:
        torch.save({"state_dict": {"features.0.weight": w}, "epoch": 90}, path)
    code, result, err = run_weights(path, tmp_path / "out", capsys)
    assert code == 0, err
    keys = {"tensor": "tensor", "npy": "tensor", "caffe": "conv1.weight"}
    assert result["key"] == keys.get(form, "features.0.weight")
    assert [t["n"] for t in result["towers"]] == [48, 48]
    assert result["towers"][0]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert result["towers"][1]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert result["color_specific_tower"] == 1 and result["p_value"] < 0.01 and result["effect_size"] == 1.0
    assert result["measured"] == "weights" and result["learned"] is None
    assert (tmp_path / "out" / "kernels.png").is_file() and (tmp_path / "out" / "kernels.json").is_file()


def test_weights_groups_are_consecutive_channels_and_key_selects(tmp_path, capsys):
    path = tmp_path / "two.pt"
    torch.save({"a.weight": planted_conv1(colour_group=0), "b.weight": planted_conv1(n=64, k=5)}, path)
    code, result, _ = run_weights(path, tmp_path / "o", capsys, "--key", "a.weight")
    assert code == 0 and result["color_specific_tower"] == 0 and result["key"] == "a.weight"
    code, result, _ = run_weights(path, tmp_path / "o", capsys, "--key", "b.weight", "--groups", "2")
    assert code == 0 and [t["n"] for t in result["towers"]] == [32, 32] and result["color_specific_tower"] == 1


class _Unsafe:
    """A pickled Python object (what weights_only refuses)."""


def test_weights_refusals_are_one_sentence(tmp_path, capsys):
    def refused(path, *extra):
        code, _, err = run_weights(path, tmp_path / "o", capsys, *extra)
        assert code == 2, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err

    no_conv = tmp_path / "fc.pt"
    torch.save({"fc.weight": torch.zeros(10, 20), "conv.weight": torch.zeros(8, 4, 3, 3)}, no_conv)
    assert "no 4-d tensor with 3 input channels" in refused(no_conv)
    two = tmp_path / "two.pt"
    torch.save({"a.weight": planted_conv1(), "b.weight": planted_conv1()}, two)
    assert "--key" in refused(two)
    assert "no entry 'c'" in refused(two, "--key", "c")
    odd = tmp_path / "odd.pt"
    torch.save(torch.zeros(5, 3, 3, 3), odd)
    assert "equal groups" in refused(odd)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((4, 3)))
    assert "not out x 3 x k x k" in refused(flat)
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a torch file")
    assert "not a readable" in refused(bad)
    pickled = tmp_path / "pickled.pth"  # read by the one checkpoint reader: pickles are named as such
    torch.save({"w": planted_conv1(), "note": _Unsafe()}, pickled)
    assert "holds pickled Python objects, which are not loaded" in refused(pickled)
    assert "does not exist" in refused(tmp_path / "missing.pt")
    other = tmp_path / "w.h5"
    other.write_bytes(b"x")
    assert "not a .pt, .pth or .npy" in refused(other)
    assert "--groups 3 is not supported" in refused(two, "--key", "a.weight", "--groups", "3")


@pytest.mark.parametrize("value", ["1e9", "-5"])
def test_permutations_out_of_range_is_one_sentence(value, tmp_path, capsys):
    path = tmp_path / "w.pt"
    torch.save(planted_conv1(), path)
    code = main(["kernels", "--weights", str(path), "--out", str(tmp_path / "o"), "--permutations", value])
    err = capsys.readouterr().err
    assert code == 2 and "--permutations must be 0 (exact) or between 1 and 1,000,000" in err and "Traceback" not in err


def test_permutations_accepts_scientific_notation(tmp_path, capsys):
    path = tmp_path / "w.pt"
    torch.save(planted_conv1(), path)
    assert main(["kernels", "--weights", str(path), "--out", str(tmp_path / "o"), "--permutations", "1e3",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["permutations"] == 1000


def test_weights_without_json_prints_the_table_and_verdict(tmp_path, capsys):
    path = tmp_path / "w.pt"
    torch.save(planted_conv1(), path)
    assert main(["kernels", "--weights", str(path), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "weights W" in out and "split: tower 1 is the colour-specific one" in out and "kernels.png" in out


def test_two_tower_state_with_one_wrong_shaped_conv1_is_one_sentence(tmp_path, capsys):
    path = tmp_path / "bad.pt"
    from twogpu_alexnet import build_model

    state = build_model("cifar", mode="two-tower", devices=("cpu", "cpu"), num_classes=10).state_dict()
    state["towers.1.conv1.weight"] = torch.zeros(32, 3, 3, 3)
    torch.save(state, path)
    code = main(["kernels", "--checkpoint", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "conv1" in err
