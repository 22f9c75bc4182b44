"""The grouped executor: both towers on one device, computing the same function as two GPUs.

Own-tower layers (conv2, conv4, conv5 in the paper) are ``groups=2`` convolutions; conv1, conv3 and
the fc layers read everything and are dense. Every tensor holds tower 0's channels then tower 1's,
and the LRN window is kept inside each tower's block of channels, as it is on two GPUs.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..spec import NetSpec, layer_shapes
from .base import AlexNetBase, to_device


class GroupedAlexNet(AlexNetBase):
    mode = "grouped"

    def __init__(self, spec: NetSpec, device: torch.device):
        super().__init__(spec)
        self.device = torch.device(device)
        shapes = layer_shapes(spec)
        for shape, conv in zip(shapes, spec.convs):
            groups = 2 if conv.reads == "own" else 1
            in_channels = shape.in_channels * groups  # own: each group sees one tower's channels
            layer = nn.Conv2d(in_channels, 2 * conv.per_tower, conv.kernel, conv.stride, conv.padding,
                              groups=groups, device=self.device)
            self.add_module(conv.name, layer)
        for shape in shapes[len(spec.convs) : -1]:
            self.add_module(shape.name, nn.Linear(shape.in_channels, 2 * shape.out_channels, device=self.device))
        self.add_module(shapes[-1].name, nn.Linear(shapes[-1].in_channels, shapes[-1].out_channels, device=self.device))

    @property
    def head_device(self) -> torch.device:
        return self.device

    def _hidden(self, x: Tensor) -> Tensor:
        h = to_device(x, self.device)
        for layer in self.spec.convs:
            h = self._conv_block(getattr(self, layer.name), layer, h, 2)
        h = h.flatten(1)  # pool5: tower 0's flattened channels, then tower 1's
        for layer in self.spec.hidden:
            h = self._fc_block(getattr(self, layer.name), layer, h)
        return h
