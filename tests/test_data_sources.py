"""Sources: the synthetic dataset is deterministic per seed and has colour-only and shape-only classes;
class folders follow sorted names; bad input gives one sentence naming the path and the fix."""
import pickle

import numpy as np
import pytest
import torch

from twogpu_alexnet.data import DataOptions, open_split
from twogpu_alexnet.data.split import compute_split_stats
from twogpu_alexnet.data.store import prepare_store
from twogpu_alexnet.data.synthetic import class_names, synthetic_image, synthetic_images
from twogpu_alexnet.errors import UserError


def test_synthetic_is_deterministic_per_seed():
    a, la = synthetic_images(5, "train", range(12), 32)
    b, lb = synthetic_images(5, "train", range(12), 32)
    assert torch.equal(a, b) and torch.equal(la, lb)
    single, label = synthetic_image(5, "train", 7, 32)
    assert torch.equal(single, a[7]) and label == int(la[7])           # independent of the batch it is made in
    c, _ = synthetic_images(6, "train", range(12), 32)
    v, _ = synthetic_images(5, "val", range(12), 32)
    assert not torch.equal(a, c) and not torch.equal(a, v)
    assert la.tolist() == [i % 10 for i in range(12)]
    big, _ = synthetic_image(5, "train", 3, 256)
    assert big.shape == (3, 256, 256) and big.dtype == torch.uint8
    s1 = open_split("synthetic", split="train", options=DataOptions(input_size=32, seed=5, images=40))
    s2 = open_split("synthetic", split="train", options=DataOptions(input_size=32, seed=5, images=40))
    assert torch.equal(s1.dataset[(3, 2, 0)][0], s2.dataset[(3, 2, 0)][0])
    assert torch.equal(s1.stats.mean_image, s2.stats.mean_image)


def test_synthetic_classes_differ_only_in_colour_or_only_in_shape():
    names = class_names(10)
    assert names == sorted(names) and names[0].startswith("00-colour") and names[5].startswith("05-shape")
    images, labels = synthetic_images(0, "train", range(400), 32)
    x = images.double()
    mean_colour = x.mean(dim=(2, 3)) - x.mean(dim=(1, 2, 3)).unsqueeze(1)      # colour cast per image
    # colour classes: the cast identifies the class (class means far apart compared with the spread)
    centres = torch.stack([mean_colour[labels == c].mean(0) for c in range(5)])
    spread = max(mean_colour[labels == c].std(0).norm().item() for c in range(5))
    gaps = torch.cdist(centres, centres) + torch.eye(5) * 1e9
    assert gaps.min() > 4 * spread
    # shape classes: the cast carries no class information (same distribution for every class)
    shape_centres = torch.stack([mean_colour[labels == c].mean(0) for c in range(5, 10)])
    assert (shape_centres.norm(dim=1) < 25).all()
    # shape classes differ in colour-independent structure: stripes along x or y, and every class is
    # its own mirror image (a horizontal flip, used in training, must not turn one class into another)
    lum = x.mean(dim=1)
    gx, gy = lum[:, 1:-1, 2:] - lum[:, 1:-1, :-2], lum[:, 2:, 1:-1] - lum[:, :-2, 1:-1]     # central differences
    energy = (gx ** 2 + gy ** 2).sum((1, 2))
    along_x = (gx ** 2).sum((1, 2)) / energy
    skew = (gx * gy).sum((1, 2)) / energy                   # changes sign under a horizontal flip
    assert along_x[labels == 5].min() > 0.6 and along_x[labels == 6].max() < 0.4    # vertical / horizontal stripes
    for c in range(10):
        assert abs(skew[labels == c].mean()) < 0.03, c
    # colour classes share one luminance structure (isotropic blobs, same contrast): only the colour differs
    contrast = lum.std(dim=(1, 2))
    for c in range(5):
        assert abs(along_x[labels == c].mean() - 0.5) < 0.03, c
    colour_energy = torch.stack([energy[labels == c].mean() for c in range(5)])
    colour_contrast = torch.stack([contrast[labels == c].mean() for c in range(5)])
    assert colour_energy.max() / colour_energy.min() < 1.1 and colour_contrast.max() / colour_contrast.min() < 1.05
    assert torch.equal(synthetic_images(0, "train", range(400), 32)[0], images)      # and generation is repeatable


def test_class_indices_follow_sorted_folder_names(tmp_path, data_write_images):
    img = np.zeros((8, 8, 3))
    data_write_images(tmp_path / "train", {"n02/a.png": img, "n01/b.png": img, "n10/c.png": img})
    data_write_images(tmp_path / "test", {"n02/a.png": img, "n01/b.png": img, "n10/c.png": img})
    split = open_split("cifar10", tmp_path, "val", DataOptions(input_size=8))        # test/ serves as val
    assert split.classes == ["n01", "n02", "n10"]
    assert sorted(split.dataset.labels) == [0, 1, 2]


def test_bad_data_folders_are_one_sentence(tmp_path, data_write_images):
    with pytest.raises(UserError, match=f"{tmp_path / 'nowhere'} does not exist"):
        open_split("imagefolder", tmp_path / "nowhere", "train", DataOptions(input_size=8))
    with pytest.raises(UserError, match="has no train/ folder"):
        open_split("imagefolder", tmp_path, "train", DataOptions(input_size=8))
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="has no class subfolders"):
        open_split("imagefolder", tmp_path, "train", DataOptions(input_size=8))
    (tmp_path / "train" / "a").mkdir()
    with pytest.raises(UserError, match="no files in them"):
        open_split("imagefolder", tmp_path, "train", DataOptions(input_size=8))
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    for split in ("train", "val"):              # val too: its statistics come from train
        (tmp_path / "val" / "a").mkdir(parents=True, exist_ok=True)
        with pytest.raises(UserError, match=f"{tmp_path / 'train'} has no image files .*put the images in"):
            open_split("imagefolder", tmp_path, split, DataOptions(input_size=8))
    with pytest.raises(UserError, match=f"{tmp_path / 'train'} has no image files"):
        compute_split_stats(tmp_path / "train", size=8)
    img = np.zeros((8, 8, 3))
    data_write_images(tmp_path / "train", {"a/x.png": img, "b/y.png": img})
    data_write_images(tmp_path / "val", {"a/x.png": img, "c/y.png": img})
    with pytest.raises(
        UserError,
        match=r"class folders of .*train and .*val differ \(1 only in train \(first: b\), 1 only in val \(first: c\)\)",
    ):
        open_split("imagefolder", tmp_path, "val", DataOptions(input_size=8))
    with pytest.raises(UserError, match="data.source 'folders' is not one of"):
        open_split("folders", tmp_path, "train")
    with pytest.raises(UserError, match="needs data.root"):
        open_split("store", None, "train")


def test_store_made_with_other_settings_is_refused(tmp_path, data_write_images):
    img = np.zeros((40, 40, 3))
    for split in ("train", "val"):
        data_write_images(tmp_path / "src" / split, {"a/x.png": img, "b/y.png": img})
        prepare_store(tmp_path / "src" / split, tmp_path / "store" / split, size=32, workers=1)
    assert open_split("store", tmp_path / "store", "val", DataOptions(input_size=32)).classes == ["a", "b"]
    data_write_images(tmp_path / "src" / "other", {"a/x.png": img, "c/y.png": img})
    prepare_store(tmp_path / "src" / "other", tmp_path / "store" / "val2", size=32, workers=1)
    (tmp_path / "store" / "val").rename(tmp_path / "store" / "val1")
    (tmp_path / "store" / "val2").rename(tmp_path / "store" / "val")
    with pytest.raises(
        UserError,
        match=r"class folders of .*train and .*val differ \(1 only in train \(first: b\), 1 only in val \(first: c\)\)",
    ):
        open_split("store", tmp_path / "store", "val", DataOptions(input_size=32))
    with pytest.raises(
        UserError,
        match=r"store .*val holds 32x32 images but this input size needs 256x256; prepare the data "
              r"again with --size 256",
    ):
        open_split("store", tmp_path / "store", "val", DataOptions(input_size=224))
    with pytest.raises(UserError, match="not a prepared store"):
        open_split("store", tmp_path / "src", "train", DataOptions(input_size=32))


def _write_cifar_python(root, train, test, names):
    """torchvision's CIFAR-10 python layout: pickled dicts of N x 3072 uint8 rows (R, G, B planes)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    parts = np.array_split(np.arange(len(train[0])), 5)
    for k, rows in enumerate(parts, 1):
        batch = {
            "data": train[0][rows].transpose(0, 3, 1, 2).reshape(len(rows), -1),
            "labels": [train[1][i] for i in rows],
        }
        (folder / f"data_batch_{k}").write_bytes(pickle.dumps(batch))
    (folder / "test_batch").write_bytes(
        pickle.dumps({"data": test[0].transpose(0, 3, 1, 2).reshape(len(test[0]), -1), "labels": test[1]})
    )
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def test_cifar10_python_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    train = (rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), [i % 3 for i in range(10)])
    test = (rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), [2, 1, 0, 1])
    names = ["plane", "car", "bird"]
    _write_cifar_python(tmp_path, train, test, names)
    with pytest.raises(
        UserError, match=r"CIFAR-10 files under .* are unreadable"
    ):  # the files fail torchvision's md5 check
        open_split("cifar10", tmp_path, "train", DataOptions(input_size=32))
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    val = open_split("cifar10", tmp_path, "val", DataOptions(input_size=32, color_noise="none"))
    assert val.classes == names and val.dataset.labels == test[1]
    for i in range(4):
        assert torch.equal(val.dataset.image(i), torch.from_numpy(test[0][i]).permute(2, 0, 1))
    expected_mean = torch.from_numpy(train[0].astype(np.float64).mean(axis=0)).permute(
        2, 0, 1
    )  # train split, also for val
    assert torch.allclose(val.stats.mean_image, expected_mean, atol=1e-12) and val.stats.images == 10
