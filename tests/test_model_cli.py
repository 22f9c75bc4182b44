"""`info` and `bench model` through the CLI entry point."""
import json

import pytest

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


@pytest.mark.slow
def test_bench_model_json_has_the_contract_keys_and_rows(capsys):
    args = ["bench", "model", "--device", "cpu", "--batch", "1", "--repeats", "1", "--steps", "1", "--warmup", "0"]
    assert main(args + ["--peak-tflops", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("grouped_img_s", "two_tower_img_s", "torchvision_img_s", "grouped_stock_lrn_img_s"):
        assert out[key] > 0
    assert out["batch"] == 1 and out["two_tower_devices"] == ["cpu", "cpu"] and out["amp"] == "none"
    rows = {r["model"]: r for r in out["rows"]}
    assert list(rows) == ["grouped", "two_tower", "torchvision", "grouped_stock_lrn"]
    assert rows["grouped"]["train_gflop_per_image"] == 4.136 and rows["torchvision"]["train_gflop_per_image"] == 4.145
    for row in rows.values():  # TFLOP/s = images/s x FLOPs per image; % of the given peak
        assert row["tflops"] == pytest.approx(row["img_s"] * row["train_gflop_per_image"] / 1e3, rel=1e-2, abs=1e-4)
        assert row["percent_of_peak"] == pytest.approx(100 * row["tflops"] / 2, rel=1e-2, abs=1e-2)
        assert row["ms_step"] > 0 and row["peak_memory_mib"] is None


@pytest.mark.parametrize("extra,words", [
    (["--steps", "0"], "--steps must be an integer of at least 1, got 0"),
    (["--repeats", "-1"], "--repeats must be an integer of at least 1, got -1"),
    (["--batch", "0"], "--batch must be a whole number in 1..65,536, got 0"),
    (["--amp", "fp16"], "--amp fp16 needs a GPU"),
    (["--peak-tflops", "0"], "--peak-tflops must be a positive number"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--device", "cuda:7"], "--device cuda:7"),
])
def test_bench_model_refuses_bad_input_in_one_sentence(capsys, extra, words):
    assert main(["bench", "model", "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err and err.count("\n") == 1


def test_bench_model_on_a_small_preset_leaves_torchvision_out(capsys):
    args = ["bench", "model", "--preset", "cifar", "--batch", "2", "--repeats", "1", "--steps", "1", "--warmup", "0"]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in out["rows"]] == ["grouped", "two_tower", "grouped_stock_lrn"]
    assert out["torchvision_img_s"] is None and out["grouped_vs_torchvision"] is None and out["grouped_img_s"] > 0
    assert main(args) == 0
    assert "grouped, stock LRN per tower" in capsys.readouterr().out
