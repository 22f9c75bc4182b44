"""The paper's transforms: crops in bounds and covering every position, flips at ~50%, the 10 views in the
documented order, PCA colour noise along the eigenvectors at the documented scale, mean subtraction."""
import math

import pytest
import torch

from twogpu_alexnet.data.stats import Stats
from twogpu_alexnet.data.transforms import Pipeline, augment_params, color_offset, geometry_for
from twogpu_alexnet.errors import UserError

G224, G32 = geometry_for(224), geometry_for(32)


def _stats(size, mean=0.0, eigenvalues=(900.0, 100.0, 25.0), seed=0):
    """Stats with a constant mean image and a known (random orthonormal) eigenbasis."""
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    vals = torch.tensor(eigenvalues, dtype=torch.float64)
    cov = q @ torch.diag(vals) @ q.T
    return Stats(
        torch.full((3, size, size), float(mean), dtype=torch.float64),
        torch.full((3,), float(mean), dtype=torch.float64),
        cov,
        vals,
        q,
        images=1,
        pixels=size * size,
    )


def _position_image(size, offset=0):
    """R = row + offset, G = column + offset, B = 7: every crop tells where it came from."""
    rows = torch.arange(size).view(-1, 1).expand(size, size)
    return torch.stack([rows + offset, rows.T + offset, torch.full((size, size), 7)]).to(torch.uint8)


def _run(pipe, img, index=0, epoch=0):
    """One image through both parts: the worker's uint8 view, then the arithmetic."""
    view, row = pipe(img, index, epoch)
    assert view.dtype == torch.uint8
    return pipe.finish(view[None], row[None])[0]


def test_crop_positions_in_bounds_and_all_covered():
    seen = set()
    for i in range(12000):
        p = augment_params(0, i // 3000, i, G224)
        assert 0 <= p.top <= 32 and 0 <= p.left <= 32
        seen.add((p.top, p.left))
    assert seen == {(t, left) for t in range(33) for left in range(33)}


def test_train_crops_are_the_drawn_windows_of_the_image():
    pipe = Pipeline(_stats(256), G224, train=True, color_noise="none", seed=5)
    img = _position_image(256)
    for index in range(40):
        p = augment_params(5, 2, index, G224)
        out = _run(pipe, img, index, 2)
        assert out.shape == (3, 224, 224)
        window = img[:, p.top:p.top + 224, p.left:p.left + 224].float()
        expected = window.flip(-1) if p.flip else window
        assert torch.equal(out, expected)
        rows, cols = out[0], out[1]
        assert rows.min() >= 0 and rows.max() <= 255 and cols.min() >= 0 and cols.max() <= 255


def test_cifar_crops_come_from_the_zero_padded_image():
    pipe = Pipeline(_stats(32), G32, train=True, color_noise="none", seed=1, pixel_scale=1.0)
    img = _position_image(32, offset=1)                                    # values >= 1 inside the image
    padded = torch.nn.functional.pad(img.float(), (4, 4, 4, 4))
    positions = set()
    for index in range(400):
        p = augment_params(1, 0, index, G32)
        positions.add((p.top, p.left))
        out = pipe(img, index, 0)[0].float()
        window = padded[:, p.top:p.top + 32, p.left:p.left + 32]
        assert torch.equal(out, window.flip(-1) if p.flip else window)
    assert positions == {(t, left) for t in range(9) for left in range(9)}


def test_flips_happen_half_the_time():
    flips = sum(augment_params(3, e, i, G224).flip for e in range(2) for i in range(3000))
    assert abs(flips / 6000 - 0.5) < 0.02


def test_augmentation_is_a_pure_function_of_seed_epoch_index():
    assert augment_params(1, 2, 3, G224) == augment_params(1, 2, 3, G224)
    assert augment_params(1, 2, 3, G224) != augment_params(1, 3, 3, G224)
    assert augment_params(1, 2, 3, G224) != augment_params(2, 2, 3, G224)


@pytest.mark.parametrize("geometry,base", [(G224, 0), (G32, 4)])
def test_ten_views_are_the_documented_ones_in_order(geometry, base):
    size = geometry.image_size
    pipe = Pipeline(_stats(size), geometry, train=False, color_noise="none", views=10, pixel_scale=1.0)
    img = _position_image(size, offset=1)
    views = _run(pipe, img)                                               # 10 x 3 x S x S
    s, full = geometry.input_size, size + 2 * geometry.pad
    padded = torch.nn.functional.pad(img.float(), [geometry.pad] * 4)
    corners = {"top-left": (0, 0), "top-right": (0, full - s), "bottom-left": (full - s, 0),
               "bottom-right": (full - s, full - s), "centre": ((full - s) // 2, (full - s) // 2)}
    expected = [padded[:, t:t + s, left:left + s] for t, left in corners.values()]
    flipped_image = padded.flip(-1)
    expected += [flipped_image[:, t:t + s, left:left + s] for t, left in corners.values()]
    assert views.shape == (10, 3, s, s)
    for k in range(10):
        assert torch.equal(views[k], expected[k]), k
    # the flipped half: view 5 is the reflection of view 1 (top-right), 6 of 0, 7 of 3, 8 of 2, 9 of 4
    for k, j in zip(range(5, 10), (1, 0, 3, 2, 4), strict=True):
        assert torch.equal(views[k], views[j].flip(-1))


def test_centre_view_and_mean_subtraction():
    size = 256
    mean = torch.rand(3, size, size, dtype=torch.float64) * 200
    stats = _stats(size)
    stats = Stats(mean, mean.mean(dim=(1, 2)), stats.covariance, stats.eigenvalues, stats.eigenvectors, 1, size * size)
    img = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    centre = Pipeline(stats, G224, train=False, views=1)
    out = _run(centre, img)
    assert torch.allclose(out, img[:, 16:240, 16:240].float() - mean[:, 16:240, 16:240].float(), atol=1e-4)
    # training: the centre of the mean image for every crop (the original code), never reflected
    pipe = Pipeline(stats, G224, train=True, color_noise="none", seed=4)
    for index in range(6):
        p = augment_params(4, 0, index, G224)
        crop = img[:, p.top:p.top + 224, p.left:p.left + 224].float()
        crop = crop.flip(-1) if p.flip else crop
        assert torch.allclose(_run(pipe, img, index), crop - mean[:, 16:240, 16:240].float(), atol=1e-4), index


@pytest.mark.parametrize("form", ["paper", "original"])
def test_pca_noise_moves_pixels_along_the_eigenvectors(form):
    """2,000 images: each worker view finished in one batch, as the loader does."""
    stats = _stats(32, mean=0.0)
    pipe = Pipeline(stats, G32, train=True, color_noise=form, seed=9, pixel_scale=1.0)
    img = torch.full((3, 32, 32), 100, dtype=torch.uint8)
    lam, vecs = stats.eigenvalues, stats.eigenvectors
    n = 2000
    views, rows = zip(*(pipe(img, index, 0) for index in range(n)), strict=True)
    out = pipe.finish(torch.stack(views), torch.stack(rows)).double()
    shift = out[:, :, 4:28, 4:28].reshape(n, 3, -1)                       # never padding for any crop
    assert torch.allclose(shift, shift[:, :, :1].expand_as(shift), atol=1e-3)  # one RGB shift per image
    pixel = shift[:, :, 0]
    offset = pixel * 1.1 - 100.0 if form == "original" else pixel - 100.0  # original: (x - mean + offset) / 1.1
    z = torch.tensor([augment_params(9, 0, index, G32).z for index in range(n)], dtype=torch.float64)
    scale = 0.1 * lam / 255.0 if form == "paper" else 0.1 * lam.sqrt()
    assert torch.allclose(offset, (z * scale) @ vecs.T, atol=2e-3)
    drawn = torch.stack([color_offset(tuple(row.tolist()), stats, form) for row in z])
    assert torch.allclose(offset, drawn.double(), atol=2e-3)
    coeffs = offset @ vecs                                                 # coordinates in the eigenbasis
    assert torch.allclose(coeffs.std(dim=0), scale, rtol=0.06)
    assert (coeffs.mean(dim=0).abs() < 0.1 * scale).all()


def test_crop_groups_share_position_and_reflection_but_not_colour():
    pipe = Pipeline(_stats(256), G224, train=True, color_noise="paper", seed=2, crop_group=32)
    img = torch.randint(0, 256, (3, 256, 256), dtype=torch.uint8)
    rows = torch.stack([pipe(img, index, 1, slot)[1] for slot, index in enumerate(range(100, 164))])
    assert (rows[:32, :3] == rows[0, :3]).all() and (rows[32:, :3] == rows[32, :3]).all()
    for group in (0, 1):                                                           # drawn from (seed, epoch, group)
        p = augment_params(2, 1, 0, G224, group)
        assert rows[32 * group, :3].tolist() == [p.top, p.left, float(p.flip)]
    assert len({tuple(r) for r in rows[:, 3:].tolist()}) == 64                    # colour noise stays per image
    assert torch.equal(pipe(img, 100, 1, 0)[1], rows[0])                           # a pure function of the key
    plain = Pipeline(_stats(256), G224, train=True, color_noise="paper", seed=2)
    assert torch.equal(plain(img, 7, 1, 3)[1], plain(img, 7, 1, 99)[1])           # off: the slot does not matter


def test_pixel_scale_is_0_255_for_224_and_unit_variance_for_32():
    assert Pipeline(_stats(256), G224, train=False).pixel_scale == 1.0
    stats = _stats(32, eigenvalues=(2700.0, 200.0, 100.0))                 # trace / 3 = 1000
    pipe = Pipeline(stats, G32, train=True, color_noise="original", seed=2)
    assert abs(pipe.pixel_scale - 1000 ** -0.5) < 1e-12
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    unscaled = Pipeline(stats, G32, train=True, color_noise="original", seed=2, pixel_scale=1.0)
    assert torch.allclose(_run(pipe, img, 3, 1), _run(unscaled, img, 3, 1) * pipe.pixel_scale, atol=1e-5)
    evaluation = Pipeline(stats, G32, train=False)
    assert torch.allclose(evaluation.finish(img[None]), img[None].float() * evaluation.pixel_scale, atol=1e-5)


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="color_noise"):
        Pipeline(_stats(256), G224, train=True, color_noise="fancy")
    with pytest.raises(UserError, match="views"):
        Pipeline(_stats(256), G224, train=True, views=10)
    with pytest.raises(UserError, match="crop_group"):
        Pipeline(_stats(256), G224, train=True, crop_group=-1)
    with pytest.raises(UserError, match="mean image is 32x32"):
        Pipeline(_stats(32), G224, train=False)
    assert geometry_for(224).image_size == 256 and geometry_for(32).pad == 4
    assert math.isclose(G224.max_offset, 32)
