"""The paper's one-GPU control net (sec. 3.2; layers-145-half): one tower, dense, 59,798,312 parameters."""
import math

import pytest
import torch
import torch.nn.functional as F

from twogpu_alexnet import UserError, build_model, to_grouped_state
from twogpu_alexnet.engine.config import ModelConfig
from twogpu_alexnet.engine.evaluate import load_network
from twogpu_alexnet.engine.optim import param_groups
from twogpu_alexnet.engine.placement import resolve
from twogpu_alexnet.model import resolve_mode
from twogpu_alexnet.model.load import infer_preset, load_into, load_weights
from twogpu_alexnet.spec import PRESETS, layer_shapes, total_params

HALF = ["paper-half", "original-half"]
KEYS = [f"{layer}.{kind}" for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
        for kind in ("weight", "bias")]


def reference(state, x, original):
    """layers-145-half written out with torch.nn.functional, from the reference text (eval mode)."""
    def w(name):
        return state[f"{name}.weight"], state[f"{name}.bias"]

    def lrn(a):  # torch's alpha multiplies the mean of the window, the paper's the plain sum
        return F.local_response_norm(a, 5, (1e-4 / 5 if original else 1e-4) * 5, 0.75, 2.0)

    def same_map(a):  # each channel over its own 5x5 window, clipped at the border
        ones = torch.ones(a.shape[1], 1, 5, 5, dtype=a.dtype)
        return a / (1 + 0.001 / 25 * F.conv2d(a * a, ones, padding=2, groups=a.shape[1])) ** 0.75

    def pool(a):
        return F.max_pool2d(a, 3, 2)

    a = F.conv2d(F.pad(x, (0, 3, 0, 3)), *w("conv1"), stride=4)  # 55x55: cuda-convnet's output count
    a = F.relu(pool(lrn(a))) if original else pool(lrn(F.relu(a)))
    a = F.relu(F.conv2d(a, *w("conv2"), padding=2))
    a = pool(same_map(lrn(a))) if original else pool(lrn(a))
    a = F.relu(F.conv2d(a, *w("conv3"), padding=1))
    a = F.relu(F.conv2d(a, *w("conv4"), padding=1))
    a = F.conv2d(a, *w("conv5"), padding=1)
    a = F.relu(pool(a)) if original else pool(F.relu(a))
    a = 0.5 * F.relu(F.linear(a.flatten(1), *w("fc6")))  # the published dropout at test time
    a = 0.5 * F.relu(F.linear(a, *w("fc7")))
    return F.linear(a, *w("fc8"))


@pytest.mark.slow
@pytest.mark.parametrize("preset", HALF)
def test_half_net_matches_the_direct_reference_forward_and_gradient(preset):
    model = build_model(preset, mode="grouped", device="cpu", num_classes=10).double().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights large enough that ReLUs, pools and both normalizations all matter
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (2.0 / math.sqrt(p[0].numel())))
            else:
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) - 0.3)
    x = torch.randn(2, 3, 224, 224, generator=g, dtype=torch.float64) * 50
    state = {k: v.detach().clone().requires_grad_() for k, v in model.state_dict().items()}
    want = reference(state, x, original=preset == "original-half")
    got = model(x)
    assert want.std() > 1e-3
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10 * want.abs().max().item())
    other = reference(state, x, original=preset != "original-half")
    assert (other - want).abs().max() > 1e-6  # the two recipes are different networks
    labels = torch.tensor([3, 7])
    F.cross_entropy(want, labels).backward()
    F.cross_entropy(got, labels).backward()
    for name, p in model.named_parameters():
        scale = state[name].grad.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(p.grad, state[name].grad, rtol=0, atol=1e-9 * scale, msg=name)


@pytest.mark.parametrize("preset", HALF)
def test_one_tower_dense_with_the_reference_parameter_count(preset):
    spec = PRESETS[preset]
    assert total_params(spec) == 59_798_312 and spec.towers == 1
    model = build_model(preset, device="meta")  # the default mode, auto, is grouped for one tower
    assert model.mode == "grouped" and list(model.state_dict()) == KEYS
    assert sum(p.numel() for p in model.parameters()) == 59_798_312
    assert [m.groups for m in (model.conv1, model.conv2, model.conv3, model.conv4, model.conv5)] == [1] * 5
    widths = [model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels,
              model.conv4.out_channels, model.conv5.out_channels, model.fc6.out_features, model.fc7.out_features]
    assert widths == [48, 128, 192, 192, 256, 4096, 4096]
    shapes = {s.name: (s.conv_size, s.out_size) for s in layer_shapes(spec)}
    assert shapes["conv1"] == (55, 27) and shapes["conv2"] == (27, 13) and shapes["conv5"] == (13, 6)
    with pytest.raises(UserError, match=f"preset '{preset}' is a one-tower network.*mode='grouped'"):
        build_model(preset, mode="two-tower", devices=("cpu", "cpu"))


def test_auto_is_two_tower_with_two_gpus_except_for_one_tower_presets(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_mode("auto", PRESETS["paper"]) == "two-tower"
    assert resolve_mode("auto", PRESETS["paper-half"]) == "grouped"
    assert resolve(ModelConfig(preset="paper", mode="auto"), cuda_count=2).mode == "two-tower"
    placed = resolve(ModelConfig(preset="original-half", mode="auto"), cuda_count=2)
    assert (placed.mode, placed.devices) == ("grouped", ("cuda:0",))
    with pytest.raises(UserError, match="one-tower network.*model.mode=grouped"):
        resolve(ModelConfig(preset="paper-half", mode="two-tower"), cuda_count=2)


def test_original_half_rates_and_inits_follow_layer_params_145_half():
    torch.manual_seed(0)
    model = build_model("original-half", mode="grouped", device="cpu")
    groups = {(g["layer"], g["kind"]): g for g in param_groups(model, lr=0.01, weight_decay=5e-4)}
    for (layer, kind), g in groups.items():
        want = 0.01 if kind == "weight" else (0.002 if layer in ("conv1", "conv2") else 0.02)
        assert g["lr"] == pytest.approx(want, rel=1e-12), (layer, kind)
        assert g["weight_decay"] == (5e-4 if kind == "weight" else 0.0)
    stds = {n: round(p.std().item(), 3) for n, p in model.named_parameters() if n.endswith("weight")}
    assert stds == {"conv1.weight": 0.01, "conv2.weight": 0.01, "conv3.weight": 0.03, "conv4.weight": 0.03,
                    "conv5.weight": 0.03, "fc6.weight": 0.01, "fc7.weight": 0.01, "fc8.weight": 0.01}
    biases = {n: p.unique().tolist() for n, p in model.named_parameters() if n.endswith("bias")}
    assert biases == {"conv1.bias": [0.0], "conv2.bias": [1.0], "conv3.bias": [0.0], "conv4.bias": [1.0],
                      "conv5.bias": [1.0], "fc6.bias": [1.0], "fc7.bias": [1.0], "fc8.bias": [0.0]}
    assert [c.ops for c in model.spec.convs] == [("lrn", "pool", "relu"), ("relu", "lrn", "samemap", "pool"),
                                                 ("relu",), ("relu",), ("pool", "relu")]


def test_half_weights_load_evaluate_and_refuse_other_presets(tmp_path):
    torch.manual_seed(0)
    model = build_model("paper-half", mode="grouped", device="cpu", num_classes=5)
    state = model.state_dict()
    assert to_grouped_state(state).keys() == state.keys()  # one tower: the grouped layout is its own
    torch.save({"model": state, "preset": "paper-half", "epoch": 2}, tmp_path / "ckpt.pt")
    torch.save(state, tmp_path / "plain.pt")
    loaded, meta = load_weights(tmp_path / "ckpt.pt")
    assert list(loaded) == KEYS and meta["num_classes"] == 5  # a one-tower checkpoint keeps its keys
    plain, meta = load_weights(tmp_path / "plain.pt")
    assert meta["preset"] is None and infer_preset(plain) == "paper-half"
    target = build_model("paper-half", mode="grouped", device="cpu", num_classes=5)
    load_into(target, plain)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in state.items())
    net, _ = load_network(tmp_path / "plain.pt", None, "cpu")
    assert net.spec.name == "paper-half" and not net.training
    paper = build_model("paper", mode="grouped", device="meta", num_classes=5)
    with pytest.raises(UserError, match="do not fit preset 'paper'"):
        load_into(paper, state)
    with pytest.raises(UserError, match="do not fit preset 'paper-half'"):
        load_into(target, build_model("paper", mode="two-tower", devices=("meta", "meta"), num_classes=5).state_dict())


def test_info_prints_the_one_tower_table(capsys):
    import json

    from twogpu_alexnet.cli import main

    assert main(["info", "--preset", "original-half", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total_params"] == 59_798_312 and out["towers"] == 1
    assert [(r["name"], r["tower"]) for r in out["layers"]] == [
        ("conv1", 0), ("conv2", 0), ("conv3", 0), ("conv4", 0), ("conv5", 0), ("fc6", 0), ("fc7", 0), ("fc8", None)]
    rows = {r["name"]: r for r in out["layers"]}
    assert rows["conv5"]["kernels"] == 256 and rows["fc6"]["input"] == [9216] and rows["conv2"]["params"] == 153_728
    assert main(["info", "--preset", "paper-half"]) == 0
    assert "total parameters: 59,798,312" in capsys.readouterr().out
