"""The grouped executor: every tower on one device, computing the same function as two GPUs.

Own-tower layers (conv2, conv4, conv5 in the paper) are ``groups=2`` convolutions; conv1, conv3 and
the fc layers read everything and are dense. Every tensor holds tower 0's channels then tower 1's,
the LRN window is kept inside each tower's block of channels, and each tower's dropout units are
drawn from that tower's own random stream, as on two GPUs. With a one-tower spec (``paper-half``) this
is the plain single-column network.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils import skip_init

from ..spec import NetSpec
from .base import AlexNetBase
from .ops import to_device


class GroupedAlexNet(AlexNetBase):
    mode = "grouped"

    def __init__(self, spec: NetSpec, device: torch.device):
        device = torch.device(device)
        super().__init__(spec, (device,) * spec.towers)
        self.device = device
        n = spec.towers
        for layer in spec.convs:
            shape = self._shapes[layer.name]
            groups = n if layer.reads == "own" else 1
            in_channels = shape.in_channels * groups  # own: each group sees one tower's channels
            self._add_conv(self, layer, in_channels, n * layer.per_tower, groups, n, device)
        for layer in spec.hidden:
            shape = self._shapes[layer.name]
            self._add_fc(self, layer, shape.in_channels, n * shape.out_channels, tuple(range(n)), device)
        head = self._shapes[spec.head.name]
        self.add_module(spec.head.name, skip_init(torch.nn.Linear, head.in_channels, head.out_channels, device=device))

    @property
    def head_device(self) -> torch.device:
        return self.device

    def extra_repr(self) -> str:
        towers = "one tower" if self.spec.towers == 1 else f"{self.spec.towers} towers in each tensor, tower 0 first"
        return f"preset {self.spec.name!r} on {self.device}: {towers}"

    def _hidden(self, x: Tensor) -> Tensor:
        h = to_device(x, self.device)
        for layer in self.spec.convs:
            h = self._run(self, layer.name, h)
        h = h.flatten(1)  # pool5: tower 0's flattened channels, then tower 1's
        for layer in self.spec.hidden:
            h = self._run(self, layer.name, h)
        return h
