"""The two towers' dropout masks are independent draws, wherever the towers live.

``torch.manual_seed`` gives every CUDA device a generator in the same state, so two towers drawing
equal-sized masks from their devices' generators on cuda:0 and cuda:1 would draw the same mask: the
towers' fc6 units would be dropped in lockstep. Each tower's masks come from its own key instead.
The check makes fc6's ReLU outputs all 1 so that the zeros of its output are the dropped units, and
compares tower 0's mask with tower 1's as fc7 receives them.
"""
import pytest
import torch

from twogpu_alexnet import build_model


def mask_agreement(devices) -> float:
    """Share of fc6 units on which tower 0's and tower 1's dropout masks agree (0.5 when independent)."""
    torch.manual_seed(0)  # as the trainer seeds a run
    model = build_model("cifar", mode="two-tower", devices=devices).train()
    seen = []
    for tower in model.towers:
        torch.nn.init.zeros_(tower.fc6.weight)
        torch.nn.init.ones_(tower.fc6.bias)
    hook = model.towers[0].fc7.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(torch.zeros(64, 3, 32, 32))
    hook.remove()
    both = seen[0].cpu()  # tower 0's fc6 output, then tower 1's
    assert both.min() >= 0 and 0.4 < (both == 0).float().mean() < 0.6  # ReLU of 1, then dropout at p = 0.5
    mask0, mask1 = (both != 0).chunk(2, 1)
    return (mask0 == mask1).float().mean().item()


def test_towers_on_one_cpu_draw_independent_masks():
    assert 0.45 < mask_agreement(("cpu", "cpu")) < 0.55


@pytest.mark.gpu
@pytest.mark.parametrize("devices", [("cuda:0", "cuda:0"), ("cuda:0", "cpu"), ("cuda:0", "cuda:1")])
def test_towers_on_gpus_draw_independent_masks(devices):
    if "cuda:1" in devices and torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    assert 0.45 < mask_agreement(devices) < 0.55
