"""conv1 at step 0 in the trainer's checkpoints, and `kernels --compare` over run folders."""
import json

import pytest
import torch

from twogpu_alexnet import build_model
from twogpu_alexnet.analysis.compare import across, clopper_pearson_lower, conclusion, fisher_one_sided
from twogpu_alexnet.analysis.learned import init_scale
from twogpu_alexnet.cli import main


def short_run(out, preset, seed, epochs=1):
    args = ["train", "--out", str(out), "--set", f'model.preset="{preset}"', "--set", f"train.seed={seed}",
            "--set", f"train.epochs={epochs}", "--set", "train.max_steps_per_epoch=2", "--set", "train.batch_size=16",
            "--set", "data.synthetic_images=32", "--set", "data.synthetic_val_images=16", "--set",
            'model.mode="grouped"', "--set", "analysis.kernel_grid_epochs=[]", "--set", "train.lr=0.0001", "--json"]
    return main(args)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert short_run(root / "towers-s3", "cifar", 3) == 0
    assert short_run(root / "control-s4", "cifar-onetower", 4) == 0
    return root / "towers-s3", root / "control-s4"


@pytest.mark.slow
def test_checkpoints_keep_conv1_at_step_0_as_the_seed_makes_it(two_runs, capsys):
    capsys.readouterr()
    run = two_runs[0]
    ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    init = ckpt["conv1_init"]
    assert sorted(init) == ["towers.0.conv1.weight", "towers.1.conv1.weight"]
    # the trainer seeds everything with train.seed, then builds the model: the same init, recomputed
    torch.manual_seed(3)
    fresh = build_model("cifar", mode="two-tower", devices=("cpu", "cpu")).state_dict()
    torch.manual_seed(3)
    grouped = build_model("cifar", mode="grouped", device="cpu").state_dict()["conv1.weight"]
    assert torch.equal(torch.cat([init["towers.0.conv1.weight"], init["towers.1.conv1.weight"]]), grouped)
    assert all(torch.equal(init[k], fresh[k]) for k in init)  # the init does not depend on the executor
    # training moved conv1 away from it
    assert not torch.equal(ckpt["model"]["towers.0.conv1.weight"], init["towers.0.conv1.weight"])
    # a resumed run keeps the step-0 weights it started with
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--json"]) == 0
    capsys.readouterr()
    resumed = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 2
    assert all(torch.equal(resumed["conv1_init"][k], init[k]) for k in init)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in lines if x.get("kind") == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["color_measured"] == "learned" and e["learned_color_score_tower0"] is not None for e in epochs)
    # the one verdict: the same sentence in metrics.jsonl as kernels prints for that checkpoint
    assert main(["kernels", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--out", str(run / "k"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == epochs[-1]["color_verdict"]
    assert epochs[-1]["color_split"] is False and epochs[-1]["conv1_init_scale"] < 1


def test_compare_two_short_runs(two_runs, capsys):
    capsys.readouterr()
    towers, control = two_runs
    assert main(["kernels", "--compare", str(towers), str(control), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in result["runs"]] == [str(towers), str(control)]
    assert [r["preset"] for r in result["runs"]] == ["cifar", "cifar-onetower"]
    assert [r["control"] for r in result["runs"]] == [False, True]
    across = result["across"]
    assert set(across) >= {"two_tower_splits", "two_tower_runs", "control_splits", "control_runs", "fisher_p",
                           "split_rate_lower"}
    assert across["two_tower_runs"] == 1 and across["control_runs"] == 1
    for r in result["runs"]:
        assert r["measured"] == "learned" and r["steps"] in (2, 4) and isinstance(r["split"], bool)
        assert 0 <= r["tower0_mean"] <= 1 and 0 <= r["p_value"] <= 1 and 0 <= r["fisher_p_value"] <= 1
        assert r["split"] == (abs(r["effect_size"]) >= 0.5 and r["p_value"] < 0.01)
        # c(t) from the run's history: its steps at lr 1e-4, momentum 0.9, decay 5e-4
        assert r["init_scale_exact"] is True and r["init_scale"] == pytest.approx(init_scale(
            [(r["steps"], 1e-4, 0.9, 5e-4)]), abs=1e-15) and r["init_scale"] < 1
        assert all(m > 0 for m in r["moved_median"])
    assert across["two_tower_splits"] == int(result["runs"][0]["split"])
    assert result["conclusion"].startswith("inconclusive") or result["conclusion"].startswith("no split")
    assert result["conclusion"].endswith("(the protocol asks for 10 + 5 runs; there were 1 + 1)")
    # the table for people: one row per run, the control marked, the across-arm lines and the conclusion
    assert main(["kernels", "--compare", str(towers), str(control)]) == 0
    printed = capsys.readouterr().out
    assert "towers-s3" in printed and "cifar-onetower *" in printed
    assert "two-tower runs that split:" in printed and "controls that split:" in printed
    assert "one-sided Fisher p = " in printed and "Clopper-Pearson" in printed
    assert f"conclusion: {result['conclusion']}" in " ".join(printed.split())


def rows(two_tower_splits, control_splits, two_tower_runs=10, control_runs=5, steps=(800,)):
    out = [{"control": False, "split": i < two_tower_splits, "steps": steps[i % len(steps)]}
           for i in range(two_tower_runs)]
    return out + [{"control": True, "split": i < control_splits, "steps": steps[0]} for i in range(control_runs)]


def test_across_arm_test_against_hand_computed_values():
    # 10/10 vs 0/5: the one table as extreme, 1 / C(15, 10) = 1 / 3003
    a = across(rows(10, 0))
    assert a["fisher_p"] == pytest.approx(1 / 3003, abs=1e-15) and round(a["fisher_p"], 4) == 0.0003
    # 9/10 vs 0/5: C(10, 9) C(5, 0) / C(15, 9) = 10 / 5005 = 6 / 3003
    assert across(rows(9, 0))["fisher_p"] == pytest.approx(6 / 3003, abs=1e-15)
    assert round(across(rows(9, 0))["fisher_p"], 3) == 0.002
    # 8/10 vs 0/5: C(10, 8) / C(15, 8) = 45 / 6435
    assert fisher_one_sided(8, 10, 0, 5) == pytest.approx(45 / 6435, abs=1e-15)
    # 5/10 vs 5/5: the two-tower rate is lower, p = 1
    assert fisher_one_sided(5, 10, 5, 5) == pytest.approx(1.0)
    # Clopper-Pearson, one-sided 95%: x = n gives 0.05 ** (1 / n); x = 0 gives 0
    assert a["split_rate_lower"] == pytest.approx(0.05 ** 0.1, abs=1e-9) and a["split_rate"] == 1.0
    assert clopper_pearson_lower(0, 10) == 0.0
    # x = 9 of 10: the p with P(X >= 9) = 0.05, i.e. 10 p^9 (1 - p) + p^10 = 0.05
    p = clopper_pearson_lower(9, 10)
    assert 10 * p ** 9 * (1 - p) + p ** 10 == pytest.approx(0.05, abs=1e-9)
    assert a == {**a, "two_tower_splits": 10, "two_tower_runs": 10, "control_splits": 0, "control_runs": 5}


def test_conclusion_follows_from_the_numbers():
    def says(r):
        return conclusion(r, across(r))

    assert says(rows(10, 0)).startswith("the towers split: 10 of 10 two-tower runs and 0 of 5 controls split at 800 "
                                        "steps (one-sided Fisher p = 0.00033 < 0.01); split rate 1.00, at least 0.74")
    assert says(rows(8, 0)).startswith("the towers split: 8 of 10")  # p = 0.0070
    assert says(rows(7, 0)).startswith("inconclusive: 7 of 10 two-tower runs and 0 of 5 controls split at 800 steps "
                                       "(one-sided Fisher p = 0.019, not below 0.01)")
    assert says(rows(6, 3)).startswith("inconclusive:")
    assert says(rows(0, 0)) == "no split at 800 steps: 0 of 10 two-tower runs and 0 of 5 controls split " \
                               "(one-sided Fisher p = 1)"
    assert says(rows(10, 0, steps=(800, 760))).startswith("inconclusive: the runs do not share one step count "
                                                          "(760, 800)")
    small = says(rows(2, 0, two_tower_runs=2, control_runs=1))
    assert small.startswith("inconclusive: 2 of 2") and small.endswith("(the protocol asks for 10 + 5 runs; there "
                                                                       "were 2 + 1)")
    assert says(rows(1, 0, control_runs=0)).startswith("inconclusive: 1 of 10 two-tower runs and 0 of 0 controls")


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["kernels", "--compare", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "has no checkpoints/last.pt" in err and len(err.strip().splitlines()) == 1
    assert main(["kernels", "--compare", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_kernels_on_a_one_tower_checkpoint_is_a_control(tmp_path, capsys):
    """paper-half has one tower of 48 conv1 kernels (its only layout is grouped): halves of 24, a control."""
    model = build_model("paper-half", mode="grouped", device="cpu", num_classes=10)
    state = model.state_dict()
    init = {"conv1.weight": state["conv1.weight"].clone()}
    state["conv1.weight"] = state["conv1.weight"] + 0.01 * torch.randn_like(state["conv1.weight"])
    path = tmp_path / "half.pt"
    torch.save({"model": state, "preset": "paper-half", "num_classes": 10, "conv1_init": init}, path)
    assert main(["kernels", "--checkpoint", str(path), "--out", str(tmp_path / "k"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["control"] is True and result["measured"] == "learned"
    assert [t["n"] for t in result["towers"]] == [24, 24]
