"""Initialization from the spec: weights ~ N(0, std^2), biases constant, per layer as the table says."""
from __future__ import annotations

import torch
from torch import nn

from ..spec import NetSpec


@torch.no_grad()
def init_from_spec(model: nn.Module, spec: NetSpec) -> None:
    """Paper: std 0.01 everywhere, bias 1 in conv2/4/5, fc6, fc7. Original: conv3-5 std 0.03. See spec."""
    for name, param in model.named_parameters():
        layer_name, kind = name.split(".")[-2:]
        layer = spec.layer(layer_name)
        if kind == "weight":
            param.normal_(0.0, layer.weight_std)
        else:
            param.fill_(layer.bias)
