"""`info` and `bench model` through the CLI entry point."""
import json

from twogpu_alexnet.cli import main


def test_info_json_reports_the_paper_table(capsys):
    assert main(["info", "--preset", "paper", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total_params"] == 60_965_224
    rows = {(r["name"], r["tower"]): r for r in out["layers"]}
    assert rows[("conv1", 0)]["output"] == [48, 55, 55] and rows[("conv1", 1)]["device"] == "cuda:1"
    assert rows[("conv3", 1)]["reads"] == "both" and rows[("conv4", 0)]["reads"] == "own"
    assert rows[("fc8", None)]["params"] == 4_097_000 and rows[("fc8", None)]["device"] == "cuda:0"
    assert sum(r["params"] for r in out["layers"]) == out["total_params"]


def test_info_table_and_unknown_preset(capsys):
    assert main(["info", "--preset", "cifar"]) == 0
    assert "total parameters: 2,899,722" in capsys.readouterr().out
    assert main(["info", "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown preset 'nope'") and "Traceback" not in err


def test_bench_model_json_has_the_contract_keys(capsys):
    assert main(["bench", "model", "--device", "cpu", "--batch", "2", "--repeats", "1", "--steps", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("grouped_img_s", "two_tower_img_s", "torchvision_img_s", "grouped_stock_lrn_img_s"):
        assert out[key] > 0
    assert out["batch"] == 2 and out["two_tower_devices"] == ["cpu", "cpu"]
    assert main(["bench", "model", "--preset", "cifar", "--json"]) == 2
    assert "choose paper, original or paper-onetower" in capsys.readouterr().err
