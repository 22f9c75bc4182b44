"""Which executor and which devices a training process uses, decided before anything is allocated.

- ``two-tower``: tower 0 and tower 1 on two GPUs; under torchrun process ``LOCAL_RANK`` r owns
  cuda:2r and cuda:2r+1. ``model.devices`` may name any pair the model takes: ``["cpu", "cpu"]`` runs
  the two-tower executor on the CPU, ``["cuda:0", "cuda:0"]`` both towers on one GPU, and a pair may
  mix the CPU and a GPU (without ``speed.amp``: autocast covers one kind of device).
- ``grouped``: both towers on one device (groups=2): cuda:LOCAL_RANK, or the CPU without GPUs.
- ``auto``: two-tower when every local process can have two GPUs, grouped otherwise; the returned
  note says which and why.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import UserError
from ..model.devices import check_device
from ..model.devices import cuda_count as visible_gpus
from ..spec import PRESETS
from .config import ModelConfig
from .distributed import DistContext


@dataclass(frozen=True)
class Placement:
    mode: str  # "two-tower" | "grouped"
    devices: tuple[str, ...]  # two (one per tower) or one
    note: str  # one line for the user: what was chosen and why

    @property
    def use_cuda(self) -> bool:
        return any(d.startswith("cuda") for d in self.devices)

    @property
    def first_device(self) -> torch.device:
        return torch.device(self.devices[0])

    @property
    def cuda_device(self) -> torch.device | None:
        """The GPU to make current (the first one named; a pair may mix the CPU and a GPU), or None."""
        return next((torch.device(d) for d in self.devices if d.startswith("cuda")), None)


def _gpus(n: int) -> str:
    return f"{n} GPU{'s' * (n != 1)}"


def _check_named(devices: list[str], cuda_count: int) -> tuple[str, ...]:
    """``devices`` checked and spelled in full (``cuda`` -> ``cuda:0``)."""
    return tuple(str(check_device(name, what="model.devices entry", count=cuda_count, kinds=("cpu", "cuda"),
                                  fix="name devices that exist or use model.mode=grouped")) for name in devices)


def _one_tower_grouped(model: ModelConfig) -> ModelConfig:
    """A one-tower preset (paper-half, original-half) runs grouped on one device: 'auto' becomes grouped."""
    if model.preset not in PRESETS or PRESETS[model.preset].towers == 2:
        return model
    if model.mode == "two-tower":
        raise UserError(f"model.preset {model.preset} is a one-tower network for one device; "
                        "use model.mode=grouped or auto")
    return replace(model, mode="grouped")


def resolve(model: ModelConfig, ctx: DistContext | None = None, cuda_count: int | None = None) -> Placement:
    """The placement for ``model`` in process ``ctx`` (default: a single process); UserError when the
    request cannot be met."""
    ctx = ctx if ctx is not None else DistContext()
    if cuda_count is None:
        cuda_count = visible_gpus()
    model = _one_tower_grouped(model)
    if model.devices:
        if ctx.enabled:
            raise UserError("model.devices must stay empty under torchrun (each process takes its own GPUs "
                            "from LOCAL_RANK); remove it")
        devices = _check_named(model.devices, cuda_count)
        return Placement(model.mode, devices, f"{model.mode} on {', '.join(devices)}")
    r, local = ctx.local_rank, max(ctx.local_world_size, 1)
    mode = model.mode
    if mode == "auto":
        if cuda_count >= 2 * local:
            mode, why = "two-tower", f"{_gpus(cuda_count)} visible"
        else:
            mode = "grouped"
            need = "two-tower needs 2 per process" if cuda_count else "running on the CPU"
            why = f"{_gpus(cuda_count)} visible, {need}"
        prefix = f"model.mode auto ({why}) -> "
    else:
        prefix = ""
    if mode == "two-tower":
        if cuda_count < 2 * (r + 1):
            need = f"cuda:{2 * r} and cuda:{2 * r + 1}"
            raise UserError(f"two-tower mode needs two GPUs ({need}) for this process but this machine has "
                            f"{_gpus(cuda_count)}; use --set model.mode=grouped (one GPU or the CPU) "
                            "or model.mode=auto")
        devices = (f"cuda:{2 * r}", f"cuda:{2 * r + 1}")
        return Placement(mode, devices, f"{prefix}two-tower: tower 0 on {devices[0]}, tower 1 on {devices[1]}")
    device = f"cuda:{r}" if cuda_count > r else "cpu"
    if cuda_count and cuda_count <= r:
        raise UserError(f"grouped mode needs one GPU per process but process {r} finds {_gpus(cuda_count)}; "
                        "start fewer processes per node")
    return Placement("grouped", (device,), f"{prefix}grouped: both towers on {device}")
