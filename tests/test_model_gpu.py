"""Real cross-device runs: two-tower on (cuda:0, cpu) and (cuda:0, cuda:1) equals grouped on cuda:0."""
import pytest
import torch

from twogpu_alexnet import build_model, to_grouped_state

pytestmark = pytest.mark.gpu


def _compare(devices, preset="paper"):
    torch.manual_seed(0)
    towers = build_model(preset, mode="two-tower", devices=devices, num_classes=10).double().eval()
    grouped = build_model(preset, mode="grouped", device="cuda:0", num_classes=10).double().eval()
    grouped.load_state_dict(to_grouped_state(towers.state_dict()))
    size = towers.spec.input_size
    x = torch.randn(4, 3, size, size, dtype=torch.float64) * 50
    labels = torch.tensor([1, 2, 3, 4], device="cuda:0")
    lt, lg = towers(x), grouped(x)
    assert lt.device == torch.device("cuda:0")
    torch.testing.assert_close(lt, lg, rtol=1e-9, atol=1e-9 * lg.abs().max().item())
    torch.nn.functional.cross_entropy(lt, labels).backward()
    torch.nn.functional.cross_entropy(lg, labels).backward()
    grads_t = to_grouped_state({n: p.grad.to("cuda:0") for n, p in towers.named_parameters()})
    for n, p in grouped.named_parameters():
        torch.testing.assert_close(grads_t[n], p.grad, rtol=1e-8, atol=1e-8 * p.grad.abs().max().item(), msg=n)
    return towers


@pytest.mark.parametrize("preset", ["paper", "original"])
def test_cuda_and_cpu_towers_equal_grouped(preset):
    towers = _compare(("cuda:0", "cpu"), preset)
    assert towers.towers[1].conv1.weight.device.type == "cpu"


def test_two_gpus_equal_grouped():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    towers = _compare(("cuda:0", "cuda:1"))
    assert towers.towers[1].conv1.weight.device == torch.device("cuda:1")


@pytest.mark.parametrize("preset", ["paper", "original"])
@pytest.mark.parametrize("devices", [("cuda:0",), ("cuda:0", "cuda:0"), ("cuda:0", "cuda:1")])
def test_forward_backward_never_waits_on_the_host(devices, preset):
    """Grouped on one GPU, and two-tower on GPUs (one shared, or two when present): no host sync."""
    if torch.cuda.device_count() < len(set(devices)):
        pytest.skip("needs two CUDA devices")
    if len(devices) == 1:
        model = build_model(preset, mode="grouped", device=devices[0])
    else:
        model = build_model(preset, mode="two-tower", devices=devices)
    x = torch.randn(16, 3, 224, 224, device="cuda:0")
    labels = torch.randint(0, 1000, (16,), device="cuda:0")
    torch.nn.functional.cross_entropy(model(x), labels).backward()  # warm-up (allocations, cudnn plans)
    torch.cuda.set_sync_debug_mode("error")  # any synchronizing call raises
    try:
        torch.nn.functional.cross_entropy(model(x), labels).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
