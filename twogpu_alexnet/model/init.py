"""Initialization from the spec: weights ~ N(0, std^2), biases constant, per layer as the table says.

The numbers are drawn on the CPU from one generator in the canonical layout (layer by layer, tower 0
then tower 1, weight then bias) and then copied into the model, so one seed gives bit-identical
initial weights in the two-tower and the grouped executor, on any devices.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..spec import NetSpec
from .convert import to_grouped_state, to_two_tower_state


def initial_state(model: nn.Module, spec: NetSpec, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """``model``'s initial weights as cpu tensors in the canonical layout (two-tower keys for two towers)."""
    shapes = _canonical(dict(model.named_parameters()), model, spec)
    state = {}
    for name in spec.layer_names:
        layer = spec.layer(name)
        prefixes = [""] if name == spec.head.name or spec.towers == 1 else ["towers.0.", "towers.1."]
        for prefix in prefixes:
            weight, bias = shapes[f"{prefix}{name}.weight"], shapes[f"{prefix}{name}.bias"]
            state[f"{prefix}{name}.weight"] = torch.empty(weight.shape).normal_(0.0, layer.weight_std,
                                                                                 generator=generator)
            state[f"{prefix}{name}.bias"] = torch.full(bias.shape, float(layer.bias))
    return state


@torch.no_grad()
def init_from_spec(model: nn.Module, spec: NetSpec, generator: torch.Generator | None = None) -> None:
    """Paper: std 0.01 everywhere, bias 1 in conv2/4/5, fc6, fc7. Original: conv3-5 std 0.03. See spec.

    Draws from ``generator`` (a CPU generator; default torch's global one). A model on the meta
    device has no values to fill and is left as it is.
    """
    if any(p.device.type == "meta" for p in model.parameters()):
        return
    state = initial_state(model, spec, generator)
    if model.mode == "grouped" and spec.towers == 2:  # the canonical (two-tower) layout -> the model's
        state = to_grouped_state(state)
    for name, param in model.named_parameters():
        param.copy_(state[name])


def _canonical(params: dict, model: nn.Module, spec: NetSpec) -> dict:
    """``model``'s parameters in the canonical layout: two-tower keys for a two-tower spec."""
    return to_two_tower_state(params) if model.mode == "grouped" and spec.towers == 2 else params
