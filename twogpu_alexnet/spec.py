"""The AlexNet layer table as data: one frozen spec per preset, read by both executors.

This is the cuda-convnet ``layers-145.cfg`` idea in Python: for each layer, kernels per tower,
kernel / stride / padding, whether it reads its own tower or both, and what follows it. No layer
size, order or init value is written anywhere else in the package.

``ops`` lists what follows a convolution, in order: ``relu``, ``lrn`` (cross-map normalization over
the tower's own channels), ``samemap`` (the original code's 5x5 same-map normalization) and
``pool`` (overlapping max-pooling).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .errors import UserError

OPS = ("relu", "lrn", "samemap", "pool")
READS = ("image", "own", "both")
DROPOUT_FORMS = ("published", "inverted")


@dataclass(frozen=True)
class LRN:
    """Cross-map normalization b_i = a_i / (k + alpha * sum_{|j-i|<=size//2} a_j^2)^beta within a tower.

    ``alpha`` multiplies the plain sum (the paper's convention). ``torch.nn.LocalResponseNorm``
    multiplies the sum by alpha/size, so its equivalent alpha is ``alpha * size``.
    """

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0


@dataclass(frozen=True)
class SameMapNorm:
    """The original code's ``rnorm``: b = a / (k + alpha * sum over a size x size window of a^2)^beta.

    The window is centred on the pixel and clipped at the border; ``alpha`` multiplies the plain sum.
    """

    size: int = 5
    alpha: float = 0.001 / 25
    beta: float = 0.75
    k: float = 1.0


@dataclass(frozen=True)
class Pool:
    kernel: int = 3
    stride: int = 2


@dataclass(frozen=True)
class Conv:
    name: str
    per_tower: int  # kernels in each tower
    kernel: int
    stride: int = 1
    padding: int = 0
    # cuda-convnet counts outputs as 1 + ceil((size + 2*pad - kernel) / stride); the last window
    # hangs over the right/bottom edge and reads zeros there. cover=True reproduces that.
    cover: bool = False
    reads: str = "own"  # "image", "own" (this tower's previous layer) or "both" (both towers')
    ops: tuple[str, ...] = ("relu",)
    weight_std: float = 0.01
    bias: float = 0.0
    bias_lr_mult: float | None = None  # this layer's bias lr / the base lr; None = spec.bias_lr_mult


@dataclass(frozen=True)
class FC:
    name: str
    per_tower: int
    reads: str = "both"
    dropout: float = 0.5  # applied to this layer's output (after the ReLU) while training
    weight_std: float = 0.01
    bias: float = 0.0
    bias_lr_mult: float | None = None  # None = spec.bias_lr_mult


@dataclass(frozen=True)
class Head:
    """fc8: one layer, not split between towers; it reads both towers and lives on the head device."""

    name: str = "fc8"
    weight_std: float = 0.01
    bias: float = 0.0
    bias_lr_mult: float | None = None  # None = spec.bias_lr_mult


@dataclass(frozen=True)
class NetSpec:
    name: str
    description: str
    input_size: int
    convs: tuple[Conv, ...]
    hidden: tuple[FC, ...]
    head: Head
    lrn: LRN
    same_map: SameMapNorm | None
    pool: Pool
    num_classes: int = 1000
    in_channels: int = 3
    # 2: the two-GPU net (tower 0, tower 1). 1: one column on one device (the paper's one-GPU control,
    # layers-145-half), every connection dense; its only state layout is conv1.weight ... fc8.bias.
    towers: int = 2
    # Optimizer settings the preset asks for (the original code: biases at 2x lr, no weight decay).
    bias_lr_mult: float = 1.0
    bias_weight_decay: bool = True
    # "published": the paper's dropout (sec. 4.2; the 2012 code's hs layers): training multiplies by a
    # 0/1 mask and does not rescale the kept units, evaluation multiplies by (1 - p).
    # "inverted": torch's F.dropout (kept units x 1/(1 - p) in training, identity in evaluation).
    dropout_form: str = "published"

    def with_classes(self, num_classes: int) -> NetSpec:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
        return replace(self, num_classes=num_classes)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.convs) + tuple(f.name for f in self.hidden) + (self.head.name,)

    @property
    def tower_layer_names(self) -> tuple[str, ...]:
        """Layers that have one half per tower (all but the head)."""
        return self.layer_names[:-1]

    def bias_lr_mult_of(self, name: str) -> float:
        """The bias lr multiplier of layer ``name``: its own when the table sets one, else the spec's."""
        own = self.layer(name).bias_lr_mult
        return self.bias_lr_mult if own is None else own

    def layer(self, name: str) -> Conv | FC | Head:
        for layer in (*self.convs, *self.hidden, self.head):
            if layer.name == name:
                return layer
        raise KeyError(name)


@dataclass(frozen=True)
class LayerShape:
    """Per-tower geometry of one layer, computed from the spec alone."""

    name: str
    reads: str
    in_channels: int  # input channels (or features) one tower's kernels see
    out_channels: int  # outputs per tower (total outputs for the head)
    in_size: int  # spatial size of the input (0 for fc layers)
    conv_size: int  # spatial size right after the convolution (0 for fc layers)
    out_size: int  # spatial size after the layer's ops, i.e. what the next layer reads
    params: int  # parameters per tower (total for the head)


def conv_output_size(size: int, layer: Conv) -> int:
    span = size + 2 * layer.padding - layer.kernel
    if span < 0:
        raise UserError(
            f"{layer.name}: input of {size}x{size} is smaller than its {layer.kernel}x{layer.kernel} kernel"
        )
    steps = math.ceil(span / layer.stride) if layer.cover else span // layer.stride
    return 1 + steps


def cover_padding(size: int, layer: Conv) -> int:
    """Zeros to add on the right and bottom so a plain convolution yields the cover output count."""
    out = conv_output_size(size, layer)
    return max(0, (out - 1) * layer.stride + layer.kernel - size - 2 * layer.padding)


def pool_output_size(size: int, pool: Pool) -> int:
    return (size - pool.kernel) // pool.stride + 1


def layer_shapes(spec: NetSpec) -> list[LayerShape]:
    """Walk the table once: per-tower input/output channels, spatial sizes and parameter counts."""
    shapes: list[LayerShape] = []
    size, prev, towers = spec.input_size, spec.in_channels, spec.towers
    for layer in spec.convs:
        cin = {"image": spec.in_channels, "own": prev, "both": towers * prev}[layer.reads]
        conv = conv_output_size(size, layer)
        out = pool_output_size(conv, spec.pool) if "pool" in layer.ops else conv
        params = layer.per_tower * (cin * layer.kernel * layer.kernel + 1)
        shapes.append(LayerShape(layer.name, layer.reads, cin, layer.per_tower, size, conv, out, params))
        size, prev = out, layer.per_tower
    features = prev * size * size
    for layer in spec.hidden:
        cin = towers * features if layer.reads == "both" else features
        shapes.append(LayerShape(layer.name, layer.reads, cin, layer.per_tower, 0, 0, 0, layer.per_tower * (cin + 1)))
        features = layer.per_tower
    cin = towers * features
    shapes.append(LayerShape(spec.head.name, "both", cin, spec.num_classes, 0, 0, 0, spec.num_classes * (cin + 1)))
    return shapes


def total_params(spec: NetSpec) -> int:
    shapes = layer_shapes(spec)
    return sum(spec.towers * s.params for s in shapes[:-1]) + shapes[-1].params


def validate(spec: NetSpec) -> NetSpec:
    """Check the table is well formed (programming errors in a preset, not user errors)."""
    names = spec.layer_names
    assert len(set(names)) == len(names), f"duplicate layer names in {spec.name}"
    assert spec.convs[0].reads == "image", "the first layer reads the image"
    for layer in spec.convs:
        assert set(layer.ops) <= set(OPS), f"{layer.name}: unknown op in {layer.ops}"
        assert layer.reads in READS, f"{layer.name}: reads must be one of {READS}"
        assert "samemap" not in layer.ops or spec.same_map is not None, f"{layer.name} needs spec.same_map"
    assert all(f.reads == "both" for f in spec.hidden), "fc layers read both towers"
    assert spec.dropout_form in DROPOUT_FORMS, f"dropout_form must be one of {DROPOUT_FORMS}"
    assert spec.towers in (1, 2), "a net has one tower or two"
    assert spec.towers == 2 or all(c.reads != "own" for c in spec.convs), "one tower: every layer reads 'both'"
    layer_shapes(spec)  # raises if a size goes below a kernel
    return spec


# ----------------------------------------------------------------------------------------------
# Presets. Numbers from the paper and from the released 2012 code (layers-145); see README.

_PAPER = NetSpec(
    name="paper",
    description="AlexNet as published (NIPS 2012): 224x224 input, ReLU -> LRN -> overlapping pool.",
    input_size=224,
    convs=(
        Conv("conv1", 48, 11, stride=4, cover=True, reads="image", ops=("relu", "lrn", "pool")),
        Conv("conv2", 128, 5, padding=2, reads="own", ops=("relu", "lrn", "pool"), bias=1.0),
        Conv("conv3", 192, 3, padding=1, reads="both", ops=("relu",)),
        Conv("conv4", 192, 3, padding=1, reads="own", ops=("relu",), bias=1.0),
        Conv("conv5", 128, 3, padding=1, reads="own", ops=("relu", "pool"), bias=1.0),
    ),
    hidden=(FC("fc6", 2048, bias=1.0), FC("fc7", 2048, bias=1.0)),
    head=Head(),
    lrn=LRN(size=5, alpha=1e-4, beta=0.75, k=2.0),
    same_map=None,
    pool=Pool(3, 2),
)

_ORIGINAL = replace(
    _PAPER,
    name="original",
    description="As the released 2012 code ran it (layers-145): LRN alpha/n, conv->LRN->pool->ReLU in "
    "layer 1, extra same-map norm in layer 2, conv3-5 std 0.03, 2x bias lr, no bias decay.",
    convs=(
        Conv("conv1", 48, 11, stride=4, cover=True, reads="image", ops=("lrn", "pool", "relu")),
        Conv("conv2", 128, 5, padding=2, reads="own", ops=("relu", "lrn", "samemap", "pool"), bias=1.0),
        Conv("conv3", 192, 3, padding=1, reads="both", ops=("relu",), weight_std=0.03),
        Conv("conv4", 192, 3, padding=1, reads="own", ops=("relu",), weight_std=0.03, bias=1.0),
        Conv("conv5", 128, 3, padding=1, reads="own", ops=("pool", "relu"), weight_std=0.03, bias=1.0),
    ),
    lrn=LRN(size=5, alpha=1e-4 / 5, beta=0.75, k=2.0),
    same_map=SameMapNorm(size=5, alpha=0.001 / 25, beta=0.75, k=1.0),
    bias_lr_mult=2.0,
    bias_weight_decay=False,
)

_ONETOWER = replace(
    _PAPER,
    name="paper-onetower",
    description="The no-towers control: the paper's widths with every connection crossing "
    "(LRN still within each half, so only the connectivity differs).",
    convs=tuple(replace(c, reads="both") if c.reads == "own" else c for c in _PAPER.convs),
)

# The paper's one-GPU comparison net (sec. 3.2; the 2012 code's layers-145-half.cfg): one column with half
# the kernels in conv1-conv4, conv5 and the fc layers as wide as both towers together, every connection
# dense, 59,798,312 parameters. `paper-half` uses the paper's layer recipe, `original-half` the file's.
_PAPER_HALF = replace(
    _PAPER,
    name="paper-half",
    description="The paper's one-GPU control (sec. 3.2): one tower, half the kernels in conv1-conv4, "
    "conv5 256 and fc 4096 wide, every connection dense; the paper's layer recipe.",
    towers=1,
    convs=(
        Conv("conv1", 48, 11, stride=4, cover=True, reads="image", ops=("relu", "lrn", "pool")),
        Conv("conv2", 128, 5, padding=2, reads="both", ops=("relu", "lrn", "pool"), bias=1.0),
        Conv("conv3", 192, 3, padding=1, reads="both", ops=("relu",)),
        Conv("conv4", 192, 3, padding=1, reads="both", ops=("relu",), bias=1.0),
        Conv("conv5", 256, 3, padding=1, reads="both", ops=("relu", "pool"), bias=1.0),
    ),
    hidden=(FC("fc6", 4096, bias=1.0), FC("fc7", 4096, bias=1.0)),
)

_ORIGINAL_HALF = replace(
    _ORIGINAL,
    name="original-half",
    description="The one-GPU control as layers-145-half ran: the original recipe (LRN alpha/n, "
    "conv->LRN->pool->ReLU in layer 1, same-map norm, conv3-5 std 0.03) on one tower; conv1/conv2 "
    "biases at 0.2x lr, the others at 2x.",
    towers=1,
    convs=(
        Conv("conv1", 48, 11, stride=4, cover=True, reads="image", ops=("lrn", "pool", "relu"), bias_lr_mult=0.2),
        Conv("conv2", 128, 5, padding=2, reads="both", ops=("relu", "lrn", "samemap", "pool"), bias=1.0,
             bias_lr_mult=0.2),
        Conv("conv3", 192, 3, padding=1, reads="both", ops=("relu",), weight_std=0.03),
        Conv("conv4", 192, 3, padding=1, reads="both", ops=("relu",), weight_std=0.03, bias=1.0),
        Conv("conv5", 256, 3, padding=1, reads="both", ops=("pool", "relu"), weight_std=0.03, bias=1.0),
    ),
    hidden=(FC("fc6", 4096, bias=1.0), FC("fc7", 4096, bias=1.0)),
)

# 32x32 inputs (CIFAR-10, the synthetic demo). Same topology and ops as `paper`; widths and kernels
# scaled down so a training step runs at >= 100 images/s on a 2-core CPU. Weight std follows
# sqrt(2 / fan_in) (rounded) so this small net trains in a few epochs from scratch.
_CIFAR = replace(
    _PAPER,
    name="cifar",
    description="The paper's two-tower topology scaled for 32x32 inputs (conv 5x5/1 first layer, "
    "48-64-96-96-64 per tower, fc 512+512).",
    input_size=32,
    convs=(
        Conv("conv1", 48, 5, padding=2, reads="image", ops=("relu", "lrn", "pool"), weight_std=0.15),
        Conv("conv2", 64, 5, padding=2, reads="own", ops=("relu", "lrn", "pool"), weight_std=0.04, bias=0.1),
        Conv("conv3", 96, 3, padding=1, reads="both", ops=("relu",), weight_std=0.04),
        Conv("conv4", 96, 3, padding=1, reads="own", ops=("relu",), weight_std=0.05, bias=0.1),
        Conv("conv5", 64, 3, padding=1, reads="own", ops=("relu", "pool"), weight_std=0.05, bias=0.1),
    ),
    hidden=(FC("fc6", 512, weight_std=0.03, bias=0.1), FC("fc7", 512, weight_std=0.04, bias=0.1)),
    head=Head(weight_std=0.04),
    num_classes=10,
    dropout_form="inverted",  # tuned for the small net (the demo and the CIFAR-10 experiments)
)

_CIFAR_ONETOWER = replace(
    _CIFAR,
    name="cifar-onetower",
    description="The no-towers control at 32x32: the cifar widths with every connection crossing.",
    convs=tuple(replace(c, reads="both") if c.reads == "own" else c for c in _CIFAR.convs),
)

PRESETS: dict[str, NetSpec] = {
    s.name: validate(s)
    for s in (_PAPER, _ORIGINAL, _ONETOWER, _PAPER_HALF, _ORIGINAL_HALF, _CIFAR, _CIFAR_ONETOWER)
}


def get_spec(preset: str | NetSpec, num_classes: int | None = None) -> NetSpec:
    """A preset by name (or a spec as is), with ``num_classes`` replaced when given."""
    if isinstance(preset, NetSpec):
        spec = preset
    else:
        try:
            spec = PRESETS[preset]
        except (KeyError, TypeError):
            raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}") from None
    return spec if num_classes is None else spec.with_classes(num_classes)
