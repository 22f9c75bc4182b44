"""The learned part L = W - c(t) * W0 (analysis/learned.py): c(t) against a simulated SGD run."""
import json

import pytest
import torch

from twogpu_alexnet.analysis.learned import history, init_scale, learned_part, movement, sgd_settings


def simulate(w0, grads, schedule, momentum, decay):
    """torch.optim.SGD (the trainer's update) in float64: schedule = [(steps, lr), ...]."""
    w = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([w], lr=schedule[0][1], momentum=momentum, weight_decay=decay)
    step = 0
    for steps, lr in schedule:
        for group in opt.param_groups:
            group["lr"] = lr
        for _ in range(steps):
            w.grad = grads[step].clone()
            opt.step()
            step += 1
    return w.detach()


@pytest.mark.parametrize("momentum,decay", [(0.9, 5e-4), (0.0, 1e-2), (0.9, 0.05)])
def test_init_scale_matches_simulated_sgd(momentum, decay):
    gen = torch.Generator().manual_seed(0)
    schedule = [(30, 0.01), (20, 0.001), (25, 0.05), (5, 0.0)]
    steps = sum(s for s, _ in schedule)
    w0 = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64)
    grads = torch.randn(steps, 4, 3, 5, 5, generator=gen, dtype=torch.float64)
    w = simulate(w0, grads, schedule, momentum, decay)
    # the same gradients from W0 = 0 give exactly what the gradients wrote: L
    learned = simulate(torch.zeros_like(w0), grads, schedule, momentum, decay)
    c = init_scale([(s, lr, momentum, decay) for s, lr in schedule])
    assert torch.allclose(learned_part(w, w0, c), learned, atol=1e-12, rtol=0)
    # and without gradients W is exactly c * W0
    still = simulate(w0, torch.zeros_like(grads), schedule, momentum, decay)
    assert torch.allclose(still, c * w0, atol=1e-13, rtol=0)
    assert 0 < c < 1
    # W - W0 (c taken as 1) is off by (c - 1) W0
    assert not torch.allclose(learned_part(w, w0, 1.0), learned, atol=1e-6)


def test_init_scale_of_a_long_run_erases_w0():
    assert init_scale([]) == 1.0
    # the paper's 90 epochs of ImageNet (about 900,000 steps at lr 0.01, momentum 0.9, decay 5e-4)
    assert init_scale([(900_000, 0.01, 0.9, 5e-4)]) < 1e-19
    # per step the factor falls by about lr * decay / (1 - momentum) = 5e-5
    assert init_scale([(1000, 0.01, 0.9, 5e-4)]) == pytest.approx(0.95, abs=0.005)


def test_history_from_metrics_step_lines(tmp_path):
    lines = [{"kind": "step", "epoch": 1, "step": 10, "lr": 0.01}, {"kind": "step", "epoch": 1, "step": 20, "lr": 0.01},
             {"kind": "epoch", "epoch": 1, "lr": 0.01}, {"kind": "step", "epoch": 2, "step": 35, "lr": 0.001},
             {"kind": "step", "epoch": 3, "step": 50, "lr": 0.1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "{cut short")
    config = {"train": {"lr": 0.01}, "schedule": {"kind": "plateau"}}
    segments, exact = history(tmp_path, 35, config, 0.9, 5e-4)
    assert exact and segments == [(10, 0.01, 0.9, 5e-4), (10, 0.01, 0.9, 5e-4), (15, 0.001, 0.9, 5e-4)]
    # past the logged steps: the config's lr fills in, and the history says it is not exact
    segments, exact = history(tmp_path, 60, config, 0.9, 5e-4)
    assert not exact and segments[-1] == (10, 0.01, 0.9, 5e-4) and sum(s[0] for s in segments) == 60
    # no metrics at all: the config alone
    assert history(None, 7, config, 0.9, 0.0) == ([(7, 0.01, 0.9, 0.0)], False)


def test_history_uses_conv1s_own_rate_in_the_original_schedule(tmp_path):
    # the original schedule: conv1 x0.1 from epoch 67 (the logged lr is fc8's)
    lines = [{"kind": "step", "epoch": 66, "step": 5, "lr": 0.001},
             {"kind": "step", "epoch": 67, "step": 9, "lr": 0.001}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    segments, exact = history(tmp_path, 9, {"schedule": {"kind": "original"}}, 0.9, 5e-4)
    assert exact and segments == [(5, 0.001, 0.9, 5e-4), (4, pytest.approx(0.0001), 0.9, 5e-4)]


def test_sgd_settings_and_movement():
    meta = {"optimizer": {"groups": [{"layer": "conv1", "kind": "weight", "momentum": 0.8, "weight_decay": 1e-3}]}}
    assert sgd_settings(meta) == (0.8, 1e-3)
    assert sgd_settings({"config": {"train": {"momentum": 0.5, "weight_decay": 0.0}}}) == (0.5, 0.0)
    w0 = torch.ones(2, 3, 2, 2)
    assert movement(torch.stack([torch.ones(3, 2, 2), torch.zeros(3, 2, 2)]), w0).tolist() == [1.0, 0.0]
