"""Two-tower and grouped executors compute the same function, gradients and SGD steps.

float64 on the CPU: the full-size paper network once; the original recipe's layers (LRN -> pool -> ReLU,
the same-map norm) at the cifar preset's size; the SGD steps on the cifar preset.
"""
import math
from dataclasses import replace

import pytest
import torch

from twogpu_alexnet import PRESETS, build_model, to_grouped_state, to_two_tower_state
from twogpu_alexnet.model.ops import CrossMapNorm


def _lrn_window_groups(monkeypatch, model, groups):
    """Make every LRN of ``model`` normalize over ``groups`` blocks of channels (1: across both towers)."""
    norms = [m for m in model.modules() if isinstance(m, CrossMapNorm)]
    assert norms
    for m in norms:
        monkeypatch.setattr(m, "groups", groups)


# the original preset's ops, LRN and same-map norm on the cifar preset's widths: 32 x 32 inputs
ORIGINAL_32 = replace(PRESETS["cifar"], name="original-32", lrn=PRESETS["original"].lrn,
                      same_map=PRESETS["original"].same_map,
                      convs=tuple(replace(c, ops=o.ops) for c, o in zip(PRESETS["cifar"].convs,
                                                                          PRESETS["original"].convs, strict=False)))


def _loud_init(model, seed=0):
    """Weights large enough that ReLUs, pools and both normalizations all matter (paper init is ~linear)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (2.0 / math.sqrt(fan_in)))
            else:
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) - 0.3)


def _pair(preset, num_classes=10):
    towers = build_model(preset, mode="two-tower", devices=("cpu", "cpu"), num_classes=num_classes).double().eval()
    _loud_init(towers)
    grouped = build_model(preset, mode="grouped", device="cpu", num_classes=num_classes).double().eval()
    grouped.load_state_dict(to_grouped_state(towers.state_dict()))
    return towers, grouped


def _images(preset, n=2, seed=1):
    size = preset.input_size if not isinstance(preset, str) else PRESETS[preset].input_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 50


@pytest.mark.parametrize("preset", [pytest.param("paper", marks=pytest.mark.slow), ORIGINAL_32, "cifar"],
                         ids=["paper", "original-32", "cifar"])
def test_same_logits_and_gradients(preset):
    towers, grouped = _pair(preset)
    x = _images(preset)
    labels = torch.tensor([3, 7])
    logits_t, logits_g = towers(x), grouped(x)
    assert logits_t.std() > 1e-3  # a real signal, not a constant
    torch.testing.assert_close(logits_g, logits_t, rtol=0, atol=1e-10 * logits_t.abs().max().item())
    torch.nn.functional.cross_entropy(logits_t, labels).backward()
    torch.nn.functional.cross_entropy(logits_g, labels).backward()
    grads_t = to_grouped_state({n: p.grad for n, p in towers.named_parameters()})
    grads_g = {n: p.grad for n, p in grouped.named_parameters()}
    assert grads_t.keys() == grads_g.keys()
    for name in grads_g:
        scale = max(grads_g[name].abs().max().item(), 1e-30)
        assert grads_g[name].abs().max() > 0, name
        torch.testing.assert_close(grads_t[name], grads_g[name], rtol=0, atol=1e-10 * scale, msg=name)


def test_the_comparison_can_fail_lrn_across_all_channels_is_another_network(monkeypatch):
    towers, grouped = _pair("cifar")
    x = _images("cifar")
    expected = towers(x)
    _lrn_window_groups(monkeypatch, grouped, 1)
    assert (grouped(x) - expected).abs().max() > 1e-6


@pytest.mark.parametrize("preset", ["cifar", ORIGINAL_32], ids=["cifar", "original-32"])
def test_one_sgd_step_over_both_towers_gives_the_same_weights(preset):
    towers, grouped = _pair(preset)
    opt_t = torch.optim.SGD(towers.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    opt_g = torch.optim.SGD(grouped.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, labels = _images(preset, n=2, seed=4), torch.tensor([1, 2])
    for _ in range(2):  # the second step uses the momentum buffers
        for model, opt in ((towers, opt_t), (grouped, opt_g)):
            model.eval()  # no dropout: the two executors draw different masks
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), labels).backward()
            opt.step()
    after_t = to_grouped_state(towers.state_dict())
    for name, value in grouped.state_dict().items():
        torch.testing.assert_close(after_t[name], value, rtol=0, atol=1e-10 * value.abs().max().item(), msg=name)


def test_converters_round_trip_exactly():
    towers = build_model("original", mode="two-tower", devices=("cpu", "cpu"), num_classes=5)
    state = towers.state_dict()
    back = to_two_tower_state(to_grouped_state(state))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    grouped = to_grouped_state(state)
    again = to_grouped_state(to_two_tower_state(grouped))
    assert all(torch.equal(again[k], grouped[k]) for k in grouped)
    assert grouped["conv2.weight"].shape == (256, 48, 5, 5) and grouped["fc8.weight"].shape == (5, 4096)
    assert torch.equal(grouped["conv3.weight"][192:], state["towers.1.conv3.weight"])


def _layer_output(model, tower, name, x):
    out = {}
    handle = getattr(model.towers[tower], name).register_forward_hook(lambda m, i, o: out.setdefault("y", o))
    model(x)
    handle.remove()
    return out["y"]


@pytest.mark.parametrize("name,crosses", [("conv2", False), ("conv3", True)])
def test_tower_isolation_below_conv3(name, crosses):
    towers, _ = _pair("cifar")
    towers.zero_grad()
    _layer_output(towers, 1, name, _images("cifar")).square().sum().backward()
    tower0_grads = [p.grad for n, p in towers.towers[0].named_parameters() if n.split(".")[0] in ("conv1", "conv2")]
    tower1_conv1 = towers.towers[1].conv1.weight.grad
    assert tower1_conv1 is not None and tower1_conv1.abs().max() > 0
    if crosses:  # conv3 reads both towers: tower 0's weights reach tower 1
        assert all(g is not None and g.abs().max() > 0 for g in tower0_grads)
    else:  # below conv3 nothing in tower 1 depends on tower 0
        assert all(g is None or g.abs().max() == 0 for g in tower0_grads)


@pytest.mark.parametrize("lrn_groups,isolated", [(2, True), (1, False)])
def test_grouped_tower_isolation_below_conv3(monkeypatch, lrn_groups, isolated):
    """In one tensor too: tower 1's half of pool2 (what conv3 reads) has zero gradient wrt tower 0's
    conv1/conv2 rows. The control, an LRN across all channels, leaks and makes the check fail."""
    _, grouped = _pair("cifar")
    _lrn_window_groups(monkeypatch, grouped, lrn_groups)
    seen = {}
    grouped.conv3.register_forward_pre_hook(lambda m, args: seen.setdefault("pool2", args[0]))
    grouped(_images("cifar"))
    half = grouped.conv2.out_channels // 2  # 64: tower 0's channels, then tower 1's
    seen["pool2"][:, half:].square().sum().backward()
    tower0 = [grouped.conv1.weight.grad[:48], grouped.conv1.bias.grad[:48],
              grouped.conv2.weight.grad[:half], grouped.conv2.bias.grad[:half]]
    tower1 = [grouped.conv1.weight.grad[48:], grouped.conv2.weight.grad[half:]]
    assert all(g.abs().max() > 0 for g in tower1)
    assert all(g.abs().max() == 0 for g in tower0) == isolated


def test_copies_into_cpu_memory_block(monkeypatch):
    """non_blocking is only safe into GPU memory: a CPU tower would read a copy still in flight."""
    towers, grouped = _pair("cifar")
    x = _images("cifar")
    calls = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        if args and isinstance(args[0], (str, torch.device)):
            calls.append((torch.device(args[0]), kwargs.get("non_blocking", False)))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    for model in (towers, grouped):
        calls.clear()
        model(x)
        assert calls and all(dev.type == "cpu" for dev, _ in calls)
        assert not any(non_blocking for _, non_blocking in calls), model.mode


def test_forward_and_backward_create_no_tensor_from_host_values():
    """On a GPU, a tensor made from a Python value (torch.tensor, new_tensor) or read back (.item())
    waits on the host; the towers must run without that. Checked here on the recorded op stream."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(str(func))
            return func(*args, **(kwargs or {}))

    x, labels = _images(ORIGINAL_32, n=1), torch.tensor([3])  # every op of the original recipe, at 32 x 32
    for model in _pair(ORIGINAL_32):
        model.train()
        with Ops() as ops:
            torch.nn.functional.cross_entropy(model(x), labels).backward()
        assert "aten.convolution_backward.default" in ops.names  # the backward pass was recorded
        host = ops.names & {"aten.lift_fresh.default", "aten._local_scalar_dense.default", "aten.nonzero.default"}
        assert not host, (model.mode, host)


def test_onetower_control_crosses_everywhere():
    towers = build_model("cifar-onetower", mode="two-tower", devices=("cpu", "cpu")).double()
    _loud_init(towers)
    _layer_output(towers, 1, "conv2", _images("cifar")).square().sum().backward()
    assert towers.towers[0].conv1.weight.grad.abs().max() > 0


def test_features_are_the_fc7_activations_before_fc8():
    towers, grouped = _pair("cifar")
    x = _images("cifar")
    f = towers.features(x)
    assert f.shape == (2, 1024) and torch.all(f >= 0)
    torch.testing.assert_close(grouped.features(x), f, rtol=0, atol=1e-10 * f.abs().max().item())
    torch.testing.assert_close(towers.fc8(f), towers(x), rtol=0, atol=0)
