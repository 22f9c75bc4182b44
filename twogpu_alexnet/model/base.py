"""What both executors share: input checks, the modules each layer runs, and the towers' dropout randomness.

The executors differ only in where tensors live and how the two towers' halves are joined; the
layer order, the normalizations and the dropout come from the spec through this class. Every step
of a layer is a registered module (``conv1_pad``, ``conv1``, ``conv1_relu``, ``conv1_lrn``,
``conv1_pool``, ...), so ``print(model)`` lists the network as it runs.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from ..errors import UserError
from ..spec import FC, Conv, NetSpec, cover_padding, layer_shapes
from .layers import local_response_norm
from .ops import CrossMapNorm, Dropout, SameMapNormalization, to_device

__all__ = ["AlexNetBase", "to_device"]


def _dropout_key(seed: int, rank: int, tower: int) -> int:
    """A 63-bit key for tower ``tower`` of process ``rank`` (splitmix64 of the three), for the int64 ``rng`` buffer."""
    z = (((seed * 1000 + rank) * 2 + tower) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 % 2**64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB % 2**64
    return (z ^ (z >> 31)) >> 1


class AlexNetBase(nn.Module):
    mode = ""
    # The cross-map LRN both executors use; ``groups`` = towers held in one tensor.
    lrn = staticmethod(local_response_norm)

    def __init__(self, spec: NetSpec, tower_devices: tuple[torch.device, ...]):
        super().__init__()
        self.spec = spec
        self._shapes = {s.name: s for s in layer_shapes(spec)}
        # module names per layer, in the order they run
        self._steps: dict[str, list[str]] = {}

    # ----- building ------------------------------------------------------------------------------
    def _add_conv(self, owner: nn.Module, layer: Conv, in_channels: int, out_channels: int, groups: int,
                  towers: int, device: torch.device) -> None:
        """Register ``layer``'s modules on ``owner``: the cover padding, the convolution, its ops."""
        steps = []
        pad = cover_padding(self._shapes[layer.name].in_size, layer) if layer.cover else 0
        if pad:  # zeros on the right and bottom: cuda-convnet's output count (55 for conv1 at 224)
            steps.append((f"{layer.name}_pad", nn.ZeroPad2d((0, pad, 0, pad))))
        conv = skip_init(nn.Conv2d, in_channels, out_channels, layer.kernel, layer.stride, layer.padding,
                         groups=groups, device=device)  # weights come from init_from_spec
        steps.append((layer.name, conv))
        for op in layer.ops:
            steps.append((f"{layer.name}_{op}", self._op(op, towers)))
        self._register(owner, layer.name, steps)

    def _add_fc(self, owner: nn.Module, layer: FC, in_features: int, out_features: int,
                towers: tuple[int, ...], device: torch.device) -> None:
        """Register ``layer``'s modules on ``owner``; ``towers``: the towers whose units its output holds."""
        steps = [(layer.name, skip_init(nn.Linear, in_features, out_features, device=device)),
                 (f"{layer.name}_relu", nn.ReLU(inplace=True))]
        if layer.dropout:
            stream = [h.name for h in self.spec.hidden].index(layer.name)  # fc6 0, fc7 1: each layer its own masks
            steps.append((f"{layer.name}_dropout",
                          Dropout(layer.dropout, self.spec.dropout_form, towers, stream, device)))
        self._register(owner, layer.name, steps)

    def _op(self, op: str, towers: int) -> nn.Module:
        spec = self.spec
        if op == "relu":
            return nn.ReLU(inplace=True)
        if op == "lrn":
            return CrossMapNorm(spec.lrn, towers, self.lrn)
        if op == "samemap":
            return SameMapNormalization(spec.same_map)
        if op == "pool":
            return nn.MaxPool2d(spec.pool.kernel, spec.pool.stride)
        raise ValueError(f"unknown op {op!r}")

    def _register(self, owner: nn.Module, layer: str, steps: list) -> None:
        for name, module in steps:
            owner.add_module(name, module)
        self._steps[layer] = [name for name, _ in steps]

    def _run(self, owner: nn.Module, layer: str, x: Tensor) -> Tensor:
        """``layer``'s modules on ``owner`` (a tower, or the grouped model), in order."""
        for name in self._steps[layer]:
            x = owner._modules[name](x)
        return x

    # ----- dropout randomness --------------------------------------------------------------------
    def _dropouts(self) -> list[Dropout]:
        return [m for m in self.modules() if isinstance(m, Dropout) and m.rng.device.type != "meta"]

    def seed_dropout(self, seed: int, rank: int = 0) -> None:
        """Give tower t's dropout stream the key of (seed, rank, t) and restart its counter: independent
        towers and processes, the same masks for a seed on any devices and in either executor."""
        for m in self._dropouts():
            keys = [_dropout_key(seed, rank, tower) for tower in m.towers]
            with torch.no_grad():
                m.rng.copy_(torch.tensor([[k, 0] for k in keys], dtype=torch.int64))

    def dropout_rng_state(self) -> list[Tensor]:
        """The towers' dropout states, tower 0 first: per tower an int64 cpu tensor, one ``[key, counter]``
        row per dropout layer (fc6, fc7). The same on any devices and in either executor."""
        rows: dict[int, dict[int, Tensor]] = {}
        for m in self._dropouts():
            for r, tower in enumerate(m.towers):
                rows.setdefault(tower, {})[m.stream] = m.rng[r].detach().cpu()
        return [torch.stack([by_stream[s] for s in sorted(by_stream)]) for _, by_stream in sorted(rows.items())]

    def set_dropout_rng_state(self, states: list[Tensor]) -> None:
        """Restore :meth:`dropout_rng_state`; ValueError when ``states`` do not fit (another tower count, or
        the torch generator states of an older version), in which case the towers keep their state."""
        current = self.dropout_rng_state()
        if len(states) != len(current) or any(
                not isinstance(s, Tensor) or s.dtype != torch.int64 or s.shape != c.shape
                for s, c in zip(states, current, strict=False)):
            raise ValueError("the dropout states come from another tower count or an older version")
        for m in self._dropouts():
            with torch.no_grad():
                for r, tower in enumerate(m.towers):
                    m.rng[r].copy_(states[tower][m.stream])

    # ----- running -------------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> Tensor:
        s, c = self.spec.input_size, self.spec.in_channels
        if not isinstance(x, Tensor):
            raise UserError(
                f"the {self.mode} executor takes one tensor of N x {c} x {s} x {s} images, got a {type(x).__name__}; "
                "one input per tower is for the two-tower executor"
            )
        if x.dim() != 4 or x.shape[1] != c or x.shape[2] != s or x.shape[3] != s or x.shape[0] < 1:
            raise UserError(
                f"preset {self.spec.name!r} expects input of shape N x {c} x {s} x {s}, got {tuple(x.shape)}; "
                f"resize or crop the images to {s}x{s}"
            )
        return x

    def _hidden(self, x: Tensor) -> Tensor:  # implemented by the executors: fc7 activations, head device
        raise NotImplementedError

    def features(self, x: Tensor) -> Tensor:
        """The last hidden layer (fc7 after ReLU and dropout, both towers, tower 0 first) on the head device.

        ``x`` as for :meth:`forward`.

        Call in ``eval()`` mode for the paper's Figure 4 vectors (dropout is active in training mode). With
        the published dropout form (``spec.dropout_form``) evaluation returns 0.5 x the ReLU outputs, the
        vectors the paper's network fed to fc8; distances between them are half those of the ReLU outputs
        and the neighbour order is the same.
        """
        return self._hidden(self._check_input(x))

    def forward(self, x: Tensor) -> Tensor:
        """N x 3 x S x S images on any device -> N x num_classes logits on the head device.

        The two-tower executor also takes one such tensor per tower (a tuple or list, tower 0 first; the same
        images, e.g. a loader's ``TowerInputs``): each tower reads its own, so no tower waits for another's copy.
        """
        return self._modules[self.spec.head.name](self._hidden(self._check_input(x)))
