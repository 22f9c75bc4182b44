"""What each speed option buys: training steps per second with one option at a time, in one process.

Each variant builds the same model (same seed), takes ``warmup`` steps, then times ``steps`` full
training steps one by one (forward, loss, backward, SGD) on a fixed random batch already on the device, the
trainer's own :func:`~.train.forward_loss` and :func:`~.train.sgd_step`. Ratios are against the
float32 baseline measured in the same call.
"""
from __future__ import annotations

import time

import torch

from ..model import build_model
from .optim import make_optimizer
from .train import AMP_DTYPES, forward_loss, sgd_step, torch_settings

# name -> (amp, channels_last, compile, cudnn_benchmark)
VARIANTS = {
    "baseline (fp32)": ("none", False, False, False),
    "channels_last": ("none", True, False, False),
    "bf16 autocast": ("bf16", False, False, False),
    "fp16 autocast + scaler": ("fp16", False, False, False),
    "torch.compile": ("none", False, True, False),
    "cudnn benchmark": ("none", False, False, True),
    "all (bf16, channels_last, compile, benchmark)": ("bf16", True, True, True),
}
CUDA_ONLY = {"fp16 autocast + scaler", "cudnn benchmark"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_variant(preset: str, mode: str, devices: tuple[str, ...], batch_size: int, steps: int, warmup: int,
                    amp: str, channels_last: bool, compile: bool, cudnn_benchmark: bool) -> dict:
    """Training images per second of one configuration: ``img_s`` from the median step time,
    ``img_s_best`` from the fastest step (robust to other jobs on a shared machine)."""
    torch.manual_seed(0)
    if mode == "two-tower":
        model = build_model(preset, mode="two-tower", devices=devices)
    else:
        model = build_model(preset, mode="grouped", device=devices[0])
    device = torch.device(devices[0])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, 0.01, 0.9, 5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    forward = torch.compile(model) if compile else model
    size, classes = model.spec.input_size, model.spec.num_classes
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch_size, 3, size, size, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch_size,), generator=g).to(model.head_device)
    with torch_settings(deterministic=False, cudnn_benchmark=cudnn_benchmark):
        for _ in range(warmup):
            sgd_step(forward_loss(forward, x, y, AMP_DTYPES[amp], device.type), opt, scaler)
        _sync(device)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            sgd_step(forward_loss(forward, x, y, AMP_DTYPES[amp], device.type), opt, scaler)
            _sync(device)
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"img_s": batch_size / times[len(times) // 2], "img_s_best": batch_size / times[0]}


def measure_speed_options(preset: str = "cifar", mode: str = "grouped", devices: tuple[str, ...] = ("cpu",),
                          batch_size: int = 64, steps: int = 10, warmup: int = 3, variants=None) -> list[dict]:
    """One row per variant: ``option``, ``img_s``, ``ratio`` (to the baseline); CUDA-only options are
    left out on the CPU."""
    on_cuda = torch.device(devices[0]).type == "cuda"
    names = [n for n in (variants or VARIANTS) if on_cuda or n not in CUDA_ONLY]
    if "baseline (fp32)" not in names:
        names.insert(0, "baseline (fp32)")
    rows = [{"option": name, **measure_variant(preset, mode, devices, batch_size, steps, warmup, *VARIANTS[name])}
            for name in names]
    base = next(r for r in rows if r["option"] == "baseline (fp32)")
    for r in rows:
        r["ratio"] = r["img_s"] / base["img_s"]
        r["ratio_best"] = r["img_s_best"] / base["img_s_best"]
    return rows
