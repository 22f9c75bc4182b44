"""prepare + stats on generated class folders give exactly the expected mean image, channel means and RGB PCA."""
import os

import numpy as np
import torch

from twogpu_alexnet.data import DataOptions, open_split
from twogpu_alexnet.data.folders import list_split
from twogpu_alexnet.data.split import compute_split_stats, folder_stats
from twogpu_alexnet.data.stats import StatsAccumulator, eigen_rgb, load_stats
from twogpu_alexnet.data.store import prepare_store

SIZE = 16


def _images(seed=0, count=6):
    """Known pixel values: random 16x16 RGB images whose channels are correlated (distinct eigenvalues)."""
    rng = np.random.default_rng(seed)
    mix = np.array([[1.0, 0.0, 0.0], [0.6, 0.5, 0.0], [0.3, 0.2, 0.25]])
    out = {}
    for i in range(count):
        base = rng.uniform(0, 200, size=(SIZE, SIZE, 3)) @ mix.T
        out[f"{'ab'[i % 2]}/img{i}.png"] = np.clip(base + rng.integers(0, 40, size=(SIZE, SIZE, 3)), 0, 255).astype(
            np.uint8
        )
    return out


def _expected(images):
    """Mean image, channel means, population covariance and its eigen-decomposition, with numpy."""
    stack = np.stack(list(images.values())).astype(np.float64)               # N x H x W x 3
    mean_image = stack.mean(axis=0).transpose(2, 0, 1)
    pixels = stack.reshape(-1, 3)
    cov = np.cov(pixels, rowvar=False, bias=True)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1], vectors[:, ::-1]
    for i in range(3):                                 # documented sign: largest-magnitude component positive
        if vectors[np.abs(vectors[:, i]).argmax(), i] < 0:
            vectors[:, i] *= -1
    return mean_image, pixels.mean(axis=0), cov, values, vectors


def _check(stats, images):
    mean_image, channel_mean, cov, values, vectors = _expected(images)
    assert stats.images == len(images)
    assert stats.pixels == len(images) * SIZE * SIZE
    np.testing.assert_allclose(stats.mean_image.numpy(), mean_image, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.channel_mean.numpy(), channel_mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(stats.covariance.numpy(), cov, rtol=1e-12, atol=1e-8)
    np.testing.assert_allclose(stats.eigenvalues.numpy(), values, rtol=1e-10)
    np.testing.assert_allclose(stats.eigenvectors.numpy(), vectors, atol=1e-10)
    assert values[0] > values[1] > values[2] > 0


def test_prepare_raw_store_stats_are_exact(tmp_path, data_write_images):
    images = _images()
    src = data_write_images(tmp_path / "train", images)
    result = prepare_store(src, tmp_path / "store", size=SIZE, fmt="raw", workers=1, chunk_size=4)
    assert result["complete"] and result["written"] == len(images) and result["skipped"] == []
    stats, payload = load_stats(tmp_path / "store" / "stats.pt")
    _check(stats, images)
    # the stats command recomputes from the stored pixels and agrees exactly
    again, path = compute_split_stats(tmp_path / "store", force=True)
    assert path == tmp_path / "store" / "stats.pt"
    _check(again, images)


def test_folder_stats_are_exact_and_cached(tmp_path, data_write_images):
    images = _images(seed=1, count=5)
    src = data_write_images(tmp_path / "train", images)
    listing = list_split(src).images()
    threads = torch.get_num_threads()
    stats = folder_stats(listing, SIZE, workers=1)
    assert torch.get_num_threads() == threads                      # computed in this process: no side effect
    _check(stats, images)
    cache = src / f".twogpu-alexnet-stats-{SIZE}.pt"
    assert cache.exists()
    cached, payload = load_stats(cache)
    assert torch.equal(cached.mean_image, stats.mean_image) and payload["fingerprint"]
    # a changed file list is noticed (stale cache is recomputed)
    extra = {"a/zzz.png": np.full((SIZE, SIZE, 3), 7, np.uint8)}
    data_write_images(src, extra)
    fresh = folder_stats(list_split(src).images(), SIZE, workers=1)
    _check(fresh, {**images, **extra})



def test_replaced_image_under_the_same_name_makes_the_cache_stale(tmp_path, data_write_images):
    images = _images(seed=3, count=4)
    src = data_write_images(tmp_path / "train", images)
    first = folder_stats(list_split(src).images(), SIZE, workers=1)
    _check(first, images)
    name = "a/img0.png"
    stamp = (src / name).stat()
    replaced = {name: np.full((SIZE, SIZE, 3), 9, np.uint8)}
    data_write_images(src, replaced)
    os.utime(src / name, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))   # a later time, whatever the clock
    again = folder_stats(list_split(src).images(), SIZE, workers=1)
    _check(again, {**images, **replaced})

def test_parallel_chunks_give_the_same_exact_sums(tmp_path, data_write_images):
    images = _images(seed=2, count=7)
    src = data_write_images(tmp_path / "train", images)
    one = prepare_store(src, tmp_path / "s1", size=SIZE, fmt="raw", workers=1, chunk_size=7)
    two = prepare_store(src, tmp_path / "s2", size=SIZE, fmt="raw", workers=2, chunk_size=2)
    a, b = load_stats(tmp_path / "s1" / "stats.pt")[0], load_stats(tmp_path / "s2" / "stats.pt")[0]
    assert torch.equal(a.mean_image, b.mean_image) and torch.equal(a.covariance, b.covariance)
    assert one["written"] == two["written"] == 7


def test_jpeg_store_stats_are_those_of_the_stored_pixels(tmp_path, data_write_images):
    images = _images(seed=3, count=4)
    src = data_write_images(tmp_path / "train", images)
    prepare_store(src, tmp_path / "store", size=SIZE, fmt="jpeg", quality=95, workers=1)
    from twogpu_alexnet.data.split import StoreSource

    reader = StoreSource(tmp_path / "store")
    acc = StatsAccumulator(SIZE)
    for i in range(len(reader)):
        acc.add(reader.image(i))
    direct = acc.finish()
    stored = reader.stats()
    assert torch.equal(direct.mean_image, stored.mean_image)
    assert torch.allclose(direct.eigenvalues, stored.eigenvalues, rtol=1e-12)
    # and close to the lossless numbers (JPEG tolerance)
    mean_image, channel_mean, *_ = _expected(images)
    assert np.abs(stored.channel_mean.numpy() - channel_mean).max() < 2.0


def test_open_split_picks_up_train_stats_for_both_splits(tmp_path, data_write_images):
    images = _images(seed=4, count=4)
    root = tmp_path / "data"
    data_write_images(root / "train", images)
    data_write_images(
        root / "val", {"a/v.png": np.full((SIZE, SIZE, 3), 9, np.uint8), "b/w.png": np.zeros((SIZE, SIZE, 3), np.uint8)}
    )
    prepare_store(root / "train", tmp_path / "store" / "train", size=SIZE, fmt="raw", workers=1)
    prepare_store(root / "val", tmp_path / "store" / "val", size=SIZE, fmt="raw", workers=1)
    for source, where in (("store", tmp_path / "store"), ("imagefolder", root)):
        val = open_split(source, where, "val", DataOptions(input_size=SIZE, color_noise="none"))
        _check(val.stats, images)
        assert val.classes == ["a", "b"]


def test_eigen_convention():
    cov = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 1.0]], dtype=torch.float64)
    values, vectors = eigen_rgb(cov)
    assert values[0] > values[1] > values[2]
    assert torch.allclose(cov @ vectors, vectors * values, atol=1e-12)
    assert torch.allclose(vectors.T @ vectors, torch.eye(3, dtype=torch.float64), atol=1e-12)
    biggest = vectors.abs().argmax(dim=0)
    assert (vectors[biggest, torch.arange(3)] > 0).all()


def test_stats_in_a_worker_pool_equal_those_in_process_and_leave_out_broken_files(tmp_path, data_write_images):
    images = _images(seed=5, count=9)
    src = data_write_images(tmp_path / "train", {**images, "a/broken.png": b"\x89PNG\r\n\x1a\n broken"})
    calls = []
    one = folder_stats(list_split(src).images(), SIZE, workers=1, force=True)
    two = folder_stats(list_split(src).images(), SIZE, workers=2, force=True, progress=lambda *a: calls.append(a))
    _check(one, images)
    assert torch.equal(one.mean_image, two.mean_image) and torch.equal(one.covariance, two.covariance)
    # 10 files, 5 tasks of 2: counted as the workers go (read 20 times a second: a fast run may be one call)
    assert two.images == 9 and calls and calls == sorted(calls) and calls[-1] == (10, 10)
    prepare_store(src, tmp_path / "store", size=SIZE, fmt="raw", workers=1)
    again, _ = compute_split_stats(tmp_path / "store", force=True, workers=2)  # a store's pixels, in the pool
    assert torch.equal(again.mean_image, one.mean_image) and torch.equal(again.covariance, one.covariance)


def test_synthetic_stats_are_those_of_the_first_training_images():
    from twogpu_alexnet.data import synthetic

    val = open_split("synthetic", None, "val", DataOptions(input_size=32, seed=3, num_classes=6))
    images, _ = synthetic.synthetic_images(3, "train", range(1000), 32, 6)
    acc = StatsAccumulator(32)
    for img in images:                           # one at a time: the same sums as the batches
        acc.add(img)
    expected = acc.finish()
    assert val.stats.images == 1000 and torch.equal(val.stats.mean_image, expected.mean_image)
    assert torch.equal(val.stats.covariance, expected.covariance)


def test_the_stats_cache_goes_under_twogpu_alexnet_cache_when_set(tmp_path, data_write_images, monkeypatch):
    images = _images(seed=3, count=4)
    src = data_write_images(tmp_path / "train", images)
    monkeypatch.setenv("TWOGPU_ALEXNET_CACHE", str(tmp_path / "cache"))
    stats = folder_stats(list_split(src).images(), SIZE, workers=1)
    _check(stats, images)
    cached = list((tmp_path / "cache" / "stats").glob(f"stats-*-{SIZE}.pt"))
    assert len(cached) == 1 and not list(src.glob(".twogpu-alexnet-stats-*"))   # nothing written beside the data
    again, _ = load_stats(cached[0])
    assert torch.equal(again.mean_image, stats.mean_image)


class _Tiles:
    """128 constant 256 x 256 images (a source as source_stats reads them); image i has value i."""

    size = 256

    def __len__(self):
        return 128

    def image(self, i):
        return torch.full((3, 256, 256), i, dtype=torch.uint8)


def test_stats_progress_counts_batch_by_batch_not_chunk_by_chunk():
    """A chunk is 32 images here (128 over 4 tasks), a summing batch 16 (2**20 pixels): the count moves per batch,
    so the rate and ETA of `stats` are steady; with 2 workers every image is still counted once, in order."""
    from twogpu_alexnet.data.stats import source_stats

    seen = []
    stats = source_stats(_Tiles(), workers=1, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(16 * k, 128) for k in range(1, 9)]
    assert stats.images == 128 and stats.channel_mean.tolist() == [63.5] * 3
    seen.clear()
    both = source_stats(_Tiles(), workers=2, progress=lambda done, total: seen.append(done))
    assert seen == sorted(seen) and seen[-1] == 128 and both.images == 128
    assert torch.equal(both.mean_image, stats.mean_image)
