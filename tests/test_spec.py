"""The layer table: parameter counts and per-tower shapes equal the reference numbers."""
import pytest
import torch

from twogpu_alexnet import PRESETS, build_model, get_spec
from twogpu_alexnet.spec import layer_shapes, total_params

# alexnet-2012.md: per layer, both towers together
PAPER_LAYER_PARAMS = {
    "conv1": 34_944, "conv2": 307_456, "conv3": 885_120, "conv4": 663_936, "conv5": 442_624,
    "fc6": 37_752_832, "fc7": 16_781_312, "fc8": 4_097_000,
}
TOTALS = {"paper": 60_965_224, "original": 60_965_224, "paper-onetower": 62_378_344,
          "paper-half": 59_798_312, "original-half": 59_798_312, "cifar": 2_899_722, "cifar-onetower": 3_329_802}


@pytest.mark.parametrize("preset", list(TOTALS))
def test_total_params_of_the_built_model(preset):
    if PRESETS[preset].towers == 2:
        model = build_model(preset, mode="two-tower", devices=("meta", "meta"))
        assert sum(p.numel() for p in model.parameters()) == TOTALS[preset]
    grouped = build_model(preset, mode="grouped", device="meta")
    assert sum(p.numel() for p in grouped.parameters()) == TOTALS[preset]
    assert total_params(PRESETS[preset]) == TOTALS[preset]


def test_paper_params_per_layer():
    model = build_model("paper", mode="two-tower", devices=("meta", "meta"))
    per_layer = {}
    for name, p in model.named_parameters():
        per_layer[name.split(".")[-2]] = per_layer.get(name.split(".")[-2], 0) + p.numel()
    assert per_layer == PAPER_LAYER_PARAMS


def test_torchvision_alexnet_count_matches_reference():
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.alexnet()
    assert sum(p.numel() for p in tv.parameters()) == 61_100_840


@pytest.mark.parametrize("preset", ["paper", "original"])
def test_per_tower_output_shapes_match_reference_table(preset):
    # conv output (per tower) and what the next layer reads, 224 input: reference table
    expected = {  # name: (channels per tower, size after conv, size after the layer's ops)
        "conv1": (48, 55, 27), "conv2": (128, 27, 13), "conv3": (192, 13, 13),
        "conv4": (192, 13, 13), "conv5": (128, 13, 6),
    }
    shapes = {s.name: s for s in layer_shapes(PRESETS[preset])}
    for name, (c, conv, out) in expected.items():
        assert (shapes[name].out_channels, shapes[name].conv_size, shapes[name].out_size) == (c, conv, out)
    assert shapes["fc6"].in_channels == 2 * 6 * 6 * 128 == 9216
    assert shapes["fc7"].in_channels == 4096 and shapes["fc8"].in_channels == 4096

    # and the real tensors, seen by hooks on each tower's layers
    model = build_model(preset, mode="two-tower", devices=("cpu", "cpu"), num_classes=10).eval()
    seen = {}
    for t, tower in enumerate(model.towers):
        for name, module in tower.named_children():
            if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                continue  # the parameter-free steps between the layers (relu, lrn, pool, ...)
            module.register_forward_hook(
                lambda m, i, o, key=(t, name): seen.__setitem__(key, (tuple(i[0].shape), tuple(o.shape)))
            )
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 10)
    for t in (0, 1):
        assert seen[(t, "conv1")] == ((1, 3, 227, 227), (1, 48, 55, 55))  # 3 zeros right/bottom: "cover"
        assert seen[(t, "conv2")] == ((1, 48, 27, 27), (1, 128, 27, 27))
        assert seen[(t, "conv3")] == ((1, 256, 13, 13), (1, 192, 13, 13))  # reads both towers
        assert seen[(t, "conv4")] == ((1, 192, 13, 13), (1, 192, 13, 13))
        assert seen[(t, "conv5")] == ((1, 192, 13, 13), (1, 128, 13, 13))
        assert seen[(t, "fc6")] == ((1, 9216), (1, 2048))
        assert seen[(t, "fc7")] == ((1, 4096), (1, 2048))


def test_paper_and_original_differ_where_the_reference_says():
    paper, original = PRESETS["paper"], PRESETS["original"]
    assert paper.lrn.alpha == pytest.approx(1e-4) and original.lrn.alpha == pytest.approx(2e-5)
    assert (paper.lrn.k, paper.lrn.size, paper.lrn.beta) == (2.0, 5, 0.75)
    assert paper.convs[0].ops == ("relu", "lrn", "pool") and original.convs[0].ops == ("lrn", "pool", "relu")
    assert original.convs[1].ops == ("relu", "lrn", "samemap", "pool")
    assert [c.weight_std for c in original.convs] == [0.01, 0.01, 0.03, 0.03, 0.03]
    assert [c.bias for c in paper.convs] == [0, 1, 0, 1, 1] and [f.bias for f in paper.hidden] == [1, 1]
    assert paper.head.bias == 0 and all(f.dropout == 0.5 for f in paper.hidden)
    assert (original.bias_lr_mult, original.bias_weight_decay) == (2.0, False)
    assert [c.reads for c in PRESETS["paper-onetower"].convs] == ["image", "both", "both", "both", "both"]


# alexnet-2012.md, Initialization: weight std and bias value per layer
INIT = {
    "paper": ({n: 0.01 for n in PAPER_LAYER_PARAMS}, {"conv1": 0, "conv2": 1, "conv3": 0, "conv4": 1, "conv5": 1,
                                                      "fc6": 1, "fc7": 1, "fc8": 0}),
    "original": ({**{n: 0.01 for n in PAPER_LAYER_PARAMS}, "conv3": 0.03, "conv4": 0.03, "conv5": 0.03},
                 {"conv1": 0, "conv2": 1, "conv3": 0, "conv4": 1, "conv5": 1, "fc6": 1, "fc7": 1, "fc8": 0}),
}


@pytest.mark.parametrize("preset", list(INIT))
def test_init_follows_the_reference(preset):
    torch.manual_seed(0)
    model = build_model(preset, mode="grouped", device="cpu", num_classes=10)
    want_std, want_bias = INIT[preset]
    stds = {n.split(".")[0]: p.std().item() for n, p in model.named_parameters() if n.endswith("weight")}
    means = {n.split(".")[0]: p.mean().item() for n, p in model.named_parameters() if n.endswith("weight")}
    assert stds.keys() == want_std.keys()
    for name, want in want_std.items():
        assert stds[name] == pytest.approx(want, rel=0.05), name
        assert abs(means[name]) < 0.2 * want, name
    biases = {n.split(".")[0]: p for n, p in model.named_parameters() if n.endswith("bias")}
    for name, want in want_bias.items():
        assert torch.all(biases[name] == want), name


def test_bias_rates_per_layer():
    original, half = PRESETS["original"], PRESETS["original-half"]
    assert [original.bias_lr_mult_of(n) for n in original.layer_names] == [2.0] * 8
    assert [half.bias_lr_mult_of(n) for n in half.layer_names] == [0.2, 0.2] + [2.0] * 6  # epsB 0.002, then 0.02
    assert PRESETS["paper-half"].bias_lr_mult_of("conv1") == 1.0


def test_num_classes_is_configurable_and_checked():
    assert get_spec("paper").num_classes == 1000
    assert get_spec("paper", num_classes=7).num_classes == 7
    with pytest.raises(ValueError, match="positive integer"):
        get_spec("paper", num_classes=0)
