"""Specialization against chance: the learned part W - W0, Fisher's exact test, the 'not measurable'
gate (analysis/kernels.py), any network's conv1 (analysis/weights.py) and runs compared (compare.py)."""
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
# the learned part and the gate


def test_learned_part_scores_what_training_added():
    init = random_init()
    g = torch.Generator().manual_seed(1)
    gray = torch.randn(48, 1, 11, 11, generator=g).expand(48, 3, 11, 11)
    colour = torch.randn(48, 3, 11, 11, generator=g)
    colour = colour - colour.mean(dim=1, keepdim=True)
    # tower 0 learned gray kernels, tower 1 colour ones, each a tenth of the init's size
    trained = two_towers(init["towers.0.conv1.weight"] + 0.001 * gray, init["towers.1.conv1.weight"] + 0.001 * colour)
    s = specialization(trained, init, permutations=999)
    assert s["measured"] == "learned"
    learned = s["learned"]["towers"]
    assert learned[0]["mean"] == pytest.approx(0.0, abs=1e-9) and learned[1]["mean"] == pytest.approx(1.0)
    assert learned[0]["count_above"] == 0 and learned[1]["count_above"] == 48
    # the weights themselves are dominated by the init: both towers near the random baseline 2/3
    weights = s["weights"]["towers"]
    assert abs(weights[0]["mean"] - BASELINE) < 0.05 and abs(weights[1]["mean"] - BASELINE) < 0.05
    # the learned part separates the towers completely, the weights only partly
    assert s["effect_size"] == 1.0 and abs(s["weights"]["effect_size"]) < 1.0
    assert s["color_specific_tower"] == 1 and s["towers"] == s["learned"]["towers"]
    assert s["gate"] == {"color_kernels": 48, "kernels": 96, "share": 0.5, "min_share": 0.1, "measurable": True}
    assert s["verdict"] == "tower 1 is the colour-specific one"
    assert s["baseline"] == pytest.approx(2 / 3)


def test_random_kernels_score_the_baseline_two_thirds():
    w = random_init(n=2000, k=11)["towers.0.conv1.weight"]
    assert color_scores(w).mean().item() == pytest.approx(BASELINE, abs=0.005)


def test_gate_fires_on_an_untrained_network():
    init = random_init()
    s = specialization({k: v.clone() for k, v in init.items()}, init, permutations=99)
    assert s["gate"]["measurable"] is False and s["gate"]["color_kernels"] == 0
    assert s["color_specific_tower"] is None
    assert s["verdict"].startswith("not measurable yet: conv1 has learned few colour kernels (0 of 96")
    # without W0 the same untrained network looks 100% "colourful" (the random baseline), and no split
    w_only = specialization(init, permutations=99)
    assert w_only["measured"] == "weights" and w_only["gate"]["color_kernels"] == 96
    assert w_only["verdict"].startswith("no significant difference")


def test_gate_fires_below_the_stated_share_and_not_on_a_planted_split():
    g = torch.Generator().manual_seed(2)
    init = random_init()
    gray = torch.randn(48, 1, 11, 11, generator=g).expand(48, 3, 11, 11)
    colour = torch.randn(48, 3, 11, 11, generator=g)
    colour = colour - colour.mean(dim=1, keepdim=True)
    few = gray.clone()
    few[:5] = colour[:5]  # 5 colour kernels of 96 learned: 5.2% < 10%
    s = specialization(two_towers(init["towers.0.conv1.weight"] + gray, init["towers.1.conv1.weight"] + few), init,
                       permutations=999)
    assert s["gate"]["color_kernels"] == 5 and not s["gate"]["measurable"]
    assert s["verdict"].startswith("not measurable yet: conv1 has learned few colour kernels (5 of 96")
    some = gray.clone()
    some[:10] = colour[:10]  # 10 of 96 >= 9.6: measured, and 10 vs 0 is a split
    s = specialization(two_towers(init["towers.0.conv1.weight"] + gray, init["towers.1.conv1.weight"] + some), init,
                       permutations=999)
    assert s["gate"]["measurable"] and s["color_specific_tower"] == 1
    assert s["fisher_p_value"] == pytest.approx(fisher_exact(0, 48, 10, 48)) and s["fisher_p_value"] < 0.01


@pytest.mark.parametrize("colour_tower", [0, 1])
def test_fisher_and_permutation_agree_on_a_planted_split(colour_tower):
    gen = torch.Generator().manual_seed(20 + colour_tower)
    gray = mixed_kernels(48, torch.rand(48, generator=gen) * 0.4, gen=gen)
    colour = mixed_kernels(48, 0.6 + torch.rand(48, generator=gen) * 0.4, gen=gen)
    towers = [gray, gray]
    towers[colour_tower] = colour
    s = summarize_towers(*towers, permutations=2000)
    assert s["p_value"] < 0.001 and s["fisher_p_value"] < 0.001
    assert s["color_specific_tower"] == colour_tower
    above = [t["count_above"] for t in s["towers"]]
    assert above[colour_tower] > above[1 - colour_tower]


def test_false_positive_rates_near_the_level_on_identical_towers():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny tensor ops
    try:
        gen = torch.Generator().manual_seed(7)
        draws, perm_hits, fisher_hits = 300, 0, 0
        for i in range(draws):
            w = mixed_kernels(96, torch.rand(96, generator=gen), gen=gen)
            s = summarize_towers(w[:48], w[48:], permutations=499, seed=i)
            perm_hits += s["p_value"] < 0.05
            fisher_hits += s["fisher_p_value"] < 0.05
    finally:
        torch.set_num_threads(threads)
    # level 0.05, 300 draws: binomial sd 0.013; Fisher's exact test is conservative (discrete counts)
    assert 0.015 <= perm_hits / draws <= 0.095, perm_hits
    assert 0.005 <= fisher_hits / draws <= 0.075, fisher_hits


# ---------------------------------------------------------------------------------------------
# kernels --weights: any network's conv1


def planted_conv1(n=96, k=11, colour_group=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    gray = torch.randn(n // 2, 1, k, k, generator=g).expand(n // 2, 3, k, k)
    colour = torch.randn(n // 2, 3, k, k, generator=g)
    colour = colour - colour.mean(dim=1, keepdim=True)
    return torch.cat([gray, colour] if colour_group == 1 else [colour, gray])


def run_weights(path, out, capsys, *extra):
    code = main(["kernels", "--weights", str(path), "--out", str(out), "--permutations", "999", "--json", *extra])
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
    assert "does not exist" in refused(tmp_path / "missing.pt")
    other = tmp_path / "w.h5"
    other.write_bytes(b"x")
    assert "not a .pt, .pth or .npy" in refused(other)
    assert "--groups 3 is not supported" in refused(two, "--key", "a.weight", "--groups", "3")


@pytest.mark.parametrize("value", ["1e9", "0", "-5"])
def test_permutations_out_of_range_is_one_sentence(value, tmp_path, capsys):
    path = tmp_path / "w.pt"
    torch.save(planted_conv1(), path)
    code = main(["kernels", "--weights", str(path), "--out", str(tmp_path / "o"), "--permutations", value])
    err = capsys.readouterr().err
    assert code == 2 and "--permutations must be between 1 and 1,000,000" in err and "Traceback" not in err


def test_permutations_accepts_scientific_notation(tmp_path, capsys):
    path = tmp_path / "w.pt"
    torch.save(planted_conv1(), path)
    assert main(["kernels", "--weights", str(path), "--out", str(tmp_path / "o"), "--permutations", "1e3",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["permutations"] == 1000
