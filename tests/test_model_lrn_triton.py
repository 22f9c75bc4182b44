"""The Triton LRN kernels against the float64 formula: on CPU through Triton's interpreter, on a GPU for real."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from twogpu_alexnet.model.layers import local_response_norm

ROOT = Path(__file__).resolve().parents[1]
BF16_ROUNDING = 2.0**-8

# Runs in a fresh interpreter: TRITON_INTERPRET must be set before the kernels are defined.
INTERPRETED = textwrap.dedent("""
    import torch
    from twogpu_alexnet.model.layers import local_response_norm
    from twogpu_alexnet.model.lrn_triton import TritonLRN

    def check(shape, size, groups, channels_last, dtype, rtol):
        g = torch.Generator().manual_seed(size + groups)
        x64 = (torch.randn(shape, generator=g, dtype=torch.float64) * 30).to(dtype).double().requires_grad_()
        grad_out = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        ref = local_response_norm(x64, size, 1e-4, 0.75, 2.0, groups=groups)
        (ref_grad,) = torch.autograd.grad(ref, x64, grad_out.double())
        x = x64.detach().to(dtype)
        if channels_last:
            x, grad_out = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad_out))
        x.requires_grad_()
        out = TritonLRN.apply(x, size, 1e-4, 0.75, 2.0, groups)
        (grad,) = torch.autograd.grad(out, x, grad_out)
        assert out.dtype == grad.dtype == dtype, (out.dtype, grad.dtype)
        assert (out - x).abs().max() > 0.01  # it normalizes at this scale
        torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=1e-6)
        torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol, atol=1e-6)

    for shape, size, groups in (((2, 12, 3, 4), 5, 1), ((2, 16, 3, 3), 5, 2), ((1, 8, 2, 5), 4, 2)):
        for channels_last in (False, True):
            check(shape, size, groups, channels_last, torch.float32, 1e-5)
            # the interpreter truncates fp32 -> bf16 (a GPU rounds to nearest): one bf16 ulp, not half
            check(shape, size, groups, channels_last, torch.bfloat16, BF16_ULP)
    print("ok")
""").replace("BF16_ULP", repr(2 * BF16_ROUNDING * 1.01))


def test_triton_kernels_match_the_formula_in_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_gpu_lrn_fp32_matches_float64_and_bf16_is_within_rounding(groups, channels_last):
    g = torch.Generator().manual_seed(groups)
    x64 = (torch.randn(8, 96, 27, 27, generator=g, dtype=torch.float64) * 30).cuda().requires_grad_()
    grad_out = torch.randn(8, 96, 27, 27, generator=g, dtype=torch.float64).cuda()
    ref = local_response_norm(x64, 5, 1e-4, 0.75, 2.0, groups=groups)  # float64: the autograd function
    (ref_grad,) = torch.autograd.grad(ref, x64, grad_out)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for dtype, rtol in ((torch.float32, 1e-5), (torch.bfloat16, BF16_ROUNDING * 1.01)):
        x = x64.detach().to(dtype).contiguous(memory_format=fmt).requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = local_response_norm(x, 5, 1e-4, 0.75, 2.0, groups=groups)
        (grad,) = torch.autograd.grad(out, x, grad_out.to(dtype))
        assert out.dtype == grad.dtype == dtype
        exact = local_response_norm(x.detach().double(), 5, 1e-4, 0.75, 2.0, groups=groups)  # on the rounded input
        torch.testing.assert_close(out.double(), exact, rtol=rtol, atol=1e-5)
        if dtype == torch.float32:
            torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_gpu_lrn_under_torch_compile_matches_eager():
    x = (torch.randn(4, 96, 27, 27, device="cuda") * 30).requires_grad_()
    compiled = torch.compile(lambda t: local_response_norm(t, 5, 1e-4, 0.75, 2.0, groups=2))
    out = compiled(x)
    eager = local_response_norm(x, 5, 1e-4, 0.75, 2.0, groups=2)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(eager, x, g)[0],
                               rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_gpu_lrn_forward_and_backward_are_one_kernel_each():
    x = (torch.randn(4, 96, 27, 27, device="cuda") * 30).requires_grad_()
    local_response_norm(x, 5, 1e-4, 0.75, 2.0, groups=2).sum().backward()  # compile the kernels first
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = local_response_norm(x, 5, 1e-4, 0.75, 2.0, groups=2)
        torch.autograd.grad(out, x, torch.ones_like(out))
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    assert sum("_forward_kernel" in n for n in names) == 1, names
    assert sum("_backward_kernel" in n for n in names) == 1, names
    assert len(names) <= 4, names  # besides the two: at most ones_like's fill and a layout copy
