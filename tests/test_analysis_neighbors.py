"""Nearest training images in fc7 space (analysis/neighbors.py, `twogpu-alexnet neighbors`)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from twogpu_alexnet.analysis.neighbors import nearest
from twogpu_alexnet.cli import main
from twogpu_alexnet.errors import UserError


@pytest.fixture
def analysis_tiny_set(tmp_path):
    """A cifar-preset checkpoint, a 24-image training folder (2 classes, PNG) and query copies."""
    from twogpu_alexnet import build_model

    torch.manual_seed(0)
    model = build_model("cifar", mode="two-tower", devices=("cpu", "cpu"))
    ckpt = tmp_path / "last.pt"
    torch.save({"model": model.state_dict(), "preset": "cifar", "num_classes": 10, "epoch": 1}, ckpt)
    rng = np.random.default_rng(0)
    train = tmp_path / "train"
    for name in ("cats", "dogs"):
        (train / name).mkdir(parents=True)
        for i in range(12):
            # smooth-ish random images with a class tint, so they are all different
            base = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
            img = Image.fromarray(base).resize((32, 32), Image.BILINEAR)
            img.save(train / name / f"{i:02d}.png")
    queries = tmp_path / "queries"
    queries.mkdir()
    picks = ["cats/03.png", "dogs/07.png", "dogs/11.png"]
    for j, rel in enumerate(picks):
        shutil.copy(train / rel, queries / f"q{j}.png")
    # a slightly perturbed copy of cats/05: still nearest to its source
    arr = np.asarray(Image.open(train / "cats/05.png")).astype(np.int16)
    noisy = np.clip(arr + rng.integers(-2, 3, arr.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(queries / "q3.png")
    picks.append("cats/05.png")
    return ckpt, train, queries, picks


def test_nearest_is_exact_on_planted_vectors():
    g = torch.Generator().manual_seed(0)
    db = torch.randn(1000, 64, generator=g) * 30
    q = db[[17, 512, 999]].clone()
    q[2] += 0.01  # a near copy
    d, i = nearest(q, db, k=5, chunk=100)
    assert i[:, 0].tolist() == [17, 512, 999]
    assert d[0, 0].item() == 0.0 and d[1, 0].item() == 0.0
    assert d[2, 0].item() == pytest.approx(0.01 * 8, rel=1e-4)  # sqrt(64) * 0.01
    brute = (q.double()[:, None, :] - db.double()[None]).square().sum(dim=2).sqrt()  # direct, no matmul trick
    want = brute.topk(5, dim=1, largest=False)
    assert torch.equal(i, want.indices) and torch.allclose(d, want.values, atol=1e-9)
    assert (d[:, 1:] >= d[:, :-1]).all()


def test_neighbors_returns_the_planted_images(analysis_tiny_set, tmp_path, capsys):
    ckpt, train, queries, picks = analysis_tiny_set
    cache = tmp_path / "cache"
    args = ["neighbors", "--checkpoint", str(ckpt), "--data", str(train), "--queries",
            *[str(queries / f"q{j}.png") for j in range(4)], "--k", "3", "--out", str(tmp_path / "nn"),
            "--cache", str(cache), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["images"] == 24 and first["cached"] is False and first["k"] == 3
    assert first["feature_dim"] == 1024  # cifar fc7: 512 per tower
    for q, rel in zip(first["queries"], picks, strict=True):
        top = q["neighbors"]
        assert len(top) == 3
        assert os.path.relpath(top[0]["path"], train) == rel
        assert top[0]["class"] == rel.split("/")[0]
        assert top[0]["distance"] < 0.25 * top[1]["distance"]
        assert [n["distance"] for n in top] == sorted(n["distance"] for n in top)
    for q in first["queries"][:3]:  # exact copies: distance 0 up to float32 feature rounding
        assert q["neighbors"][0]["distance"] < 1e-3
    # the picture: 4 rows of query | gap | 3 neighbours; 128-px tiles, 4-px padding, 12-px gap
    img = np.asarray(Image.open(tmp_path / "nn" / "neighbors.png").convert("RGB"))
    assert img.shape == (4 * 132 + 4, (128 + 8) + 12 + 3 * 132 + 4, 3)
    # row 1's first neighbour is q1's own training image, enlarged x4 with nearest-neighbour pixels
    source = np.asarray(Image.open(train / picks[1]).convert("RGB"))
    y, x = 4 + 132, 136 + 12 + 4
    assert np.array_equal(img[y:y + 128, x:x + 128], source.repeat(4, axis=0).repeat(4, axis=1))
    assert len(list(cache.glob("fc7-*.pt"))) == 1

    # again: training features come from the cache, same answer
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["cached"] is True and second["queries"] == first["queries"]

    # a changed training folder makes a new cache entry
    shutil.copy(train / "cats/00.png", train / "dogs/99.png")
    assert main(args) == 0
    third = json.loads(capsys.readouterr().out)
    assert third["cached"] is False and third["images"] == 25
    assert len(list(cache.glob("fc7-*.pt"))) == 2


def test_neighbors_user_errors(analysis_tiny_set, tmp_path, capsys):
    ckpt, train, queries, _ = analysis_tiny_set
    base = ["neighbors", "--checkpoint", str(ckpt), "--data", str(train), "--out", str(tmp_path / "o"), "--no-cache"]
    assert main(base + ["--queries", str(tmp_path / "missing.jpg")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert main(base + ["--queries", str(tmp_path / "bad.jpg")]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert main(base + ["--queries", str(queries / "q0.png"), "--k", "0"]) == 2
    capsys.readouterr()
    assert main(base + ["--queries", str(queries)]) == 2
    assert "is a folder, not an image file" in capsys.readouterr().err
    with pytest.raises(UserError):
        nearest(torch.zeros(1, 4), torch.zeros(0, 4), k=2)


def test_preprocessing_matches_the_data_package_and_uses_the_carried_mean(analysis_tiny_set):
    from twogpu_alexnet.analysis.neighbors import _query
    from twogpu_alexnet.data import DataOptions, Stats, open_split
    from twogpu_alexnet.engine.inference import eval_split

    _, train, queries, _ = analysis_tiny_set
    # without carried statistics: exactly the data package's evaluation input for the training split
    split = open_split("imagefolder", train.parent, "train", DataOptions(input_size=32), train=False)
    index = split.dataset.source.files.index("cats/03.png")
    want = split.pipeline.finish(split.dataset[index][0][None])[0]
    _, got = _query(queries / "q0.png", eval_split(train, 32))  # q0 is a copy of cats/03.png
    assert torch.equal(got, want)
    # with the training statistics a checkpoint carries, those are used (here: mean 100, unit covariance)
    eye = torch.eye(3, dtype=torch.float64)
    carried = Stats(torch.full((3, 32, 32), 100.0, dtype=torch.float64), torch.full((3,), 100.0, dtype=torch.float64),
                    eye, torch.ones(3, dtype=torch.float64), eye, 50, 50 * 32 * 32)
    pairs = zip(Stats.from_dict(carried.to_dict()).to_dict().values(), carried.to_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs if isinstance(a, torch.Tensor))
    with_stats = eval_split(train, 32, stats=Stats.from_dict(carried.to_dict()))
    img, net_input = _query(queries / "q0.png", with_stats)
    assert torch.equal(with_stats.pipeline.stats.mean_image, carried.mean_image)
    scale = with_stats.pipeline.pixel_scale
    assert torch.allclose(net_input, (img.float() - 100.0) * scale, atol=1e-5)


def test_k_beyond_the_data_is_clamped_with_a_note(analysis_tiny_set, tmp_path, capsys):
    ckpt, train, queries, _ = analysis_tiny_set
    args = ["neighbors", "--checkpoint", str(ckpt), "--data", str(train), "--queries", str(queries / "q0.png"),
            "--k", "1000000000", "--out", str(tmp_path / "nn"), "--no-cache"]
    assert main(args + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["k"] == 24 and len(result["queries"][0]["neighbors"]) == 24
    assert "more than the 24 readable training images" in result["notes"][0]
    img = np.asarray(Image.open(tmp_path / "nn" / "neighbors.png").convert("RGB"))
    assert img.shape == (132 + 4, (128 + 8) + 12 + 24 * 132 + 4, 3)            # 24 tiles, no blank ones
    assert main(args) == 0
    assert "more than the 24" in capsys.readouterr().out


def test_a_dangling_link_in_the_data_is_skipped(analysis_tiny_set, tmp_path, capsys):
    ckpt, train, queries, _ = analysis_tiny_set
    data = tmp_path / "copy" / "train"
    shutil.copytree(train, data)
    (data / "cats" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    args = ["neighbors", "--checkpoint", str(ckpt), "--data", str(data), "--queries", str(queries / "q0.png"),
            "--k", "2", "--out", str(tmp_path / "nn"), "--cache", str(tmp_path / "cache"), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 24 and result["skipped"] <= 1          # skipped when read, or by the folder walk


def test_a_bad_device_is_one_sentence(analysis_tiny_set, tmp_path, capsys):
    ckpt, train, queries, _ = analysis_tiny_set
    args = ["neighbors", "--checkpoint", str(ckpt), "--data", str(train), "--queries", str(queries / "q0.png"),
            "--out", str(tmp_path / "nn"), "--no-cache", "--device", "bogus"]
    assert main(args) == 2
    assert "bogus" in capsys.readouterr().err


def test_neighbors_checks_its_folders_before_computing(analysis_tiny_set, tmp_path, capsys, monkeypatch):
    import twogpu_alexnet.analysis.neighbors as nb

    def no_features(*args, **kwargs):
        raise AssertionError("the training features were computed before the output folders were checked")

    monkeypatch.setattr(nb, "training_features", no_features)
    ckpt, train, queries, _ = analysis_tiny_set
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    base = ["neighbors", "--checkpoint", str(ckpt), "--data", str(train), "--queries", str(queries / "q0.png")]
    assert main(base + ["--out", str(blocker / "nn"), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write to folder") and "--out" in err
    assert main(base + ["--out", str(tmp_path / "nn"), "--cache", str(blocker / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write to folder") and "--no-cache" in err
