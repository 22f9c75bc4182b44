"""The cross-map LRN as two Triton kernels, one for the forward pass and one for the backward pass.

Used by :func:`~.layers.local_response_norm` for float32 / bfloat16 / float16 tensors on a GPU. Each
kernel reads every element once per window neighbour (from cache) and writes once: the sum of
squares and the power are taken in float32 and the result is stored in the input's dtype, so under
autocast a bf16 activation stays bf16 and is normalized with fp32 accuracy. The backward pass saves
only the input and recomputes the denominators of the neighbours it needs (cheaper than storing them).

Both kernels walk the tensor's memory in order, so they take NCHW and channels-last tensors alike:
``stride_c`` is the distance between neighbouring channels (H*W, or 1 for channels-last). With
``TRITON_INTERPRET=1`` they also run on CPU tensors, which is how the tests check them without a GPU.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 1024


@triton.jit
def _forward_kernel(x_ptr, out_ptr, numel, channels, group_channels, stride_c, alpha, beta, k,
                    BEFORE: tl.constexpr, AFTER: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < numel
    c = (offs // stride_c) % channels
    lo = c - c % group_channels  # the window stays inside this channel's group (tower)
    hi = lo + group_channels
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in tl.static_range(BEFORE + AFTER + 1):
        o = i - BEFORE  # neighbour c + o, for o in -before..after
        inside = live & (c + o >= lo) & (c + o < hi)
        v = tl.load(x_ptr + offs + o * stride_c, mask=inside, other=0.0).to(tl.float32)
        total += v * v
    d = k + alpha * total
    a = tl.load(x_ptr + offs, mask=live, other=0.0).to(tl.float32)
    out = a * tl.exp2(-beta * tl.log2(d))  # a * d^-beta
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=live)


@triton.jit
def _backward_kernel(x_ptr, g_ptr, dx_ptr, numel, channels, group_channels, stride_c, alpha, beta, k,
                     BEFORE: tl.constexpr, AFTER: tl.constexpr, BLOCK: tl.constexpr):
    # dL/da_c = g_c d_c^-beta - 2 alpha beta a_c * sum over n with c in window(n) of g_n a_n d_n^(-beta-1)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < numel
    c = (offs // stride_c) % channels
    lo = c - c % group_channels
    hi = lo + group_channels
    mirrored = tl.zeros((BLOCK,), dtype=tl.float32)
    own_scale = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in tl.static_range(BEFORE + AFTER + 1):
        o = i - AFTER  # neighbour n = c + o, for o in -after..before (c lies in n's window)
        n_inside = live & (c + o >= lo) & (c + o < hi)
        total = tl.zeros((BLOCK,), dtype=tl.float32)
        for j in tl.static_range(BEFORE + AFTER + 1):
            p = o + j - BEFORE  # channel c + p in n's window
            inside = n_inside & (c + p >= lo) & (c + p < hi)
            v = tl.load(x_ptr + offs + p * stride_c, mask=inside, other=0.0).to(tl.float32)
            total += v * v
        d = k + alpha * total
        scale = tl.exp2(-beta * tl.log2(d))  # d_n^-beta
        a_n = tl.load(x_ptr + offs + o * stride_c, mask=n_inside, other=0.0).to(tl.float32)
        g_n = tl.load(g_ptr + offs + o * stride_c, mask=n_inside, other=0.0).to(tl.float32)
        mirrored += g_n * a_n * scale / d
        if o == 0:
            own_scale = scale
    a = tl.load(x_ptr + offs, mask=live, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=live, other=0.0).to(tl.float32)
    dx = g * own_scale - 2.0 * alpha * beta * a * mirrored
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=live)


def _dense(x: Tensor) -> tuple[Tensor, torch.memory_format, int]:
    """``x`` dense in NCHW or NHWC order, that order, and the memory distance between channels."""
    if x.is_contiguous():
        return x, torch.contiguous_format, x.shape[2] * x.shape[3]
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, torch.channels_last, 1
    return x.contiguous(), torch.contiguous_format, x.shape[2] * x.shape[3]


def _launch(kernel, tensors: tuple[Tensor, ...], x: Tensor, stride_c: int, config: tuple) -> None:
    size, alpha, beta, k, groups = config
    channels = x.shape[1]
    grid = (triton.cdiv(x.numel(), BLOCK),)
    # launch on the tensor's own GPU (tower 1 lives on another device than the current one)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        kernel[grid](*tensors, x.numel(), channels, channels // groups, stride_c, float(alpha), float(beta),
                     float(k), BEFORE=size // 2, AFTER=(size - 1) // 2, BLOCK=BLOCK)


class TritonLRN(torch.autograd.Function):
    """b = a * (k + alpha * S(a^2))^-beta, S = sum over a channel window inside each group; fp32 inside."""

    @staticmethod
    def forward(ctx, x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> Tensor:
        x, memory_format, stride_c = _dense(x)
        out = torch.empty_like(x, memory_format=memory_format)
        config = (size, alpha, beta, k, groups)
        _launch(_forward_kernel, (x, out), x, stride_c, config)
        ctx.save_for_backward(x)
        ctx.config, ctx.memory_format, ctx.stride_c = config, memory_format, stride_c
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x,) = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=ctx.memory_format)
        grad = torch.empty_like(x, memory_format=ctx.memory_format)
        _launch(_backward_kernel, (x, grad_out, grad), x, ctx.stride_c, ctx.config)
        return grad, None, None, None, None, None
