"""The paper's normalizations, written once and used by both executors.

``local_response_norm`` is the cross-map LRN of section 3.3. ``groups`` keeps the window inside each
tower's block of channels, which is how the grouped executor simulates two GPUs: on a real pair each
GPU only ever sees its own channels. It has three implementations of one formula, chosen by where it runs:

- on a GPU (float32 / bfloat16 / float16): two Triton kernels, one each way (:mod:`.lrn_triton`);
- elsewhere (the CPU, float64): one autograd function whose forward pass saves the denominator and the
  scale and whose backward pass needs one more window sum, instead of the chain of five saved
  elementwise ops that ``torch.nn.LocalResponseNorm`` records;
- inside ``torch.compile``: the plain formula, which the compiler fuses itself.

All three take the sum of squares and the power in float32 (or float64) and return the input's dtype,
so under bf16 / fp16 autocast the output stays 16-bit without losing the ~1.7% the LRN changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _window_sum(x: Tensor, dim: int, before: int, after: int) -> Tensor:
    """out[i] = sum of x[j] for i - before <= j <= i + after along ``dim``, clipped at the ends."""
    out = x.clone()
    length = x.shape[dim]
    for offset in range(1, max(before, after) + 1):
        if offset >= length:
            break
        keep = length - offset
        if offset <= before:  # out[i] += x[i - offset]
            out.narrow(dim, offset, keep).add_(x.narrow(dim, 0, keep))
        if offset <= after:  # out[i] += x[i + offset]
            out.narrow(dim, 0, keep).add_(x.narrow(dim, offset, keep))
    return out


def _inverse_power(d: Tensor, beta: float) -> Tensor:
    """d ** -beta; for the paper's beta = 0.75 as rsqrt(d) * sqrt(rsqrt(d)), ~4x faster than pow on CPU."""
    tracked = d.requires_grad  # in place only where autograd does not need the intermediates
    if beta == 0.75:  # d^-1/2 * (d^-1/2)^1/2
        inv_root = d.rsqrt()
        return inv_root * inv_root.sqrt() if tracked else inv_root.mul_(inv_root.sqrt())
    return (d.log() * -beta).exp_() if tracked else d.log().mul_(-beta).exp_()


LOW_PRECISION = (torch.bfloat16, torch.float16)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _wide(t: Tensor) -> Tensor:
    """``t`` in the dtype the LRN computes in: float32 for 16-bit inputs, else its own."""
    return t.float() if t.dtype in LOW_PRECISION else t


class _CrossMapLRN(torch.autograd.Function):
    """b = a * (k + alpha * S(a^2))^-beta, S = sum over a channel window inside each group.

    Computes in float32 for 16-bit inputs (autocast is off inside; the result is cast back)."""

    @staticmethod
    def forward(ctx, x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            xg = _wide(x).unflatten(1, (groups, x.shape[1] // groups))  # N x G x C/G x H x W (a view)
            before, after = size // 2, (size - 1) // 2
            # k + alpha * (a_i^2 + sum of the neighbours' a_j^2), squares formed on the fly by addcmul;
            # new_full fills k on the device (new_tensor(k) would be a blocking host-to-GPU copy)
            denom = torch.addcmul(xg.new_full((), k), xg, xg, value=alpha)
            length = xg.shape[2]
            for offset in range(1, min(max(before, after), length - 1) + 1):
                keep = length - offset
                lo, hi = xg.narrow(2, 0, keep), xg.narrow(2, offset, keep)
                if offset <= before:  # denom[i] += alpha * a[i - offset]^2
                    denom.narrow(2, offset, keep).addcmul_(lo, lo, value=alpha)
                if offset <= after:  # denom[i] += alpha * a[i + offset]^2
                    denom.narrow(2, 0, keep).addcmul_(hi, hi, value=alpha)
            scale = _inverse_power(denom, beta)
            out = (xg * scale).flatten(1, 2)
        ctx.save_for_backward(xg, denom, scale)
        ctx.config = (before, after, alpha, beta)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        xg, denom, scale = ctx.saved_tensors
        before, after, alpha, beta = ctx.config
        with torch.autocast(grad_out.device.type, enabled=False):
            g = grad_out.to(xg.dtype).unflatten(1, xg.shape[1:3])
            # d b_i / d a_j = scale_i [i == j] - 2 alpha beta a_i a_j scale_i / denom_i  for j in window(i);
            # the transpose sums over the mirrored window.
            t = (g * xg).mul_(scale).div_(denom)
            grad = torch.addcmul(g * scale, xg, _window_sum(t, 2, after, before), value=-2.0 * alpha * beta)
        return grad.flatten(1, 2).to(grad_out.dtype), None, None, None, None, None


def _lrn_formula(x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> Tensor:
    """The LRN as plain differentiable ops (for ``torch.compile``, which fuses them into one kernel)."""
    xw = _wide(x)
    squares = (xw * xw).unflatten(1, (groups, x.shape[1] // groups))
    padded = F.pad(squares, (0, 0, 0, 0, size // 2, (size - 1) // 2))  # zeros beyond each group's channels
    total = sum(padded.narrow(2, i, squares.shape[2]) for i in range(size))
    return (xw * (k + alpha * total.flatten(1, 2)).pow(-beta)).to(x.dtype)


def _triton_lrn():
    """The Triton autograd function, or None where Triton is not installed."""
    try:
        from .lrn_triton import TritonLRN
    except ImportError:
        return None
    return TritonLRN


def local_response_norm(x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> Tensor:
    """Cross-map LRN over channels of N x C x H x W ``x``, the window restricted to each of ``groups`` blocks.

    ``alpha`` multiplies the plain sum of squares (the paper's convention; torch's module divides
    its alpha by ``size``). Returns ``x``'s dtype; sums and powers are taken in at least float32.
    """
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} groups")
    if torch.compiler.is_compiling():
        return _lrn_formula(x, size, alpha, beta, k, groups)
    if x.is_cuda and x.dim() == 4 and x.dtype in TRITON_DTYPES:
        fused = _triton_lrn()
        if fused is not None:
            return fused.apply(x, size, alpha, beta, k, groups)
    return _CrossMapLRN.apply(x, size, alpha, beta, k, groups)


def same_map_norm(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    """The original code's ``rnorm``: b = a / (k + alpha * sum over a size x size window of a^2)^beta.

    The window is centred on each pixel and clipped at the border (zero padding adds nothing to the
    sum). Each channel is normalized on its own, so it never mixes towers. Sums in at least float32;
    returns ``x``'s dtype.
    """
    pad = size // 2
    xw = _wide(x)  # float32 sums for 16-bit inputs, as in the LRN
    with torch.autocast(x.device.type, enabled=False):
        window_mean = F.avg_pool2d(xw * xw, size, stride=1, padding=pad, count_include_pad=True)
        return (xw * _inverse_power(window_mean.mul_(alpha * size * size).add_(k), beta)).to(x.dtype)
