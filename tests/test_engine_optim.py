"""Parameter groups, the optimizer state in the canonical layout, and the lr schedules."""
import math

import pytest
import torch

from twogpu_alexnet.engine.config import ScheduleConfig
from twogpu_alexnet.engine.optim import load_optimizer_state, make_optimizer, optimizer_state, param_groups
from twogpu_alexnet.engine.schedule import Schedule
from twogpu_alexnet.engine.step import train_step
from twogpu_alexnet.model import build_model
from twogpu_alexnet.model.load import to_layout

CPU = torch.device("cpu")


def _groups(preset, mode="grouped"):
    torch.manual_seed(0)
    kwargs = {"devices": ("cpu", "cpu")} if mode == "two-tower" else {"device": "cpu"}
    model = build_model(preset, mode=mode, num_classes=10, **kwargs)
    return model, {(g["layer"], g["kind"]): g for g in param_groups(model, lr=0.01, weight_decay=5e-4)}


@pytest.mark.parametrize("mode", ["grouped", "two-tower"])
def test_paper_groups_every_layer_at_lr_and_decay(mode):
    model, groups = _groups("cifar", mode)
    assert list(dict.fromkeys(layer for layer, _ in groups)) == list(model.spec.layer_names)
    assert all(g["lr"] == 0.01 and g["weight_decay"] == 5e-4 for g in groups.values())
    per_layer = 2 if mode == "two-tower" else 1  # both towers' halves share a layer's group
    assert len(groups["conv1", "weight"]["params"]) == per_layer and len(groups["fc8", "weight"]["params"]) == 1
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_original_preset_biases_at_twice_the_lr_without_decay():
    _, groups = _groups("original")
    for (layer, kind), g in groups.items():
        assert (g["lr"], g["weight_decay"]) == ((0.02, 0.0) if kind == "bias" else (0.01, 5e-4)), (layer, kind)


def test_sgd_matches_the_update_rule_by_hand():
    model, _ = _groups("cifar")
    model.eval()  # no dropout: one deterministic gradient
    opt = make_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    w0 = model.conv1.weight.detach().clone()
    train_step(model, opt, scaler, x, y, device=CPU)
    g1 = model.conv1.weight.grad.clone()
    w1 = model.conv1.weight.detach().clone()
    train_step(model, opt, scaler, x, y, device=CPU)
    g2 = model.conv1.weight.grad.clone()
    v1 = g1 + 5e-4 * w0  # torch's buffer holds gradients: v <- 0.9 v + (g + wd w); w <- w - lr v
    v2 = 0.9 * v1 + g2 + 5e-4 * w1
    torch.testing.assert_close(w1, w0 - 0.1 * v1, rtol=0, atol=1e-7)
    torch.testing.assert_close(model.conv1.weight.detach(), w1 - 0.1 * v2, rtol=0, atol=1e-7)


def test_optimizer_state_moves_between_layouts():
    """Momentum saved from two towers continues exactly in the grouped model (and back)."""
    tower, _ = _groups("cifar", "two-tower")
    tower.eval()
    opt = make_optimizer(tower, 0.05, 0.9, 5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6)
    train_step(tower, opt, scaler, x, y, device=CPU)
    saved = optimizer_state(opt, tower)
    assert set(saved["momentum"]) == set(tower.state_dict())  # canonical two-tower names
    grouped = build_model("cifar", mode="grouped", device="cpu", num_classes=10).eval()
    grouped.load_state_dict(to_layout(tower.state_dict(), "grouped"))
    opt_g = make_optimizer(grouped, 0.05, 0.9, 5e-4)
    load_optimizer_state(opt_g, grouped, saved)
    train_step(tower, opt, scaler, x, y, device=CPU)
    train_step(grouped, opt_g, scaler, x, y, device=CPU)
    for k, v in to_layout(grouped.state_dict(), "two-tower").items():
        torch.testing.assert_close(v, tower.state_dict()[k], rtol=1e-5, atol=1e-6)


class _Opt:
    def __init__(self):
        self.param_groups = [{"layer": layer, "kind": "weight", "initial_lr": 0.01, "lr": 0.01}
                             for layer in ("conv1", "conv2", "fc8")]


def test_original_schedule_follows_the_2012_log():
    s, opt = Schedule(ScheduleConfig(kind="original")), _Opt()
    want = {1: (0.01, 0.01), 24: (0.01, 0.01), 25: (1e-3, 1e-3), 51: (1e-4, 1e-4), 66: (1e-4, 1e-4),
            67: (1e-5, 1e-4), 71: (1e-5, 1e-4), 72: (0.0, 1e-4), 79: (0.0, 1e-5), 90: (0.0, 1e-5)}
    for epoch, (conv1, rest) in want.items():
        s.apply(opt, epoch)
        got = [g["lr"] for g in opt.param_groups]
        assert math.isclose(got[0], conv1, rel_tol=1e-9, abs_tol=0) and got[0] == pytest.approx(conv1), epoch
        assert got[1] == pytest.approx(rest) and got[2] == pytest.approx(rest), epoch
    assert s.color_noise_on(66) and not s.color_noise_on(67)


def test_plateau_divides_by_ten_at_most_three_times():
    s, opt = Schedule(ScheduleConfig(kind="plateau", patience=2, threshold=0.001, max_drops=3)), _Opt()
    errors = [0.9, 0.8, 0.8, 0.8, 0.7, 0.7005, 0.71] + [0.7] * 10
    drops = [epoch for epoch, e in enumerate(errors, 1) if s.end_epoch(epoch, e)]
    assert drops == [4, 7, 9] and s.drops == 3  # two epochs without a > 0.001 improvement, then a drop
    s.apply(opt, 20)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-5] * 3)
    restored = Schedule(ScheduleConfig(kind="plateau"))
    restored.load_state_dict(s.state_dict())
    assert restored.state_dict() == s.state_dict()
    assert s.color_noise_on(90)  # only the original schedule switches colour noise off
    none = Schedule(ScheduleConfig(kind="none"))
    assert none.factor(50, "conv1") == 1.0 and not none.end_epoch(1, 1.0)



def _step_with_fixed_grads(model, opt, seed):
    """One SGD step with gradients that are the same numbers whatever the parameters' memory layout."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=gen))
    opt.step()


def _canonical(model):
    return to_layout({k: v.detach().contiguous() for k, v in model.state_dict().items()}, "two-tower")


@pytest.mark.parametrize("saved_mode", ["grouped", "two-tower"])
@pytest.mark.parametrize("saved_cl, resumed_cl", [(False, True), (True, False)], ids=["to-channels-last", "to-nchw"])
def test_momentum_restores_into_each_parameters_layout(saved_mode, saved_cl, resumed_cl):
    """Momentum saved in one memory layout (and mode) continues exactly in a model of the other layout:
    the next update equals the one of a model that kept the saved layout."""
    source, _ = _groups("cifar", saved_mode)
    if saved_cl:
        source = source.to(memory_format=torch.channels_last)
    opt = make_optimizer(source, 0.05, 0.9, 5e-4)
    _step_with_fixed_grads(source, opt, seed=1)
    saved, weights = optimizer_state(opt, source), _canonical(source)

    def resumed(channels_last):
        model = build_model("cifar", mode="grouped", device="cpu", num_classes=10)
        model.load_state_dict(to_layout(weights, "grouped"))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = make_optimizer(model, 0.05, 0.9, 5e-4)
        load_optimizer_state(opt, model, saved)
        for p in model.parameters():
            assert opt.state[p]["momentum_buffer"].stride() == p.stride()
        _step_with_fixed_grads(model, opt, seed=2)
        return _canonical(model)

    reference, flipped = resumed(saved_cl), resumed(resumed_cl)
    for k, v in reference.items():
        assert torch.equal(flipped[k], v), k


def test_resume_with_channels_last_flipped_follows_the_straight_run(tmp_path):
    """A run resumed with speed.channels_last switched ends where the uninterrupted run ends, up to
    the rounding of the two convolution layouts (a mixed-up momentum moves it by most of an epoch)."""
    from twogpu_alexnet.engine.checkpoint import load_checkpoint
    from twogpu_alexnet.engine.config import load_config
    from twogpu_alexnet.engine.train import train

    first, then = "false", "true"  # the other direction and the change of mode: the exact test above
    sets = ["data.synthetic_images=32", "data.synthetic_val_images=8", "train.batch_size=8", "train.lr=0.001",
            "train.max_steps_per_epoch=3", "train.deterministic=true", "analysis.color_stats=false"]
    train(load_config(None, sets + ["train.epochs=2", f"speed.channels_last={first}"]), tmp_path / "straight")
    train(load_config(None, sets + ["train.epochs=1", f"speed.channels_last={first}"]), tmp_path / "flipped")
    train(load_config(tmp_path / "flipped" / "config.toml", ["train.epochs=2", f"speed.channels_last={then}"]),
          tmp_path / "flipped", resume=True)
    folder = tmp_path / "straight" / "checkpoints"
    one, two = load_checkpoint(folder / "epoch_001.pt")["model"], load_checkpoint(folder / "epoch_002.pt")["model"]
    flipped = load_checkpoint(tmp_path / "flipped" / "checkpoints" / "epoch_002.pt")["model"]
    for k in two:
        update = (two[k] - one[k]).norm()
        assert (flipped[k] - two[k]).norm() <= 1e-3 * update, (k, float((flipped[k] - two[k]).norm() / update))

def test_original_schedule_changes_weight_rates_only_and_conv1_bias_with_conv1():
    """layer-params-145.cfg: the log changes only epsW; conv2..fc8 biases keep 0.02, conv1's ends at 0."""
    from types import SimpleNamespace

    model = build_model("original", mode="grouped", device="meta", num_classes=10)
    opt = SimpleNamespace(param_groups=param_groups(model, lr=0.01, weight_decay=5e-4))
    assert len(opt.param_groups) == 16
    s = Schedule(ScheduleConfig(kind="original"))
    #        epoch: (conv1 weight, conv1 bias, other weights, other biases)
    want = {1: (0.01, 0.02, 0.01, 0.02), 24: (0.01, 0.02, 0.01, 0.02), 25: (1e-3, 0.02, 1e-3, 0.02),
            50: (1e-3, 0.02, 1e-3, 0.02), 51: (1e-4, 0.02, 1e-4, 0.02), 66: (1e-4, 0.02, 1e-4, 0.02),
            67: (1e-5, 2e-3, 1e-4, 0.02), 71: (1e-5, 2e-3, 1e-4, 0.02), 72: (0.0, 0.0, 1e-4, 0.02),
            78: (0.0, 0.0, 1e-4, 0.02), 79: (0.0, 0.0, 1e-5, 0.02), 90: (0.0, 0.0, 1e-5, 0.02)}
    for epoch, (conv1_w, conv1_b, rest_w, rest_b) in want.items():
        s.apply(opt, epoch)
        for g in opt.param_groups:
            expected = {("conv1", "weight"): conv1_w, ("conv1", "bias"): conv1_b}.get(
                (g["layer"], g["kind"]), rest_w if g["kind"] == "weight" else rest_b)
            assert g["lr"] == pytest.approx(expected, rel=1e-12, abs=0), (epoch, g["layer"], g["kind"])
