"""Loaders: batches are pure functions of (seed, epoch, index) -- the same with any number of workers, exact
on resume, partitioned across ranks -- and corrupt images are skipped and counted, never ending an epoch."""
import numpy as np
import pytest
import torch

from twogpu_alexnet.data import make_loader, open_split
from twogpu_alexnet.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _batches(loader, epoch, start=0):
    loader.set_epoch(epoch, start)
    return [(x.clone(), y.clone(), k) for x, y, k in loader]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) and k1 == k2
                                    for (x1, y1, k1), (x2, y2, k2) in zip(a, b))


@pytest.fixture(scope="module")
def synthetic_train():
    return open_split("synthetic", split="train", train=True, input_size=32, seed=3, synthetic_images=96)


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
        for x, y, _ in loader:
            seen.append(x)
    allx = torch.cat(seen)
    assert allx.shape[0] == 96
    assert torch.unique(allx.flatten(1), dim=0).shape[0] == 96              # no image twice, none missing


def test_eval_batches_are_uint8_views_finished_on_the_device():
    split = open_split("synthetic", split="val", train=False, input_size=32, views=10, synthetic_images=20)
    loader = make_loader(split, batch_size=8, shuffle=False, workers=0, drop_last=False)
    loader.set_epoch(0)
    batches = list(loader)
    assert [len(y) for _, y, _ in batches] == [8, 8, 4]
    x = batches[0][0]
    assert x.dtype == torch.uint8 and x.shape == (8, 10, 3, 32, 32)
    out = split.finish(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    img = split.dataset.image(0).float()
    expected = (img - split.stats.mean_image.float()) * split.pipeline.pixel_scale      # centre view = the image
    assert torch.allclose(out[0, 4], expected, atol=1e-4)
    assert 0.005 < split.pipeline.pixel_scale < 0.05                         # unit variance for 32x32 inputs


def test_corrupt_images_are_skipped_and_counted(tmp_path, data_write_images):
    rng = np.random.default_rng(0)
    files = {f"{c}/im{i}.png": rng.integers(0, 255, (12, 12, 3)) for c in "ab" for i in range(5)}
    data_write_images(tmp_path / "train", files)
    data_write_images(
        tmp_path / "val", {"a/v.png": rng.integers(0, 255, (12, 12, 3)), "b/w.png": rng.integers(0, 255, (12, 12, 3))}
    )
    split = open_split("imagefolder", tmp_path, "train", train=True, input_size=16, color_noise="paper")
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
    split = open_split("imagefolder", tmp_path, "val", train=False, input_size=8)
    for f in (tmp_path / "val").rglob("*.png"):
        f.write_bytes(b"garbage")
    loader = make_loader(split, batch_size=2, shuffle=False, workers=0, drop_last=False)
    (x, y, skipped), = _batches(loader, 0)
    assert skipped == 2 and x.shape == (0, 3, 8, 8) and y.shape == (0,)


def test_deferred_decoding_matches_decoding_in_workers(tmp_path, data_write_images):
    """decode_device: JPEGs decoded in batches by the loader (on "cuda" in real use; "cpu" here)."""
    rng = np.random.default_rng(1)
    data_write_images(
        tmp_path / "train", {f"{c}/{i}.jpg": rng.integers(0, 255, (20, 30, 3)) for c in "ab" for i in range(3)}
    )
    data_write_images(
        tmp_path / "val", {"a/v.jpg": rng.integers(0, 255, (20, 20, 3)), "b/w.jpg": rng.integers(0, 255, (20, 20, 3))}
    )
    plain = open_split("imagefolder", tmp_path, "train", train=True, input_size=16, seed=2)
    deferred = open_split("imagefolder", tmp_path, "train", train=True, input_size=16, seed=2, decode_device="cpu")
    a = _batches(make_loader(plain, batch_size=3, workers=0, seed=5), 1)
    b = _batches(make_loader(deferred, batch_size=3, workers=0, seed=5), 1)
    assert _same(a, b)


@pytest.mark.gpu
def test_gpu_decoding_matches_cpu(tmp_path, data_write_images):
    rng = np.random.default_rng(2)
    data_write_images(
        tmp_path / "train", {f"{c}/{i}.jpg": rng.integers(0, 255, (300, 400, 3)) for c in "ab" for i in range(3)}
    )
    data_write_images(
        tmp_path / "val",
        {"a/v.jpg": rng.integers(0, 255, (300, 300, 3)), "b/w.jpg": rng.integers(0, 255, (300, 300, 3))},
    )
    cpu = open_split("imagefolder", tmp_path, "val", train=False, input_size=224)
    gpu = open_split("imagefolder", tmp_path, "val", train=False, input_size=224, decode_device="cuda")
    (x1, y1, _), = _batches(make_loader(cpu, batch_size=4, shuffle=False, workers=0, drop_last=False), 0)
    (x2, y2, _), = _batches(make_loader(gpu, batch_size=4, shuffle=False, workers=0, drop_last=False), 0)
    assert x2.is_cuda and torch.equal(y1, y2.cpu())
    diff = (cpu.finish(x1) - gpu.finish(x2).cpu()).abs()
    assert diff.mean() < 3.0        # nvJPEG and libjpeg-turbo differ by a few grey levels at most
