"""The two-tower executor: tower 0 on devices[0], tower 1 on devices[1], as on the two GTX 580s.

conv1, conv2, conv4 and conv5 read only their own tower; conv3, fc6, fc7 and fc8 read both, and
those are the only places activations cross devices (the ``*_cross`` modules). Every step is an
asynchronous launch on its tower's device, and copies between GPUs are device-to-device, so on two
GPUs the towers compute concurrently and nothing waits on the host (copies into a CPU tower block:
see ``to_device``). fc8 and the loss live on devices[0].

The input is one tensor (copied to each tower's device) or one per tower (a loader given both devices
delivers each tower its own batch, so the input never crosses from one GPU to the other).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from ..errors import UserError
from ..spec import NetSpec
from .base import AlexNetBase
from .ops import CrossTowers, to_device


class Tower(nn.Module):
    """One GPU's half of every layer but fc8: conv1..conv5, fc6, fc7 (named as in the paper), with the
    steps between them (``conv1_relu``, ``conv1_lrn``, ``conv1_pool``, ..., ``fc6_dropout``)."""

    def __init__(self, index: int, device: torch.device):
        super().__init__()
        self.index, self.device = index, device

    def extra_repr(self) -> str:
        return f"tower {self.index} on {self.device}"


class TwoTowerAlexNet(AlexNetBase):
    mode = "two-tower"

    def __init__(self, spec: NetSpec, devices: tuple[torch.device, torch.device]):
        devices = tuple(torch.device(d) for d in devices)
        super().__init__(spec, devices)
        self.devices = devices
        self.towers = nn.ModuleList(Tower(t, d) for t, d in enumerate(devices))
        for t, (tower, device) in enumerate(zip(self.towers, devices, strict=True)):
            for layer in spec.convs:
                shape = self._shapes[layer.name]
                if layer.reads == "both":
                    tower.add_module(f"{layer.name}_cross", CrossTowers(device, devices))
                self._add_conv(tower, layer, shape.in_channels, layer.per_tower, 1, 1, device)
            for layer in spec.hidden:
                shape = self._shapes[layer.name]
                tower.add_module(f"{layer.name}_cross", CrossTowers(device, devices))
                self._add_fc(tower, layer, shape.in_channels, shape.out_channels, (t,), device)
        head = self._shapes[spec.head.name]
        self.add_module(f"{spec.head.name}_cross", CrossTowers(self.devices[0], devices))
        self.add_module(spec.head.name,
                        skip_init(nn.Linear, head.in_channels, head.out_channels, device=self.devices[0]))

    @property
    def head_device(self) -> torch.device:
        return self.devices[0]

    def extra_repr(self) -> str:
        d = self.devices
        head = self.spec.head.name
        return f"preset {self.spec.name!r}: tower 0 on {d[0]}, tower 1 on {d[1]}; {head} and the loss on {d[0]}"

    def _check_input(self, x) -> Tensor | tuple[Tensor, ...]:
        """One tensor, or one per tower (each checked; all of one shape)."""
        if not isinstance(x, (tuple, list)):
            return super()._check_input(x)
        if len(x) != len(self.devices) or not all(isinstance(h, Tensor) for h in x):
            raise UserError(f"the two-tower executor takes one tensor or one per tower ({len(self.devices)}), got a "
                            f"{type(x).__name__} of {len(x)}; pass the batch once or once per tower")
        for h in x:
            super()._check_input(h)
        if len({tuple(h.shape) for h in x}) > 1:
            raise UserError(f"the towers' inputs differ in shape ({', '.join(str(tuple(h.shape)) for h in x)}); "
                            "give every tower the same batch")
        return tuple(x)

    def _hidden(self, x: Tensor | tuple[Tensor, ...]) -> Tensor:
        # tower t's input on its device: its own tensor (a loader's TowerInputs, already there), else a copy of x
        inputs = x if isinstance(x, tuple) else (x,) * len(self.devices)
        halves = [to_device(h, device) for h, device in zip(inputs, self.devices, strict=False)]
        for layer in (*self.spec.convs, *self.spec.hidden):
            if layer.reads == "both":  # a cross-GPU connection: each tower gets tower 0's then tower 1's
                halves = [t._modules[f"{layer.name}_cross"](halves) for t in self.towers]
            halves = [self._run(t, layer.name, h) for t, h in zip(self.towers, halves, strict=True)]
            if layer.name == self.spec.convs[-1].name:
                halves = [h.flatten(1) for h in halves]  # pool5, one tower's channels each
        return self._modules[f"{self.spec.head.name}_cross"](halves)  # the head reads both towers
