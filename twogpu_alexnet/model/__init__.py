"""build_model: the spec run as two real towers on two devices, or as one grouped model."""
from __future__ import annotations

import torch

from ..errors import UserError
from ..spec import NetSpec, get_spec
from .base import AlexNetBase
from .convert import to_grouped_state, to_two_tower_state
from .devices import check_device
from .grouped import GroupedAlexNet
from .init import init_from_spec
from .towers import TwoTowerAlexNet

MODES = ("two-tower", "grouped", "auto")
_TWO_TOWER_FIX = "use mode='grouped' to run both towers on one device, or name devices that exist"


def resolve_mode(mode: str, spec: NetSpec | None = None) -> str:
    """'auto' -> 'two-tower' with two or more GPUs, else 'grouped'; a one-tower spec is always 'grouped'."""
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    one_tower = spec is not None and spec.towers == 1
    if mode == "two-tower" and one_tower:
        raise UserError(f"preset {spec.name!r} is a one-tower network for one device; use mode='grouped' or 'auto'")
    if mode == "auto":
        two_gpus = torch.cuda.is_available() and torch.cuda.device_count() >= 2
        return "two-tower" if two_gpus and not one_tower else "grouped"
    return mode


def build_model(
    preset: str | NetSpec = "paper",
    mode: str = "auto",
    *,
    devices=None,
    device=None,
    num_classes: int | None = None,
) -> AlexNetBase:
    """Build and initialize the network of ``preset``.

    mode="two-tower": tower i on ``devices[i]`` (default ``("cuda:0", "cuda:1")``); any pair works,
    e.g. ``("cuda:0", "cpu")`` or ``("cpu", "cpu")``. mode="grouped": everything on ``device``
    (default cuda:0 when present, else cpu). mode="auto" (the default): two-tower on cuda:0/cuda:1
    with two GPUs, grouped otherwise. One-tower presets (``paper-half``, ``original-half``) are
    grouped models on one device.

    The initial weights are drawn from torch's global CPU generator (``torch.manual_seed``) in the
    canonical layout, so a seed gives the same weights in both modes on any devices; the towers'
    dropout streams are seeded from it too (reseed with ``model.seed_dropout(seed, rank)``).
    """
    spec = get_spec(preset, num_classes)
    mode = resolve_mode(mode, spec)
    if mode == "two-tower":
        if devices is None:
            devices = ("cuda:0", "cuda:1")
        if isinstance(devices, (str, torch.device)) or len(devices) != 2:
            raise UserError(
                f"two-tower mode needs two devices, one per tower, got {devices!r}; e.g. devices=('cuda:0', 'cuda:1')"
            )
        model = TwoTowerAlexNet(spec, tuple(check_device(d, fix=_TWO_TOWER_FIX) for d in devices))
    else:
        if device is None:
            device = devices[0] if devices else ("cuda:0" if torch.cuda.is_available() else "cpu")
        model = GroupedAlexNet(spec, check_device(device))
    init_from_spec(model, spec)
    model.seed_dropout(int(torch.empty((), dtype=torch.int64).random_()))
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
