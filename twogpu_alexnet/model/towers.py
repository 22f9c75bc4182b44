"""The two-tower executor: tower 0 on devices[0], tower 1 on devices[1], as on the two GTX 580s.

conv1, conv2, conv4 and conv5 read only their own tower; conv3, fc6, fc7 and fc8 read both, and
those are the only places activations cross devices. Every step is an asynchronous launch on its
tower's device, and copies between GPUs are device-to-device, so on two GPUs the towers compute
concurrently and nothing waits on the host (copies into a CPU tower block: see ``to_device``).
fc8 and the loss live on devices[0].
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..spec import NetSpec, layer_shapes
from .base import AlexNetBase, to_device


class Tower(nn.Module):
    """One GPU's half of every layer but fc8: conv1..conv5, fc6, fc7 (named as in the paper)."""

    def __init__(self, spec: NetSpec, device: torch.device):
        super().__init__()
        for shape, conv in zip(layer_shapes(spec), spec.convs):
            layer = nn.Conv2d(shape.in_channels, conv.per_tower, conv.kernel, conv.stride, conv.padding, device=device)
            self.add_module(conv.name, layer)
        for shape in layer_shapes(spec)[len(spec.convs) : -1]:
            self.add_module(shape.name, nn.Linear(shape.in_channels, shape.out_channels, device=device))


class TwoTowerAlexNet(AlexNetBase):
    mode = "two-tower"

    def __init__(self, spec: NetSpec, devices: tuple[torch.device, torch.device]):
        super().__init__(spec)
        self.devices = tuple(torch.device(d) for d in devices)
        self.towers = nn.ModuleList(Tower(spec, d) for d in self.devices)
        head = layer_shapes(spec)[-1]
        self.fc8 = nn.Linear(head.in_channels, head.out_channels, device=self.devices[0])

    @property
    def head_device(self) -> torch.device:
        return self.devices[0]

    def _exchange(self, halves: list[Tensor]) -> list[Tensor]:
        """A cross-GPU connection: each tower receives tower 0's then tower 1's activations."""
        return [torch.cat([to_device(h, device) for h in halves], 1) for device in self.devices]

    def _hidden(self, x: Tensor) -> Tensor:
        halves = [to_device(x, device) for device in self.devices]
        for layer in self.spec.convs:
            if layer.reads == "both":
                halves = self._exchange(halves)
            halves = [self._conv_block(getattr(t, layer.name), layer, h, 1) for t, h in zip(self.towers, halves)]
        halves = [h.flatten(1) for h in halves]  # pool5, one tower's channels each
        for layer in self.spec.hidden:
            if layer.reads == "both":
                halves = self._exchange(halves)
            halves = [self._fc_block(getattr(t, layer.name), layer, h) for t, h in zip(self.towers, halves)]
        return torch.cat([to_device(h, self.head_device) for h in halves], 1)
