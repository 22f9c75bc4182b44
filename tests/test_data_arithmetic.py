"""The arithmetic part of the pipeline (mean image, PCA colour noise, pixel scale) gives exactly the numbers of
the formula the package has always used, written out here operation by operation: bit-identical in float32 and
in float64, for both geometries (224 with the centre mean, 32 with zero padding), training and evaluation."""
import pytest
import torch
import torch.nn.functional as nnf

from twogpu_alexnet.data.stats import Stats
from twogpu_alexnet.data.transforms import ORIGINAL_COEFF, Pipeline, augment_params, geometry_for


def _stats(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    vals = torch.tensor([2700.0, 200.0, 100.0], dtype=torch.float64)
    mean = torch.rand(3, size, size, generator=g, dtype=torch.float64) * 200 + 20
    return Stats(mean, mean.mean(dim=(1, 2)), q @ torch.diag(vals) @ q.T, vals, q, images=1, pixels=size * size)


def reference(img, stats, geometry, *, train, color_noise, seed, index, epoch, views, dtype):
    """The formula, step by step: (x - mean + offset) * scale on the crop (224: the centre crop of the mean
    image) or on the whole image before zero padding and cropping (32); offset = M z summed in Python floats."""
    g, s = geometry, geometry.input_size
    scale = 1.0 if g.input_size > 64 else float(1.0 / (stats.covariance.diagonal().sum() / 3).clamp_min(1e-6).sqrt())
    mean = stats.mean_image.to(dtype)
    border = (g.image_size - s) // 2
    centre_mean = mean[:, border:border + s, border:border + s] if g.pad == 0 else mean
    if not train:
        if views == 1:
            view = img if g.pad else img[:, border:border + s, border:border + s]
            return (view.to(dtype) - centre_mean) * scale
        if g.pad:
            stack = torch.stack([torch.as_tensor(v) for v in _ten(nnf.pad(img, [g.pad] * 4), s)])
            means = torch.stack(_ten(nnf.pad(mean, [g.pad] * 4), s))
            return (stack.to(dtype) - means) * scale
        return (torch.stack(_ten(img, s)).to(dtype) - centre_mean) * scale
    p = augment_params(seed, epoch, index, g)
    if color_noise == "paper":
        m = stats.eigenvectors * (0.1 * stats.eigenvalues / 255.0)
    elif color_noise == "original":
        m = stats.eigenvectors * (ORIGINAL_COEFF * stats.pca_stdevs)
        scale = scale / (1.0 + ORIGINAL_COEFF)
    m = m.tolist() if color_noise != "none" else None
    offset = None if m is None else torch.tensor([sum(m[c][i] * p.z[i] for i in range(3)) for c in range(3)],
                                                 dtype=torch.float64).to(dtype).view(3, 1, 1)
    if g.pad == 0:                                  # the crop is reflected, the centre mean is not
        crop = img[:, p.top:p.top + s, p.left:p.left + s]
        out = (crop.flip(-1) if p.flip else crop).to(dtype) - centre_mean
        out = out if offset is None else out + offset
        return out * scale if scale != 1.0 else out
    full = img.to(dtype) - mean
    full = full if offset is None else full + offset
    full = full * scale if scale != 1.0 else full
    out = nnf.pad(full, [g.pad] * 4)[:, p.top:p.top + s, p.left:p.left + s]
    return out.flip(-1) if p.flip else out


def _ten(img, s):
    h = img.shape[-1]
    corners = [(0, 0), (0, h - s), (h - s, 0), (h - s, h - s), ((h - s) // 2, (h - s) // 2)]
    crops = [img[:, t:t + s, left:left + s] for t, left in corners]
    flipped = img.flip(-1)
    return crops + [flipped[:, t:t + s, left:left + s] for t, left in corners]


def package(img, stats, geometry, *, train, color_noise, seed, index, epoch, views, dtype):
    """What the package computes for one image: the worker's uint8 view, then the arithmetic on the device."""
    pipe = Pipeline(stats, geometry, train=train, color_noise=color_noise, views=views, seed=seed)
    view, params = pipe(img, index, epoch)
    assert view.dtype == torch.uint8                                      # workers ship uint8 only
    return pipe.finish(view[None], params[None], dtype=dtype)[0]


CASES = [(224, True, "paper", 1), (224, True, "original", 1), (224, True, "none", 1), (224, False, "none", 1),
         (224, False, "none", 10), (32, True, "paper", 1), (32, True, "original", 1), (32, True, "none", 1),
         (32, False, "none", 1), (32, False, "none", 10)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("input_size,train,color_noise,views", CASES)
def test_device_arithmetic_is_bit_identical_to_the_formula(input_size, train, color_noise, views, dtype):
    geometry = geometry_for(input_size)
    stats = _stats(geometry.image_size)
    g = torch.Generator().manual_seed(input_size)
    for index in range(4 if input_size == 224 else 24):
        img = torch.randint(0, 256, (3, geometry.image_size, geometry.image_size), generator=g, dtype=torch.uint8)
        kw = dict(train=train, color_noise=color_noise, seed=3, index=index, epoch=2, views=views, dtype=dtype)
        got, want = package(img, stats, geometry, **kw), reference(img, stats, geometry, **kw)
        assert got.dtype == dtype and got.shape == want.shape
        assert torch.equal(got, want), (index, (got - want).abs().max())
