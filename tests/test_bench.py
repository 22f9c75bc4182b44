"""The benchmark module: FLOPs from the layer table, checked inputs, and rows from one tiny run."""
import pytest
import torch

from twogpu_alexnet import build_model
from twogpu_alexnet.bench import (
    bench_options,
    counted_macs,
    first_layer_macs,
    forward_macs,
    peak_tflops_for,
    peak_tflops_of,
    train_step_flops,
)
from twogpu_alexnet.errors import UserError
from twogpu_alexnet.spec import get_spec


def test_paper_forward_is_0_724_gmac_and_a_training_step_4_14_gflop():
    spec = get_spec("paper")
    assert forward_macs(spec) == 724_406_816  # 1.449 GFLOP per 224 image
    assert round(forward_macs(spec) / 1e9, 3) == 0.724
    assert first_layer_macs(spec) == 2 * 48 * 55 * 55 * 3 * 11 * 11
    assert round(train_step_flops(forward_macs(spec), first_layer_macs(spec)) / 1e9, 2) == 4.14


@pytest.mark.parametrize("preset,mode", [("paper", "grouped"), ("cifar", "two-tower"), ("cifar-onetower", "grouped")])
def test_spec_count_equals_the_layers_actually_run(preset, mode):
    spec = get_spec(preset)
    kwargs = {"devices": ("cpu", "cpu")} if mode == "two-tower" else {"device": "cpu"}
    model = build_model(spec, mode=mode, **kwargs)
    total, first = counted_macs(model, spec.input_size)
    assert total == forward_macs(spec)
    assert first == first_layer_macs(spec) // (2 if mode == "two-tower" else 1)  # two-tower: tower 0's conv1


def test_torchvision_alexnet_is_counted_from_its_layers():
    import torchvision

    macs, first = counted_macs(torchvision.models.alexnet(), 224)
    assert first == 64 * 55 * 55 * 3 * 11 * 11
    assert round(macs / 1e9, 3) == 0.714  # its own widths (64, 192, 384, 256, 256)


def test_no_peak_is_claimed_for_a_cpu():
    assert peak_tflops_for(torch.device("cpu"), "bf16") is None
    assert peak_tflops_of(["cpu"], "bf16") is None
    assert peak_tflops_of(["cpu", "cpu"], "bf16", 2.0) == 2.0  # --peak-tflops given for a CPU row: that one


def test_a_row_on_two_gpus_is_measured_against_both_peaks():
    assert peak_tflops_of(["cuda:0", "cuda:1"], "bf16", 100.0) == 200.0
    assert peak_tflops_of(["cuda:0", "cuda:0"], "bf16", 100.0) == 100.0  # one GPU, both towers
    assert peak_tflops_of(["cuda:0", "cpu"], "bf16", 100.0) == 100.0  # a CPU tower adds no peak


@pytest.mark.parametrize("kwargs,words", [
    ({"steps": 0}, "--steps must be an integer of at least 1, got 0"),
    ({"repeats": -1}, "--repeats must be an integer of at least 1, got -1"),
    ({"batch": 0}, "--batch must be an integer of at least 1, got 0"),
    ({"warmup": -1}, "--warmup must be an integer of at least 0, got -1"),
    ({"options": ["fast"]}, "unknown option 'fast'"),
    ({"mode": "two-tower"}, "mode two-tower takes 2 device(s), got 1"),
])
def test_bench_options_refuses_bad_numbers_and_names(kwargs, words):
    with pytest.raises(UserError, match=None) as err:
        bench_options("cifar", **kwargs)
    assert words in str(err.value)


@pytest.mark.slow
def test_bench_options_rows_against_fp32_in_one_run():
    out = bench_options("cifar", batch=2, repeats=1, steps=1, warmup=0, options=["channels_last"])
    rows = {r["option"]: r for r in out["options"]}
    assert list(rows) == ["baseline (fp32)", "channels_last"]  # the baseline is always measured
    assert rows["baseline (fp32)"]["ratio"] == 1.0
    assert all(r["img_s"] > 0 and r["tflops"] > 0 and r["peak_memory_mib"] is None for r in rows.values())
