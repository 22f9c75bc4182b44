"""The one device checker: a device name from a user (``--device``, ``model.devices``, ``build_model``)
checked against this machine, or one sentence saying what is wrong and what to name instead."""
from __future__ import annotations

import torch

from ..errors import UserError

KINDS = ("cpu", "cuda", "meta")  # meta: shapes without memory (model.load)


def cuda_count() -> int:
    """CUDA devices visible to this process (0 without a usable driver)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device(device, *, what: str = "device", count: int | None = None, fix: str | None = None,
                 kinds: tuple[str, ...] = KINDS) -> torch.device:
    """``device`` as a torch.device spelled in full (``cuda`` -> ``cuda:0``); UserError when it is not a
    device name, a GPU this machine lacks, or a kind of device this package does not run on.

    ``what`` names where the device came from in the sentence (``--device``, ``model.devices entry``);
    ``count`` replaces the number of GPUs found here; ``fix`` replaces the advice for a missing GPU;
    ``kinds`` are the device types accepted (training and evaluation: cpu and cuda).
    """
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"  # torch's own convention for a bare number
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"{what} {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type not in kinds:
        raise UserError(f"{what} {device!r} is not supported; use cpu, cuda or cuda:N")
    if dev.type != "cuda":
        return dev
    n = cuda_count() if count is None else count
    index = 0 if dev.index is None else dev.index
    if index >= n:
        option = f"{what} " if what.startswith("--") else ""  # a command-line option: name it in the advice
        exist = f"use {option}cpu" if n == 0 else f"use cuda:0 .. cuda:{n - 1} or cpu"
        given = device if isinstance(device, str) else f"cuda:{index}"
        raise UserError(f"{what} {given} does not exist (this machine has {n} CUDA device{'s' * (n != 1)}); "
                        f"{fix or exist}")
    return torch.device("cuda", index)
