"""Pure converters between the two state-dict layouts (work on any dict of tensors, e.g. gradients).

two-tower: ``towers.{0,1}.{conv1..conv5,fc6,fc7}.{weight,bias}`` and ``fc8.{weight,bias}``.
grouped:   ``{conv1..conv5,fc6,fc7,fc8}.{weight,bias}``, each tower layer = tower 0's tensor then
tower 1's, concatenated on dim 0. fc8 is one layer, the same tensor in both layouts.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from ..spec import Head

HEAD = Head.name  # the head: one layer, the same tensor in both layouts
_TOWER_KEY = re.compile(r"^towers\.([01])\.(.+)$")


def to_grouped_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Two-tower layout -> grouped layout: concatenate each layer's tower 0 and tower 1 tensors."""
    halves: dict[str, list] = {}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _TOWER_KEY.match(key)
        if match:
            halves.setdefault(match.group(2), [None, None])[int(match.group(1))] = value
        else:
            out[key] = value
    for key, (t0, t1) in halves.items():
        if t0 is None or t1 is None:
            raise KeyError(f"{key} is present for only one tower")
        if t0.shape[1:] != t1.shape[1:]:
            raise ValueError(f"towers.0.{key} has shape {tuple(t0.shape)} and towers.1.{key} {tuple(t1.shape)}; "
                             "the towers' tensors must match beyond their first dimension")
        out[key] = torch.cat([t0, t1.to(t0.device)], 0)
    return out


def to_two_tower_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Grouped layout -> two-tower layout: split every tower layer's tensor in half on dim 0."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.split(".")[0] == HEAD:
            out[key] = value
            continue
        if value.shape[0] % 2:
            raise ValueError(f"{key} has {value.shape[0]} rows, which do not split into two towers")
        t0, t1 = value.chunk(2, 0)
        out[f"towers.0.{key}"], out[f"towers.1.{key}"] = t0, t1
    return out
