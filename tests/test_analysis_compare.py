"""conv1 at step 0 in the trainer's checkpoints, and `kernels --compare` over run folders."""
import json

import pytest
import torch

from twogpu_alexnet import build_model
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


def test_compare_two_short_runs(two_runs, capsys):
    capsys.readouterr()
    towers, control = two_runs
    assert main(["kernels", "--compare", str(towers), str(control), "--permutations", "999", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in result["runs"]] == [str(towers), str(control)]
    assert [r["preset"] for r in result["runs"]] == ["cifar", "cifar-onetower"]
    assert [r["control"] for r in result["runs"]] == [False, True]
    assert result["two_tower_runs"] == 1 and result["control_runs"] == 1
    for r in result["runs"]:
        assert r["measured"] == "learned" and r["kernels"] == 96 and r["steps"] >= 2
        assert 0 <= r["tower0_mean"] <= 1 and 0 <= r["p_value"] <= 1 and 0 <= r["fisher_p_value"] <= 1
        assert r["color_specific_tower"] in (None, 0, 1)
        # a run whose conv1 has not learned colour kernels is reported as such, not as "no split"
        if not r["measurable"]:
            assert r["color_specific_tower"] is None and r["verdict"].startswith("not measurable yet")
    assert result["two_tower_split"] == sum(r["color_specific_tower"] is not None for r in result["runs"][:1])
    assert result["not_measurable"] == sum(not r["measurable"] for r in result["runs"])
    # the table for people: one row per run, the control marked, the counts line
    assert main(["kernels", "--compare", str(towers), str(control), "--permutations", "999"]) == 0
    printed = capsys.readouterr().out
    assert "towers-s3" in printed and "cifar-onetower *" in printed
    assert "two-tower runs that split:" in printed and "controls that split:" in printed


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
    assert main(["kernels", "--checkpoint", str(path), "--out", str(tmp_path / "k"), "--permutations", "99",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["control"] is True and result["measured"] == "learned"
    assert [t["n"] for t in result["towers"]] == [24, 24]
