"""What both executors share: input checks, the modules each layer runs, and the towers' dropout generators.

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


class AlexNetBase(nn.Module):
    mode = ""
    # The cross-map LRN both executors use; ``groups`` = towers held in one tensor.
    lrn = staticmethod(local_response_norm)

    def __init__(self, spec: NetSpec, tower_devices: tuple[torch.device, ...]):
        super().__init__()
        self.spec = spec
        self._shapes = {s.name: s for s in layer_shapes(spec)}
        # One dropout generator per tower, on the device where that tower's masks are drawn, so the
        # towers' masks are independent on any devices (torch.manual_seed gives every GPU one state).
        self.dropout_generators = [None if d.type == "meta" else torch.Generator(device=d) for d in tower_devices]
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
                generators: list, device: torch.device) -> None:
        steps = [(layer.name, skip_init(nn.Linear, in_features, out_features, device=device)),
                 (f"{layer.name}_relu", nn.ReLU(inplace=True))]
        if layer.dropout:
            steps.append((f"{layer.name}_dropout", Dropout(layer.dropout, self.spec.dropout_form, generators)))
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
    def seed_dropout(self, seed: int, rank: int = 0) -> None:
        """Seed tower t's dropout generator from (seed, rank, t): independent towers and processes."""
        for tower, g in enumerate(self.dropout_generators):
            if g is not None:
                g.manual_seed(((seed * 1000 + rank) * len(self.dropout_generators) + tower) % 2**64)

    def dropout_rng_state(self) -> list[Tensor]:
        """The towers' dropout generator states (cpu uint8 tensors), tower 0 first."""
        return [g.get_state() for g in self.dropout_generators if g is not None]

    def set_dropout_rng_state(self, states: list[Tensor]) -> None:
        """Restore :meth:`dropout_rng_state`; ValueError when it was taken from other generators (tower
        count, or CPU vs CUDA), in which case the generators keep their state."""
        gens = [g for g in self.dropout_generators if g is not None]
        if len(states) != len(gens) or any(s.numel() != g.get_state().numel() for s, g in zip(states, gens)):
            raise ValueError("the dropout generator states come from another tower count or device type")
        for g, s in zip(gens, states):
            g.set_state(s)

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
