"""Model and training-step benchmarks, measured in one process run (``bench model``, ``bench options``).

Every row times the trainer's own step (:func:`..engine.step.train_step`: forward under autocast,
float32 cross-entropy, backward, momentum update) on one fixed random batch already on the device.
Rows are interleaved repeat by repeat, so a busy machine slows all of them alike, and medians are
reported. Each timed repeat
waits for every device its model uses before and after; nothing inside a step waits on the host
(labels live on the head device beforehand and the loss is never read), except the fp16 gradient
scaler's overflow check.

Rows of ``bench model``: the grouped and two-tower executors, torchvision's ``alexnet`` and the
grouped network with the stock ``torch.nn.functional.local_response_norm`` per tower, all in the
same settings (autocast dtype, channels-last, compile). FLOPs come from the spec
(:func:`forward_macs`) for the AlexNet rows and from the layers actually run
(:func:`counted_macs`) for torchvision's.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .engine.step import AMP_DTYPES, train_step
from .errors import UserError
from .model import build_model, check_device
from .model.grouped import GroupedAlexNet
from .model.init import init_from_spec
from .spec import Conv, NetSpec, get_spec, layer_shapes

# Dense tensor-core peaks from the vendors' datasheets, TFLOP/s, by autocast setting ("none" runs
# fp32 matmuls and convolutions as TF32 here). Matched by substring of the CUDA device name, in order.
KNOWN_PEAK_TFLOPS = (
    ("H200", {"bf16": 989.4, "fp16": 989.4, "none": 494.7}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "none": 378.0}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "none": 494.7}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "none": 156.0}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "none": 183.0}),
    ("RTX 4090", {"bf16": 165.2, "fp16": 165.2, "none": 82.6}),
    ("V100", {"fp16": 125.0, "none": 15.7}),
)


# ---------------------------------------------------------------------------------------------
# FLOPs

def forward_macs(spec: NetSpec) -> int:
    """Multiply-accumulates of one image's forward pass through the convolutions and fc layers.

    From the layer table alone: per tower, a convolution does out_channels x conv_size^2 x
    in_channels x kernel^2 MACs and an fc layer in x out; both towers, plus fc8. The paper's net:
    0.724 GMAC (1.449 GFLOP). LRN, ReLU, pooling and dropout add well under 1% and are not counted.
    """
    total = 0
    for shape in layer_shapes(spec):
        layer = spec.layer(shape.name)
        if isinstance(layer, Conv):
            per_tower = shape.out_channels * shape.conv_size**2 * shape.in_channels * layer.kernel**2
        else:
            per_tower = shape.in_channels * shape.out_channels
        total += per_tower if shape.name == spec.head.name else 2 * per_tower
    return total


def first_layer_macs(spec: NetSpec) -> int:
    shape = layer_shapes(spec)[0]
    return 2 * shape.out_channels * shape.conv_size**2 * shape.in_channels * spec.convs[0].kernel**2


def train_step_flops(forward: int, first_layer: int) -> int:
    """FLOPs of one image's training step: forward, weight gradients and input gradients (3x the
    forward MACs) less conv1's input gradient, which nothing needs; 2 FLOPs per MAC. Paper: 4.14 GFLOP."""
    return 2 * (3 * forward - first_layer)


def counted_macs(model: nn.Module, input_size: int, device="cpu") -> tuple[int, int]:
    """(forward MACs, MACs of the first layer run) of one image, counted by hooks on every Conv2d and Linear."""
    counts: list[int] = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            counts.append(output[0].numel() * module.in_channels // module.groups * kh * kw)
        else:
            counts.append(module.in_features * module.out_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return sum(counts), counts[0]


def peak_tflops_for(device: torch.device, amp: str) -> float | None:
    """The datasheet peak of ``device`` for ``amp`` from :data:`KNOWN_PEAK_TFLOPS`, or None (CPUs, unknown GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in KNOWN_PEAK_TFLOPS:
        if key in name:
            return peaks.get(amp)
    return None


def peak_tflops_of(devices, amp: str, per_gpu: float | None = None) -> float | None:
    """The peak of every GPU in ``devices`` together (each counted once): ``per_gpu`` each, or each one's
    datasheet value; None when one GPU's peak is unknown. CPUs add nothing to GPUs; a row on CPUs alone
    has the given ``per_gpu`` (``--peak-tflops`` for the CPU), else None."""
    gpus = {torch.device(d) for d in devices if torch.device(d).type == "cuda"}
    if not gpus:
        return per_gpu
    peaks = [per_gpu if per_gpu is not None else peak_tflops_for(d, amp) for d in gpus]
    return sum(peaks) if peaks and None not in peaks else None


# ---------------------------------------------------------------------------------------------
# Timing

@dataclass
class Case:
    """One timed row: a model with its optimizer, batch and settings."""

    name: str
    model: nn.Module
    devices: tuple[torch.device, ...]  # every device the model computes on (all are synchronized)
    images: torch.Tensor
    labels: torch.Tensor  # on the head device
    amp: str
    step_flops: int | None = None  # per image
    compile: bool = False

    def __post_init__(self):
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4,
                                         fused=True)  # one kernel per device, not a loop over tensors
        self.scaler = torch.amp.GradScaler(self.devices[0].type, enabled=self.amp == "fp16")
        self.forward = torch.compile(self.model) if self.compile else self.model

    def step(self) -> None:
        """The trainer's step (engine.step.train_step) on this row's batch."""
        train_step(self.forward, self.optimizer, self.scaler, self.images, self.labels, device=self.images.device,
                   amp_dtype=AMP_DTYPES[self.amp])


def _sync(devices) -> None:
    for d in devices:
        if d.type == "cuda":
            torch.cuda.synchronize(d)


@contextlib.contextmanager
def gpu_settings(enabled: bool):
    """cudnn.benchmark and TF32 matmuls/convolutions on (for GPU runs), restored afterwards."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    if enabled:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = saved[0], saved[1]
        torch.set_float32_matmul_precision(saved[2])


def time_cases(cases: list[Case], *, repeats: int, steps: int, warmup: int) -> dict[str, dict]:
    """Per case: median ``img_s`` and ``ms_step`` over ``repeats`` interleaved repeats of ``steps`` steps,
    ``best_img_s`` (fastest repeat) and ``peak_memory_mib`` per CUDA device (None on CPUs)."""
    for case in cases:  # warm-up: compile, allocator, cudnn plans, momentum buffers
        for _ in range(warmup):
            case.step()
        _sync(case.devices)
    seconds: dict[str, list[float]] = {c.name: [] for c in cases}
    peak: dict[str, dict[str, float]] = {c.name: {} for c in cases}
    for _ in range(repeats):
        for case in cases:
            cuda = [d for d in case.devices if d.type == "cuda"]
            for d in cuda:
                torch.cuda.reset_peak_memory_stats(d)
            _sync(case.devices)
            start = time.perf_counter()
            for _ in range(steps):
                case.step()
            _sync(case.devices)
            seconds[case.name].append(time.perf_counter() - start)
            for d in cuda:
                mib = round(torch.cuda.max_memory_allocated(d) / 2**20, 1)
                peak[case.name][str(d)] = max(peak[case.name].get(str(d), 0.0), mib)
    out = {}
    for case in cases:
        batch = case.images.shape[0]
        med = statistics.median(seconds[case.name])
        out[case.name] = {"img_s": batch * steps / med, "best_img_s": batch * steps / min(seconds[case.name]),
                          "ms_step": 1000 * med / steps, "peak_memory_mib": peak[case.name] or None}
    return out


def _check_counts(batch, repeats: int, steps: int, warmup: int) -> None:
    for name, value, least in (("--batch", batch, 1), ("--repeats", repeats, 1), ("--steps", steps, 1),
                               ("--warmup", warmup, 0)):
        if value is None and name == "--batch":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UserError(f"{name} must be an integer of at least {least}, got {value!r}")


def _check_amp(amp: str, device: torch.device) -> None:
    if amp not in AMP_DTYPES:
        raise UserError(f"--amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a GPU (it adds a gradient scaler); use --amp bf16 or none on the CPU")


def _batch(spec: NetSpec, batch: int, device: torch.device, channels_last: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, spec.input_size, spec.input_size, generator=gen).to(device)
    labels = torch.randint(0, spec.num_classes, (batch,), generator=gen)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


def _prepared(model: nn.Module, channels_last: bool) -> nn.Module:
    return model.to(memory_format=torch.channels_last) if channels_last else model


# ---------------------------------------------------------------------------------------------
# bench model

def stock_lrn_per_tower(x, size, alpha, beta, k, groups=1):
    """torch's LocalResponseNorm on each tower's channels (its alpha is divided by size, hence * size)."""
    return torch.cat([F.local_response_norm(h, size, alpha * size, beta, k) for h in x.chunk(groups, 1)], 1)


class StockLRNGroupedAlexNet(GroupedAlexNet):
    """The straightforward grouped network: the stock LRN per tower instead of the fused one."""

    lrn = staticmethod(stock_lrn_per_tower)


def default_tower_devices(device: torch.device) -> tuple[str, str]:
    """cuda:0 and cuda:1 with two GPUs; otherwise both towers on ``device`` (cuda:0,cuda:0 on one GPU; cpu,cpu)."""
    if device.type == "cuda" and torch.cuda.device_count() >= 2:
        return ("cuda:0", "cuda:1")
    return (str(device), str(device))


def bench_model(device="cpu", *, devices=None, batch: int | None = None, repeats: int = 5, steps: int = 2,
                warmup: int = 1, preset: str = "paper", amp: str = "none", channels_last: bool = False,
                compile: bool = False, peak_tflops: float | None = None) -> dict:
    """Training-step rows (grouped, two-tower, torchvision alexnet, stock-LRN grouped) in one process run.

    torchvision's alexnet is timed only for presets with 224 inputs (``torchvision_img_s`` is None otherwise).
    ``batch`` defaults to 32 on a CPU and 128 on a GPU. ``peak_tflops`` (default: the datasheet value
    of a known GPU, else none; per GPU) turns achieved TFLOP/s into a percentage of the peak of every GPU
    the row uses: a two-tower row on two GPUs divides by both GPUs' peaks.
    """
    import torchvision

    device = check_device(device)
    _check_counts(batch, repeats, steps, warmup)
    _check_amp(amp, device)
    if peak_tflops is not None and not peak_tflops > 0:
        raise UserError(f"--peak-tflops must be a positive number, got {peak_tflops!r}")
    spec = get_spec(preset)
    towers = tuple(check_device(d) for d in (devices or default_tower_devices(device)))
    if len(towers) != 2:
        raise UserError(f"--devices takes two devices (tower 0, tower 1), got {len(towers)}")
    batch = batch or (128 if device.type == "cuda" else 32)
    images, labels = _batch(spec, batch, device, channels_last)
    ours = train_step_flops(forward_macs(spec), first_layer_macs(spec))
    stock = StockLRNGroupedAlexNet(spec, device)
    init_from_spec(stock, spec)
    models = {
        "grouped": (build_model(spec, mode="grouped", device=device), (device,), ours),
        "two_tower": (build_model(spec, mode="two-tower", devices=towers), tuple(dict.fromkeys(towers)), ours),
        "grouped_stock_lrn": (stock, (device,), ours),
    }
    if spec.input_size == 224:  # torchvision's alexnet takes 224 images; the cifar presets go without it
        torchvision_net = torchvision.models.alexnet(num_classes=spec.num_classes).to(device)
        tv_flops = train_step_flops(*counted_macs(torchvision_net, spec.input_size, device))
        models = {**dict(list(models.items())[:2]), "torchvision": (torchvision_net, (device,), tv_flops),
                  "grouped_stock_lrn": models["grouped_stock_lrn"]}
    cases = [Case(name, _prepared(model, channels_last), devs, images, labels.to(devs[0]), amp, flops, compile)
             for name, (model, devs, flops) in models.items()]
    with gpu_settings(device.type == "cuda"):
        timed = time_cases(cases, repeats=repeats, steps=steps, warmup=warmup)
    peak = peak_tflops if peak_tflops is not None else peak_tflops_for(device, amp)
    rows = []
    for case in cases:
        t = timed[case.name]
        tflops = t["img_s"] * case.step_flops / 1e12
        row_peak = peak_tflops_of(case.devices, amp, peak_tflops)  # a two-tower row on two GPUs: both peaks
        rows.append({"model": case.name, "img_s": round(t["img_s"], 2), "ms_step": round(t["ms_step"], 2),
                     "peak_memory_mib": t["peak_memory_mib"], "train_gflop_per_image": round(case.step_flops / 1e9, 3),
                     "tflops": round(tflops, 4), "peak_tflops": row_peak,
                     "percent_of_peak": round(100 * tflops / row_peak, 2) if row_peak else None})
    med = {r["model"]: r["img_s"] for r in rows}
    tv = med.get("torchvision")
    return {
        "preset": preset, "device": str(device), "two_tower_devices": [str(d) for d in towers],
        "gpu_names": sorted({torch.cuda.get_device_name(d) for d in (device, *towers) if d.type == "cuda"}),
        "batch": batch, "repeats": repeats, "steps_per_repeat": steps, "warmup": warmup,
        "amp": amp, "channels_last": channels_last, "compile": compile, "peak_tflops": peak,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "grouped_img_s": med["grouped"], "two_tower_img_s": med["two_tower"],
        "torchvision_img_s": tv, "grouped_stock_lrn_img_s": med["grouped_stock_lrn"],
        "grouped_vs_torchvision": round(med["grouped"] / tv, 3) if tv else None,
        "grouped_vs_stock_lrn": round(med["grouped"] / med["grouped_stock_lrn"], 3),
        "two_tower_vs_grouped": round(med["two_tower"] / med["grouped"], 3),
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------
# bench options: what each speed option buys for one model

# name -> (amp, channels_last, compile)
OPTIONS = {
    "baseline (fp32)": ("none", False, False),
    "channels_last": ("none", True, False),
    "bf16 autocast": ("bf16", False, False),
    "fp16 autocast + scaler": ("fp16", False, False),
    "bf16 + channels_last": ("bf16", True, False),
    "torch.compile": ("none", False, True),
    "all (bf16, channels_last, compile)": ("bf16", True, True),
}
CUDA_ONLY = {"fp16 autocast + scaler"}


def bench_options(preset: str = "cifar", mode: str = "grouped", devices=("cpu",), *, batch: int = 64,
                  repeats: int = 3, steps: int = 3, warmup: int = 1, options=None) -> dict:
    """One row per speed option (``option``, ``img_s``, ``ratio`` to float32 measured in the same run);
    GPU-only options are left out on a CPU. On a GPU, cudnn.benchmark and TF32 are on for every row."""
    _check_counts(batch, repeats, steps, warmup)
    if mode not in ("grouped", "two-tower"):
        raise UserError(f"--mode must be grouped or two-tower, got {mode!r}")
    devs = tuple(check_device(d) for d in devices)
    if len(devs) != (2 if mode == "two-tower" else 1):
        raise UserError(f"mode {mode} takes {2 if mode == 'two-tower' else 1} device(s), got {len(devs)}")
    unknown = [o for o in options or () if o not in OPTIONS]
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r}; choose from: {', '.join(OPTIONS)}")
    on_cuda = devs[0].type == "cuda"
    names = [n for n in (options or OPTIONS) if on_cuda or n not in CUDA_ONLY]
    if "baseline (fp32)" not in names:
        names.insert(0, "baseline (fp32)")
    spec = get_spec(preset)
    flops = train_step_flops(forward_macs(spec), first_layer_macs(spec))
    cases = []
    for name in names:
        amp, channels_last, compiled = OPTIONS[name]
        torch.manual_seed(0)
        model = (build_model(spec, mode="two-tower", devices=devs) if mode == "two-tower"
                 else build_model(spec, mode="grouped", device=devs[0]))
        images, labels = _batch(spec, batch, devs[0], channels_last, seed=1)
        cases.append(Case(name, _prepared(model, channels_last), tuple(dict.fromkeys(devs)), images,
                          labels.to(model.head_device), amp, flops, compiled))
    with gpu_settings(on_cuda):
        timed = time_cases(cases, repeats=repeats, steps=steps, warmup=warmup)
    base = timed["baseline (fp32)"]
    rows = []
    for name in names:
        t = timed[name]
        rows.append({"option": name, "img_s": round(t["img_s"], 2), "ratio": round(t["img_s"] / base["img_s"], 3),
                     "best_img_s": round(t["best_img_s"], 2), "ms_step": round(t["ms_step"], 2),
                     "tflops": round(t["img_s"] * flops / 1e12, 4), "peak_memory_mib": t["peak_memory_mib"]})
    return {"preset": preset, "mode": mode, "devices": [str(d) for d in devs], "batch": batch, "repeats": repeats,
            "steps_per_repeat": steps, "warmup": warmup, "threads": torch.get_num_threads(), "options": rows}
