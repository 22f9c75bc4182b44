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


_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """``x * c`` modulo 2**32 for int64 ``x`` in [0, 2**32) and a 32-bit ``c``, never overflowing int64."""
    return ((((x >> 16) * c) & _M32) << 16) + (x & 0xFFFF) * c & _M32


def _mix32(x: Tensor) -> Tensor:
    """A bijective 32-bit integer hash with full avalanche (C. Wellons' "lowbias32"), on int64 values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def dropout_keep_mask(rng: Tensor, stream: int, n: int, width: int, keep: float) -> Tensor:
    """The 0/1 keep masks (bool, n x rows x width) that dropout layer ``stream`` draws for ``rng``'s towers.

    ``rng``: int64, one row per tower, ``[key, counter]`` (the tower's seed and the forward passes drawn
    so far). Unit j of image i keeps with probability ``keep``, decided by a counter-based hash of
    (key, stream, counter, i * width + j): a pure function of integers, so it compiles into the graph
    and gives the same masks on every device, for either executor, however the towers are placed.
    """
    if n * width >= 2**32:
        raise ValueError(f"a dropout mask of {n} x {width} units exceeds the hash's 2**32 counter range")
    key, counter = rng[:, 0], rng[:, 1]
    a = _mix32((key & _M32) ^ ((stream * 0x9E3779B9) & _M32))  # per tower and layer
    a = _mix32(a ^ (key >> 32))
    a = _mix32(a ^ (counter & _M32))  # per forward pass
    a = _mix32(a ^ ((counter >> 32) & _M32))
    b = _mix32((a + 0x6A09E667) & _M32)
    units = torch.arange(n * width, device=rng.device, dtype=torch.int64).view(n, 1, width)
    bits = _mix32((_mix32((units + a.view(1, -1, 1)) & _M32)) ^ b.view(1, -1, 1))
    return bits < round(keep * 2**32)


class Dropout(nn.Module):
    """Dropout on a hidden layer's output, each tower's units masked by that tower's own random stream.

    ``towers``: the towers held in the tensor (its units split into that many equal blocks, in that
    order); ``stream``: this layer's index among the dropout layers (fc6 0, fc7 1). ``form`` "published"
    (the paper, sec. 4.2): training multiplies by a 0/1 mask (keep probability 1 - p) and does not
    rescale, evaluation multiplies by 1 - p. "inverted": kept units x 1/(1 - p) in training, identity
    in evaluation.

    The randomness is the buffer ``rng`` (int64, not in the state dict; one row ``[key, counter]`` per
    tower, on the layer's device): masks come from :func:`dropout_keep_mask` and every training forward
    advances the counter, so ``torch.compile`` keeps the whole step in one graph, masks are the same on
    CPU and GPU, and saving and restoring ``rng`` resumes the exact sequence of masks.
    """

    def __init__(self, p: float, form: str, towers: tuple[int, ...], stream: int, device: torch.device):
        super().__init__()
        self.p, self.form, self.towers, self.stream = p, form, tuple(towers), stream
        self.register_buffer("rng", torch.zeros(len(self.towers), 2, dtype=torch.int64, device=device),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        keep = 1.0 - self.p
        if not self.training or not self.p:
            return x * keep if self.form == "published" and self.p else x
        rows = len(self.towers)
        mask = dropout_keep_mask(self.rng, self.stream, x.shape[0], x.shape[1] // rows, keep)
        with torch.no_grad():
            self.rng[:, 1] += 1  # the next forward pass draws new masks
        mask = mask.reshape(x.shape).to(x.dtype)
        return x * (mask if self.form == "published" else mask / keep)

    def extra_repr(self) -> str:
        keep = 1.0 - self.p
        if self.form == "published":
            what = f"published: training x 0/1 mask (keep {keep:g}, no rescaling), evaluation x {keep:g}"
        else:
            what = f"inverted: training x 0/1 mask / {keep:g}, evaluation identity"
        towers = ", ".join(str(t) for t in self.towers)
        return f"p={self.p:g}, {what}, " + (f"towers {towers}, each its own stream" if len(self.towers) > 1
                                            else f"tower {towers}'s own stream")


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
