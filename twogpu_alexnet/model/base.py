"""What both executors share: input checks, and what follows each convolution and fc layer.

The executors differ only in where tensors live and how the two towers' halves are joined; the
layer order, the normalizations and the dropout come from the spec through this class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..spec import FC, Conv, NetSpec, cover_padding, layer_shapes
from .layers import local_response_norm, same_map_norm


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """``x`` on ``device``, without waiting on the host where that is safe.

    Copies to a GPU are ordered on its stream, so they can be asynchronous. A ``non_blocking`` copy
    into CPU memory returns before the data has arrived, and a CPU tower (e.g. devices=("cuda:0",
    "cpu")) would compute on garbage, so copies to the CPU block.
    """
    return x.to(device, non_blocking=device.type == "cuda")


class AlexNetBase(nn.Module):
    mode = ""
    # The cross-map LRN both executors use; ``groups`` = towers held in one tensor.
    lrn = staticmethod(local_response_norm)

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec
        shapes = {s.name: s for s in layer_shapes(spec)}
        # zeros added on the right/bottom before a "cover" convolution (3 for conv1 at 224)
        self._cover = {c.name: cover_padding(shapes[c.name].in_size, c) if c.cover else 0 for c in spec.convs}

    def _check_input(self, x: Tensor) -> Tensor:
        s, c = self.spec.input_size, self.spec.in_channels
        if x.dim() != 4 or x.shape[1] != c or x.shape[2] != s or x.shape[3] != s or x.shape[0] < 1:
            raise UserError(
                f"preset {self.spec.name!r} expects input of shape N x {c} x {s} x {s}, got {tuple(x.shape)}; "
                f"resize or crop the images to {s}x{s}"
            )
        return x

    def _conv_block(self, conv: nn.Conv2d, layer: Conv, x: Tensor, groups: int) -> Tensor:
        """conv, then the layer's ops in spec order; ``groups`` = towers held in this tensor."""
        pad = self._cover[layer.name]
        if pad:
            x = F.pad(x, (0, pad, 0, pad))
        x = conv(x)
        spec = self.spec
        for op in layer.ops:
            if op == "relu":
                x = F.relu(x, inplace=True)
            elif op == "lrn":
                n = spec.lrn
                x = self.lrn(x, n.size, n.alpha, n.beta, n.k, groups=groups)
            elif op == "samemap":
                n = spec.same_map
                x = same_map_norm(x, n.size, n.alpha, n.beta, n.k)
            elif op == "pool":
                x = F.max_pool2d(x, spec.pool.kernel, spec.pool.stride)
        return x

    def _fc_block(self, fc: nn.Linear, layer: FC, x: Tensor) -> Tensor:
        x = F.relu(fc(x), inplace=True)
        p = layer.dropout
        if not p or self.spec.dropout_form == "inverted":
            return F.dropout(x, p, self.training)
        if self.training:  # the paper's form: a 0/1 mask, kept units not rescaled
            return x * torch.empty_like(x).bernoulli_(1 - p)
        return x * (1 - p)  # evaluation: every unit, times the keep probability

    def _hidden(self, x: Tensor) -> Tensor:  # implemented by the executors: fc7 activations, head device
        raise NotImplementedError

    def features(self, x: Tensor) -> Tensor:
        """The last hidden layer (fc7 after ReLU and dropout, both towers, tower 0 first) on the head device.

        Call in ``eval()`` mode for the paper's Figure 4 vectors (dropout is active in training mode). With
        the published dropout form (``spec.dropout_form``) evaluation returns 0.5 x the ReLU outputs, the
        vectors the paper's network fed to fc8; distances between them are half those of the ReLU outputs
        and the neighbour order is the same.
        """
        return self._hidden(self._check_input(x))

    def forward(self, x: Tensor) -> Tensor:
        """N x 3 x S x S images on any device -> N x num_classes logits on the head device."""
        return self.fc8(self._hidden(self._check_input(x)))
