"""Loaders: batches are pure functions of (seed, epoch, index) -- the same with any number of workers, exact
on resume, partitioned across ranks -- and corrupt images are skipped and counted, never ending an epoch."""
import os

import numpy as np
import pytest
import torch

from twogpu_alexnet.data import DataOptions, make_loader, open_split
from twogpu_alexnet.data.loader import check_shared_memory
from twogpu_alexnet.errors import UserError


def _batches(loader, epoch, start=0):
    loader.set_epoch(epoch, start)
    return [(x.clone(), y.clone(), k) for x, y, k in loader]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) and k1 == k2
                                    for (x1, y1, k1), (x2, y2, k2) in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def synthetic_train():
    return open_split("synthetic", split="train", options=DataOptions(input_size=32, seed=3, images=96))


def test_batches_do_not_depend_on_workers(synthetic_train):
    inline = make_loader(synthetic_train, batch_size=16, workers=0, seed=7)
    pooled = make_loader(synthetic_train, batch_size=16, workers=2, seed=7)
    assert len(inline) == len(pooled) == 6
    a, b = _batches(inline, 1), _batches(pooled, 1)
    assert _same(a, b)
    x, y, skipped = a[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64 and skipped == 0
    assert _same(_batches(pooled, 2), _batches(inline, 2))                  # persistent workers see the new epoch


def test_resume_reproduces_the_rest_of_the_epoch(synthetic_train):
    loader = make_loader(synthetic_train, batch_size=16, workers=0, seed=7)
    full = _batches(loader, 4)
    assert _same(_batches(loader, 4, start=3), full[3:])
    other = _batches(loader, 5)
    assert not torch.equal(full[0][1], other[0][1])                         # new order each epoch
    labels = torch.cat([y for _, y, _ in full])
    assert sorted(labels.tolist()) == sorted(synthetic_train.dataset.labels)   # every image once (96 = 6 x 16)
    with pytest.raises(UserError, match="start_batch"):
        loader.set_epoch(0, 99)


def test_distributed_ranks_partition_the_epoch(synthetic_train):
    seen = []
    for rank in range(2):
        loader = make_loader(
            synthetic_train, batch_size=8, workers=0, seed=1, distributed=True, rank=rank, world_size=2
        )
        assert len(loader) == 6
        loader.set_epoch(0)
        for x, _y, _ in loader:
            seen.append(x)
    allx = torch.cat(seen)
    assert allx.shape[0] == 96
    assert torch.unique(allx.flatten(1), dim=0).shape[0] == 96              # no image twice, none missing


def test_eval_batches_are_finished_on_the_device_or_left_uint8():
    split = open_split("synthetic", split="val", options=DataOptions(input_size=32, images=20), views=10)
    raw = make_loader(split, batch_size=8, shuffle=False, workers=0, drop_last=False, finish=False)
    raw.set_epoch(0)
    batches = list(raw)
    assert [len(y) for _, y, _ in batches] == [8, 8, 4]
    x = batches[0][0]
    assert x.dtype == torch.uint8 and x.shape == (8, 10, 3, 32, 32)
    finished = make_loader(split, batch_size=8, shuffle=False, workers=0, drop_last=False)
    finished.set_epoch(0)
    out = next(iter(finished))[0]
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.equal(out, split.pipeline.finish(x))
    img = split.dataset.image(0).float()
    expected = (img - split.stats.mean_image.float()) * split.pipeline.pixel_scale      # centre view = the image
    assert torch.allclose(out[0, 4], expected, atol=1e-4)
    assert 0.005 < split.pipeline.pixel_scale < 0.05                         # unit variance for 32x32 inputs


def test_workers_ship_uint8_through_shared_memory():
    """A worker's batch is uint8 (a quarter of float32's bytes) and already in shared memory (no extra copy)."""
    from torch.utils.data import DataLoader

    split = open_split("synthetic", split="train", options=DataOptions(input_size=32, seed=3, images=32))
    loader = make_loader(split, batch_size=8, workers=1, seed=0)
    collate = loader.dataloader.collate_fn
    keys = [(i, 0, i) for i in range(8)]
    images, params, labels, skipped, indices = collate([split.dataset[k] for k in keys])
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 32, 32) and params.shape == (8, 6)
    assert images.element_size() * images[0].numel() == 3 * 32 * 32              # bytes per image
    assert indices.tolist() == list(range(8)) and skipped == 0 and not images.is_shared()
    shared = DataLoader(split.dataset, batch_size=8, num_workers=1, collate_fn=collate,
                        sampler=[(i, 0, i) for i in range(8)])
    images2, *_ = next(iter(shared))
    assert images2.is_shared() and torch.equal(images2, images)


def test_crop_groups_share_a_crop_and_keep_exact_resume():
    options = DataOptions(input_size=32, seed=3, images=96, crop_group=8, color_noise="none")
    split = open_split("synthetic", split="train", options=options)
    loader = make_loader(split, batch_size=16, workers=0, seed=7)
    loader.set_epoch(2)
    params = []
    for raw in loader.dataloader:
        params.append(raw[1])
    params = torch.cat(params)                                              # epoch order: 96 x 6
    groups = params[:, :3].view(12, 8, 3)
    assert (groups == groups[:, :1]).all()                                  # one crop and reflection per group
    assert len({tuple(g[0].tolist()) for g in groups}) > 6                  # groups differ
    full = _batches(loader, 2)
    assert _same(_batches(loader, 2, start=3), full[3:])
    pooled = make_loader(split, batch_size=16, workers=2, seed=7)
    assert _same(_batches(pooled, 2), full)


def test_too_small_shared_memory_is_one_sentence(tmp_path):
    check_shared_memory(10**6, workers=0, prefetch=2, path=str(tmp_path))    # no workers: no shared memory
    with pytest.raises(UserError, match="shm-size"):
        check_shared_memory(10**15, workers=4, prefetch=2, path=str(tmp_path))


def test_corrupt_images_are_skipped_and_counted(tmp_path, data_write_images):
    rng = np.random.default_rng(0)
    files = {f"{c}/im{i}.png": rng.integers(0, 255, (12, 12, 3)) for c in "ab" for i in range(5)}
    data_write_images(tmp_path / "train", files)
    data_write_images(
        tmp_path / "val", {"a/v.png": rng.integers(0, 255, (12, 12, 3)), "b/w.png": rng.integers(0, 255, (12, 12, 3))}
    )
    split = open_split("imagefolder", tmp_path, "train", DataOptions(input_size=16, color_noise="paper"))
    # files that break after the split was opened (as on a flaky disk during training)
    (tmp_path / "train" / "a" / "im1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "train" / "b" / "im3.png").unlink()
    loader = make_loader(split, batch_size=4, workers=0, seed=0, drop_last=False)
    batches = _batches(loader, 0)
    assert sum(k for _, _, k in batches) == 2
    assert sum(len(y) for _, y, _ in batches) == 8
    assert all(x.shape[0] == len(y) for x, y, _ in batches)


def test_a_batch_of_only_corrupt_images_is_empty(tmp_path, data_write_images):
    data_write_images(tmp_path / "train", {"a/x.png": np.zeros((8, 8, 3)), "b/y.png": np.full((8, 8, 3), 90)})
    (tmp_path / "val").mkdir()
    data_write_images(tmp_path / "val", {"a/x.png": np.zeros((8, 8, 3)), "b/y.png": np.zeros((8, 8, 3))})
    split = open_split("imagefolder", tmp_path, "val", DataOptions(input_size=8))
    for f in (tmp_path / "val").rglob("*.png"):
        f.write_bytes(b"garbage")
    loader = make_loader(split, batch_size=2, shuffle=False, workers=0, drop_last=False)
    (x, y, skipped), = _batches(loader, 0)
    assert skipped == 2 and x.shape == (0, 3, 8, 8) and y.shape == (0,)


@pytest.mark.parametrize("input_size,train,views", [(32, True, 1), (32, False, 10), (16, False, 1), (224, True, 1),
                                                    (224, False, 10)])
def test_device_cache_gives_the_worker_batches(tmp_path, data_write_images, input_size, train, views):
    """data.cache: images decoded once into device memory ("cpu" here), cropped there: the same batches."""
    rng = np.random.default_rng(4)
    files = {f"{c}/{i}.png": rng.integers(0, 255, (20, 26, 3)) for c in "ab" for i in range(9)}
    data_write_images(tmp_path / "train", files)
    data_write_images(tmp_path / "val", {"a/v.png": files["a/0.png"], "b/w.png": files["b/0.png"]})
    (tmp_path / "train" / "b" / "3.png").write_bytes(b"not an image")         # skipped and counted by both
    split = open_split("imagefolder", tmp_path, "train", DataOptions(input_size=input_size, seed=5, crop_group=4),
                       train=train, views=views)
    workers = _batches(make_loader(split, batch_size=5, workers=0, seed=2, drop_last=False), 3)
    cached = _batches(make_loader(split, batch_size=5, workers=0, seed=2, drop_last=False, cache=True), 3)
    assert _same(workers, cached) and sum(k for _, _, k in cached) == 1
    resumed = make_loader(split, batch_size=5, workers=0, seed=2, drop_last=False, cache=True)
    assert _same(_batches(resumed, 3, start=2), cached[2:])


def test_trainer_loader_settings(synthetic_train):
    from twogpu_alexnet.engine.config import load_config
    from twogpu_alexnet.engine.distributed import DistContext
    from twogpu_alexnet.engine.train import make_data_loader

    ctx = DistContext()
    auto = make_data_loader(load_config(None, ["data.workers=-1"]), synthetic_train, 8, ctx, True, torch.device("cpu"))
    cores = os.cpu_count() or 1                             # CPU runs: 4 at most, a core left; GPU runs: cores - 2
    assert auto.dataloader.num_workers == min(4, max(1, cores - 1))
    with pytest.raises(UserError, match="data.cache=gpu"):
        make_data_loader(load_config(None, ["data.cache=gpu"]), synthetic_train, 8, ctx, True, torch.device("cpu"))
    with pytest.raises(UserError, match="data.workers"):
        load_config(None, ["data.workers=-2"])


@pytest.mark.gpu
@pytest.mark.parametrize("cache", [False, True])
def test_gpu_batches_equal_the_cpu_batches(synthetic_train, cache):
    """uint8 batches copied on a side stream (or cached on the GPU) and finished there: the CPU's numbers."""
    cpu = _batches(make_loader(synthetic_train, batch_size=16, workers=2, seed=7), 1)
    gpu = make_loader(synthetic_train, batch_size=16, workers=2, seed=7, device="cuda", cache=cache)
    got = _batches(gpu, 1)
    assert all(x.is_cuda for x, _, _ in got)
    assert _same(cpu, [(x.cpu(), y, k) for x, y, k in got])


@pytest.mark.parametrize("train,views", [(True, 1), (False, 10)])
def test_decoding_on_the_device_gives_the_worker_batches(tmp_path, data_jpeg_store, train, views):
    """data.decode=gpu: workers send a JPEG store's bytes, the loader decodes them on its device ("cpu" here)."""
    data_jpeg_store(32, per_class=6, seed=6)
    options = DataOptions(input_size=32, seed=1)
    cpu = open_split("store", tmp_path / "store", "train", options, train=train, views=views)
    gpu = open_split("store", tmp_path / "store", "train", DataOptions(input_size=32, seed=1, decode="gpu"),
                     train=train, views=views)
    a = _batches(make_loader(cpu, batch_size=5, workers=0, seed=3, drop_last=False), 2)
    b = _batches(make_loader(gpu, batch_size=5, workers=1, seed=3, drop_last=False), 2)
    assert _same(a, b)
    with pytest.raises(UserError, match="data.decode"):
        open_split("synthetic", None, "train", DataOptions(input_size=32, decode="gpu"))



def test_shared_memory_estimate_for_jpeg_batches(tmp_path, data_jpeg_store, monkeypatch):
    """data.decode=gpu sends JPEG bytes through /dev/shm, not uint8 views: the check counts the largest JPEG."""
    from collections import namedtuple

    from twogpu_alexnet.data import loader as loader_module

    data_jpeg_store(256, seed=8)
    views = open_split("store", tmp_path / "store", "train", DataOptions(input_size=224))
    jpegs = open_split("store", tmp_path / "store", "train", DataOptions(input_size=224, decode="gpu"))
    largest = int(jpegs.dataset.source.length.max())
    assert loader_module.sample_bytes(views) == 3 * 224 * 224
    assert loader_module.sample_bytes(jpegs) == largest < 3 * 224 * 224
    usage = namedtuple("usage", "total used free")
    free = 2 * 2 * 2 * 4 * largest * 2                   # twice what 2 workers x prefetch 2 of 4 JPEGs need
    monkeypatch.setattr(loader_module.shutil, "disk_usage", lambda path: usage(free, 0, free))
    monkeypatch.setattr(loader_module.os.path, "isdir", lambda path: True)
    make_loader(jpegs, batch_size=4, workers=2, seed=0)
    with pytest.raises(UserError, match="shm-size"):
        make_loader(views, batch_size=4, workers=2, seed=0)


@pytest.mark.gpu
def test_nvjpeg_decoding_is_close_to_the_cpu_decoder(tmp_path, data_jpeg_store):
    data_jpeg_store(256, shape=(300, 400), per_class=4, seed=7)
    cpu = open_split("store", tmp_path / "store", "train", DataOptions(input_size=224))
    gpu = open_split("store", tmp_path / "store", "train", DataOptions(input_size=224, decode="gpu"))
    a = _batches(make_loader(cpu, batch_size=4, workers=0, seed=3), 0)
    b = _batches(make_loader(gpu, batch_size=4, workers=1, seed=3, device="cuda"), 0)
    for (x1, y1, _), (x2, y2, _) in zip(a, b, strict=True):
        assert x2.is_cuda and torch.equal(y1, y2)
        assert (x1 - x2.cpu()).abs().mean() < 3.0        # nvJPEG and libjpeg-turbo differ by a few grey levels
