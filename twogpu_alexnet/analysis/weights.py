"""Reading the first layer of any network: a conv1 weight tensor from a .pt, .pth or .npy file.

The file holds either the tensor itself (out x 3 x k x k) or a state dict. In a state dict the
tensor is the one named by ``key`` or, without a key, the only 4-d tensor with 3 input channels
(torchvision's ``features.0.weight`` and Caffe-converted ``conv1.weight`` are found that way). A
state dict nested under ``state_dict`` or ``model`` (common checkpoint wrappers) is looked into.
Only tensors and arrays are read: pickled objects are refused (``weights_only`` / ``allow_pickle=False``).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..model.load import read_file

SUFFIXES = (".pt", ".pth", ".npy")


def read_conv1(path, key: str | None = None) -> tuple[torch.Tensor, str]:
    """(the conv1 weights as a float tensor, the name they were found under) from ``path``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--weights {path} does not exist; pass a .pt, .pth or .npy file holding conv1 weights")
    obj = _load(path)
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        if key is not None:
            raise UserError(f"--key {key} was given but {path} holds a bare tensor, not a state dict; drop --key")
        return _check(torch.as_tensor(obj), path, "the tensor"), "tensor"
    if not isinstance(obj, Mapping):
        raise UserError(f"{path} holds neither a tensor nor a state dict; pass a conv1 weight tensor or a state dict")
    state = _unwrap(obj)
    if key is not None:
        if key not in state:
            raise UserError(f"{path} has no entry {key!r}; its 4-d tensors are {_names(state) or 'none'}")
        return _check(torch.as_tensor(state[key]), path, repr(key)), key
    found = [k for k, v in state.items() if _is_rgb_conv(v)]
    if not found:
        raise UserError(f"{path} holds no 4-d tensor with 3 input channels (a conv1 weight out x 3 x k x k); "
                        "pass a file with the first layer's weights, or name it with --key")
    if len(found) > 1:
        raise UserError(f"{path} holds {len(found)} 4-d tensors with 3 input channels ({', '.join(found[:4])}); "
                        "name the first layer's with --key")
    return torch.as_tensor(state[found[0]]).detach().to("cpu", torch.float32), found[0]


def _load(path: Path):
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"--weights {path} is not a .pt, .pth or .npy file; save the weights with torch.save or "
                        "numpy.save")
    if path.suffix.lower() != ".npy":
        return read_file(path)  # the one reader of torch files (weights_only; damaged files are one sentence)
    try:
        return np.load(path, allow_pickle=False)
    except Exception:  # truncated, not this format, or pickled objects that allow_pickle=False refuses
        raise UserError(f"{path} is not a readable .npy file of numbers (truncated, another format, or "
                        "pickled objects); save the weights with numpy.save") from None


def _unwrap(obj: Mapping) -> Mapping:
    """The state dict itself: ``obj``, or the mapping under ``state_dict`` / ``model`` when obj wraps one."""
    for wrapper in ("state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and not any(_is_rgb_conv(v) for v in obj.values()):
            return inner
    return obj


def _is_rgb_conv(value) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 4 and value.shape[1] == 3


def _names(state: Mapping) -> str:
    return ", ".join(k for k, v in state.items() if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim == 4)


def _check(w: torch.Tensor, path: Path, what: str) -> torch.Tensor:
    if w.ndim != 4 or w.shape[1] != 3:
        raise UserError(f"{path}: {what} has shape {tuple(w.shape)}, not out x 3 x k x k (a conv1 weight); "
                        "pass the first layer's weights")
    if not w.is_floating_point():
        w = w.double()
    return w.detach().to("cpu", torch.float32)
