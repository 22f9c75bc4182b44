"""The parameter-free steps between the layers, as small modules so that ``print(model)`` shows them.

Both executors run exactly these modules in their forward pass: what the printout lists is what
computes. None of them holds a parameter, so the state-dict keys stay ``conv1.weight`` ... ``fc8.bias``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..spec import LRN, SameMapNorm
from .layers import same_map_norm


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """``x`` on ``device``, without waiting on the host where that is safe.

    Copies to a GPU are ordered on its stream, so they can be asynchronous. A ``non_blocking`` copy
    into CPU memory returns before the data has arrived, and a CPU tower (e.g. devices=("cuda:0",
    "cpu")) would compute on garbage, so copies to the CPU block.
    """
    return x.to(device, non_blocking=device.type == "cuda")


class CrossMapNorm(nn.Module):
    """The paper's local response normalization across neighbouring channels, within each tower.

    ``fn`` is the LRN function with the signature of :func:`twogpu_alexnet.model.layers.local_response_norm`;
    ``groups`` = towers held in the tensor (the window never reaches the other tower's channels).
    """

    def __init__(self, norm: LRN, groups: int, fn):
        super().__init__()
        self.norm, self.groups, self.fn = norm, groups, fn

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm
        return self.fn(x, n.size, n.alpha, n.beta, n.k, groups=self.groups)

    def extra_repr(self) -> str:
        n = self.norm
        where = "within each tower's channels" if self.groups > 1 else "within the tower"
        return f"size={n.size}, alpha={n.alpha:g} (times the plain sum), beta={n.beta:g}, k={n.k:g}, {where}"


class SameMapNormalization(nn.Module):
    """The 2012 code's ``rnorm``: each channel divided by its own size x size neighbourhood (never crosses towers)."""

    def __init__(self, norm: SameMapNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm
        return same_map_norm(x, n.size, n.alpha, n.beta, n.k)

    def extra_repr(self) -> str:
        n = self.norm
        return f"{n.size}x{n.size} window, alpha={n.alpha:g} (times the plain sum), beta={n.beta:g}, k={n.k:g}"


class Dropout(nn.Module):
    """Dropout on a hidden layer's output, each tower's units masked from that tower's own generator.

    ``generators``: one per tower held in the tensor (the tensor's units split into that many equal
    blocks, tower 0's first). ``form`` "published" (the paper, sec. 4.2): training multiplies by a 0/1
    mask (keep probability 1 - p) and does not rescale, evaluation multiplies by 1 - p. "inverted":
    kept units x 1/(1 - p) in training, identity in evaluation. A generator of None draws from torch's
    default generator of the tensor's device.
    """

    def __init__(self, p: float, form: str, generators: list):
        super().__init__()
        self.p, self.form, self.generators = p, form, generators

    def forward(self, x: Tensor) -> Tensor:
        keep = 1.0 - self.p
        if not self.training or not self.p:
            return x * keep if self.form == "published" and self.p else x
        blocks = x.chunk(len(self.generators), 1) if len(self.generators) > 1 else (x,)
        masks = [x.new_empty(b.shape).bernoulli_(keep, generator=g) for b, g in zip(blocks, self.generators)]
        mask = masks[0] if len(masks) == 1 else torch.cat(masks, 1)
        if self.form == "inverted":
            mask.div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        keep = 1.0 - self.p
        if self.form == "published":
            what = f"published: training x 0/1 mask (keep {keep:g}, no rescaling), evaluation x {keep:g}"
        else:
            what = f"inverted: training x 0/1 mask / {keep:g}, evaluation identity"
        return f"p={self.p:g}, {what}, " + ("one generator per tower" if len(self.generators) > 1 else "own generator")


class CrossTowers(nn.Module):
    """Where activations cross towers: tower 0's then tower 1's, concatenated on ``device``."""

    def __init__(self, device: torch.device, devices: tuple[torch.device, ...]):
        super().__init__()
        self.device, self.devices = device, devices

    def forward(self, halves: list[Tensor]) -> Tensor:
        return torch.cat([to_device(h, self.device) for h in halves], 1)

    def extra_repr(self) -> str:
        sources = " + ".join(f"tower {t} ({d})" for t, d in enumerate(self.devices))
        return f"{sources} -> {self.device}"
