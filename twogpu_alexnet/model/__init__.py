"""build_model: the spec run as two real towers on two devices, or as one grouped model."""
from __future__ import annotations

import torch

from ..errors import UserError
from ..spec import NetSpec, get_spec
from .base import AlexNetBase
from .convert import to_grouped_state, to_two_tower_state
from .grouped import GroupedAlexNet
from .init import init_from_spec
from .towers import TwoTowerAlexNet

MODES = ("two-tower", "grouped", "auto")


def check_device(device) -> torch.device:
    """``device`` as a torch.device (``cuda`` -> ``cuda:0``); UserError if it is not a name or does not exist."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"{device!r} is not a device name; use e.g. 'cuda:0' or 'cpu'") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if dev.index is None else dev.index
        if index >= count:
            raise UserError(
                f"device cuda:{index} does not exist (this machine has {count} CUDA device{'s' * (count != 1)}); "
                "use mode='grouped' to run both towers on one device, or name devices that exist"
            )
        dev = torch.device("cuda", index)
    return dev


def resolve_mode(mode: str) -> str:
    """'auto' -> 'two-tower' with two or more GPUs, else 'grouped'."""
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    if mode == "auto":
        return "two-tower" if torch.cuda.is_available() and torch.cuda.device_count() >= 2 else "grouped"
    return mode


def build_model(
    preset: "str | NetSpec" = "paper",
    mode: str = "two-tower",
    *,
    devices=None,
    device=None,
    num_classes: int | None = None,
) -> AlexNetBase:
    """Build and initialize the network of ``preset``.

    mode="two-tower": tower i on ``devices[i]`` (default ``("cuda:0", "cuda:1")``); any pair works,
    e.g. ``("cuda:0", "cpu")`` or ``("cpu", "cpu")``. mode="grouped": everything on ``device``
    (default cuda:0 when present, else cpu). mode="auto": two-tower on cuda:0/cuda:1 with two GPUs,
    grouped otherwise.
    """
    spec = get_spec(preset, num_classes)
    mode = resolve_mode(mode)
    if mode == "two-tower":
        if devices is None:
            devices = ("cuda:0", "cuda:1")
        if isinstance(devices, (str, torch.device)) or len(devices) != 2:
            raise UserError(
                f"two-tower mode needs two devices, one per tower, got {devices!r}; e.g. devices=('cuda:0', 'cuda:1')"
            )
        model = TwoTowerAlexNet(spec, tuple(check_device(d) for d in devices))
    else:
        if device is None:
            device = devices[0] if devices else ("cuda:0" if torch.cuda.is_available() else "cpu")
        model = GroupedAlexNet(spec, check_device(device))
    init_from_spec(model, spec)
    return model


__all__ = [
    "MODES",
    "build_model",
    "check_device",
    "resolve_mode",
    "to_grouped_state",
    "to_two_tower_state",
    "AlexNetBase",
]
