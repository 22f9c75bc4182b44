"""The normalizations against direct loops over the paper's and the original code's formulas."""
import pytest
import torch

from twogpu_alexnet.model.layers import local_response_norm, same_map_norm


def lrn_loop(a, n, alpha, beta, k):
    """b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta, one channel at a time."""
    channels = a.shape[1]
    out = []
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        s = sum(a[:, j] ** 2 for j in range(lo, hi + 1))
        out.append(a[:, i] / (k + alpha * s) ** beta)
    return torch.stack(out, 1)


def same_map_loop(a, size, alpha, beta, k):
    """b = a / (k + alpha * sum over the size x size window centred on the pixel, clipped)^beta."""
    _, _, h, w = a.shape
    out = torch.empty_like(a)
    r = size // 2
    for y in range(h):
        for x in range(w):
            win = a[:, :, max(0, y - r):min(h, y + r + 1), max(0, x - r):min(w, x + r + 1)]
            out[:, :, y, x] = a[:, :, y, x] / (k + alpha * (win ** 2).sum((2, 3))) ** beta
    return out


def _loud(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 30).requires_grad_()


@pytest.mark.parametrize("alpha,beta,k", [(1e-4, 0.75, 2.0), (2e-5, 0.75, 2.0), (1e-3, 0.6, 1.0)])
def test_lrn_matches_the_formula_forward_and_gradient(alpha, beta, k):
    a = _loud((2, 12, 3, 4))
    g = torch.randn(2, 12, 3, 4, dtype=torch.float64)
    ref = lrn_loop(a, 5, alpha, beta, k)
    ours = local_response_norm(a, 5, alpha, beta, k)
    assert (ref - a).abs().max() > 1e-3  # the normalization does something at this scale
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    (g_ref,) = torch.autograd.grad(ref, a, g)
    (g_ours,) = torch.autograd.grad(ours, a, g)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)


def test_lrn_gradcheck():
    a = _loud((1, 7, 2, 3), seed=1) / 10
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, 5, 1e-3, 0.75, 2.0, groups=1), (a,))
    b = _loud((1, 8, 2, 2), seed=2) / 10
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, 4, 1e-3, 0.75, 1.0, groups=2), (b,))


def test_lrn_equals_torch_module_with_alpha_times_size():
    a = _loud((2, 16, 5, 5))
    torch.testing.assert_close(local_response_norm(a, 5, 1e-4, 0.75, 2.0),
                               torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)(a), rtol=0, atol=1e-12)


def test_lrn_groups_keep_the_window_inside_each_tower():
    a = _loud((2, 96, 3, 3))
    grouped = local_response_norm(a, 5, 1e-4, 0.75, 2.0, groups=2)
    per_tower = torch.cat([lrn_loop(a[:, :48], 5, 1e-4, 0.75, 2.0), lrn_loop(a[:, 48:], 5, 1e-4, 0.75, 2.0)], 1)
    torch.testing.assert_close(grouped, per_tower, rtol=0, atol=1e-12)
    across = lrn_loop(a, 5, 1e-4, 0.75, 2.0)
    diff = (grouped - across).abs().amax((0, 2, 3))
    # only channels 46..49, whose window would reach the other tower, differ
    assert torch.all(diff[[46, 47, 48, 49]] > 1e-6)
    assert torch.all(diff[:46] < 1e-12) and torch.all(diff[50:] < 1e-12)


def test_lrn_accepts_channels_last():
    a = _loud((2, 96, 5, 5)).detach()
    out = local_response_norm(a.to(memory_format=torch.channels_last), 5, 1e-4, 0.75, 2.0, groups=2)
    torch.testing.assert_close(out, local_response_norm(a, 5, 1e-4, 0.75, 2.0, groups=2), rtol=0, atol=1e-12)


def test_same_map_norm_matches_the_formula_with_clipped_border():
    a = _loud((2, 3, 7, 6))
    g = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    ref = same_map_loop(a, 5, 0.001 / 25, 0.75, 1.0)
    ours = same_map_norm(a, 5, 0.001 / 25, 0.75, 1.0)
    assert (ref - a).abs().max() > 1e-3
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(ours, a, g)[0], torch.autograd.grad(ref, a, g)[0], rtol=0, atol=1e-12
    )


def test_lrn_formula_used_under_compile_matches_the_autograd_function():
    from twogpu_alexnet.model.layers import _lrn_formula

    a = _loud((2, 12, 3, 4))
    g = torch.randn(2, 12, 3, 4, dtype=torch.float64)
    per_tower = torch.cat([lrn_loop(h, 5, 1e-4, 0.75, 2.0) for h in a.chunk(2, 1)], 1)
    torch.testing.assert_close(_lrn_formula(a, 5, 1e-4, 0.75, 2.0, 2), per_tower, rtol=0, atol=1e-12)
    for size, groups in ((5, 1), (5, 2), (4, 2)):  # an even size: window i-2..i+1
        ours = _lrn_formula(a, size, 1e-3, 0.75, 2.0, groups)
        fused = local_response_norm(a, size, 1e-3, 0.75, 2.0, groups=groups)
        torch.testing.assert_close(ours, fused, rtol=0, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad(ours, a, g)[0], torch.autograd.grad(fused, a, g)[0],
                                   rtol=0, atol=1e-12)


BF16_ROUNDING = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)


def test_lrn_under_bf16_autocast_sums_in_fp32_and_returns_bf16():
    """A bf16 activation is normalized with fp32 sums: the output is the exact result rounded once to bf16.

    Accumulating k + alpha * sum(a^2) in bf16 (ulp 0.0156 at 2) puts ~2% errors in the output."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 96, 13, 13, generator=g) * 30).bfloat16().requires_grad_()
    grad_out = torch.randn(4, 96, 13, 13, generator=g).bfloat16()
    x64 = x.detach().double().requires_grad_()
    ref = local_response_norm(x64, 5, 1e-4, 0.75, 2.0, groups=2)
    (ref_grad,) = torch.autograd.grad(ref, x64, grad_out.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = local_response_norm(x, 5, 1e-4, 0.75, 2.0, groups=2)
    assert out.dtype == torch.bfloat16
    rel = (out.double() - ref).abs() / ref.abs().clamp_min(1e-3)
    assert rel.max() <= BF16_ROUNDING * 1.01
    (grad,) = torch.autograd.grad(out, x, grad_out)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.double(), ref_grad, rtol=BF16_ROUNDING * 1.01, atol=1e-6)


def test_same_map_norm_under_bf16_autocast_sums_in_fp32_and_returns_bf16():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 8, 9, 9, generator=g) * 30).bfloat16()
    ref = same_map_norm(x.double(), 5, 0.001 / 25, 0.75, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = same_map_norm(x, 5, 0.001 / 25, 0.75, 1.0)
    assert out.dtype == torch.bfloat16
    assert ((out.double() - ref).abs() / ref.abs().clamp_min(1e-3)).max() <= BF16_ROUNDING * 1.01
