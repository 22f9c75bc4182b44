"""A store checks itself when opened: store.json, the index and the shards are read together, and whatever was
edited, cut short or planted is one sentence ("run prepare again"), except a JPEG shard cut short, whose lost
images are skipped and counted. Caches (statistics, fc7 features) are validated and rebuilt."""
import json
import pickle

import numpy as np
import pytest
import torch

from twogpu_alexnet.cli import main
from twogpu_alexnet.data import DataOptions, make_loader, open_split
from twogpu_alexnet.data.decode import CorruptImage
from twogpu_alexnet.data.folders import list_split
from twogpu_alexnet.data.split import StoreSource, folder_stats
from twogpu_alexnet.data.stats import cache_path_for
from twogpu_alexnet.data.store import prepare_store
from twogpu_alexnet.errors import UserError

AGAIN = r"delete .* and run prepare again"


def _store(tmp_path, data_write_images, fmt="jpeg", classes=3, per_class=2, chunk_size=None, size=16):
    rng = np.random.default_rng(0)
    data_write_images(tmp_path / "src", {f"c{c}/{i}.png": rng.integers(0, 255, (20, 24, 3)) for c in range(classes)
                                         for i in range(per_class)})
    store = tmp_path / "store"
    prepare_store(tmp_path / "src", store, size=size, fmt=fmt, workers=1, chunk_size=chunk_size)
    return store


def _edit_json(store, **changes):
    meta = json.loads((store / "store.json").read_text())
    meta.update(changes)
    (store / "store.json").write_text(json.dumps(meta))


def _edit_index(store, **columns):
    index = torch.load(store / "index.pt", weights_only=True)
    index.update(columns)
    torch.save(index, store / "index.pt")


def test_a_class_list_cut_shorter_than_the_labels_is_refused(tmp_path, data_write_images):
    store = _store(tmp_path, data_write_images)
    _edit_json(store, classes=["c0", "c1"])
    with pytest.raises(UserError, match=r"labels from 0 to 2 but store.json lists 2 classes.*" + AGAIN):
        StoreSource(store)


def test_index_labels_out_of_range_are_refused(tmp_path, data_write_images):
    store = _store(tmp_path, data_write_images)
    labels = torch.load(store / "index.pt", weights_only=True)["label"].clone()
    labels[0] = 7
    _edit_index(store, label=labels)
    with pytest.raises(UserError, match=r"labels from 0 to 7 but store.json lists 3 classes"):
        StoreSource(store)


@pytest.mark.parametrize("stored,claimed", [("jpeg", "raw"), ("raw", "jpeg")])
def test_a_format_that_does_not_match_the_shards_is_refused(tmp_path, data_write_images, stored, claimed):
    store = _store(tmp_path, data_write_images, fmt=stored)
    _edit_json(store, format=claimed, layout="hwc")
    with pytest.raises(UserError, match=f"store.json says format {claimed} but shards/00000.data holds"):
        StoreSource(store)


def test_an_index_that_is_not_a_table_is_refused(tmp_path, data_write_images):
    store = _store(tmp_path, data_write_images)
    torch.save([1, 2, 3], store / "index.pt")
    with pytest.raises(UserError, match=r"index.pt is not a table with the columns .*" + AGAIN):
        StoreSource(store)
    torch.save({"shard": [0], "offset": 1}, store / "index.pt")
    with pytest.raises(UserError, match="index.pt is not a table"):
        StoreSource(store)


def test_raw_index_rows_beyond_the_shard_are_refused(tmp_path, data_write_images):
    store = _store(tmp_path, data_write_images, fmt="raw")
    offsets = torch.load(store / "index.pt", weights_only=True)["offset"].clone()
    offsets[-1] = 1_000_000
    _edit_index(store, offset=offsets)
    with pytest.raises(UserError, match="rows beyond the end of their shard"):
        StoreSource(store)


def test_a_raw_shard_cut_short_is_refused(tmp_path, data_write_images):
    store = _store(tmp_path, data_write_images, fmt="raw")
    shard = store / "shards" / "00000.data"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    with pytest.raises(UserError, match=r"00000.data is .* bytes where its \d+ rows need .*cut short.*" + AGAIN):
        StoreSource(store)


def test_a_raw_store_of_the_early_c_h_w_layout_is_refused(tmp_path, data_write_images):
    store = _store(tmp_path, data_write_images, fmt="raw")
    meta = json.loads((store / "store.json").read_text())
    del meta["layout"]
    (store / "store.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="C,H,W layout"):
        StoreSource(store)


def test_a_jpeg_shard_cut_short_loses_only_its_tail_and_the_loader_counts_it(tmp_path, data_write_images):
    store = _store(tmp_path, data_write_images, classes=2, per_class=4, chunk_size=4)   # two shards of 4
    whole = StoreSource(store)
    first = [whole.image(i) for i in range(len(whole))]
    index = torch.load(store / "index.pt", weights_only=True)
    shard = store / "shards" / "00001.data"
    keep = int(index["offset"][index["shard"] == 1][2])     # cut inside shard 1's third record: 2 records lost
    with open(shard, "r+b") as f:
        f.truncate(keep + 10)
    reader = StoreSource(store)
    assert reader.lost == 2
    lost = [i for i in range(len(reader)) if int(reader.shard[i]) == 1][2:]
    for i in range(len(reader)):
        if i in lost:
            with pytest.raises(CorruptImage, match="cut short"):
                reader.image(i)
        else:
            assert torch.equal(reader.image(i), first[i])
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "train").symlink_to(store)
    (tmp_path / "root" / "val").symlink_to(store)
    split = open_split("store", tmp_path / "root", "val", DataOptions(input_size=16))
    loader = make_loader(split, batch_size=3, shuffle=False, workers=0, drop_last=False)
    loader.set_epoch(0)
    batches = [(len(y), k) for _, y, k in loader]
    assert sum(k for _, k in batches) == 2 and sum(n for n, _ in batches) == 6


class Planted:
    """Not a tensor, list or number: torch's weights_only loader refuses it."""

    def __reduce__(self):
        return (print, ("this must not run",))


def test_a_pickle_payload_in_an_interrupted_stores_shard_index_is_one_sentence(tmp_path, data_write_images, capsys):
    rng = np.random.default_rng(0)
    data_write_images(tmp_path / "src", {f"c{c}/{i}.png": rng.integers(0, 255, (8, 8, 3)) for c in range(2)
                                         for i in range(2)})
    store = tmp_path / "store"
    result = prepare_store(tmp_path / "src", store, size=8, workers=1, chunk_size=2, max_chunks=1)
    assert not result["complete"]
    with open(store / "shards" / "00000.pt", "wb") as f:
        pickle.dump(Planted(), f)
    with pytest.raises(UserError, match=r"shards/00000.pt is unreadable or holds something other.*" + AGAIN):
        prepare_store(tmp_path / "src", store, size=8, workers=1, chunk_size=2)
    assert "this must not run" not in capsys.readouterr().out


def test_a_stats_file_of_another_store_is_refused(tmp_path, data_write_images):
    store = _store(tmp_path, data_write_images)
    payload = torch.load(store / "stats.pt", weights_only=True)
    torch.save({**payload, "fingerprint": "another"}, store / "stats.pt")
    with pytest.raises(UserError, match=r"not the statistics of this store's images; run .*stats --data .* --force"):
        StoreSource(store).stats()
    torch.save({**payload, "mean_image": torch.zeros(3, 4, 4)}, store / "stats.pt")
    with pytest.raises(UserError, match="stats.pt is unreadable; run"):
        StoreSource(store).stats()


def test_a_tampered_statistics_cache_is_rebuilt(tmp_path, data_write_images):
    rng = np.random.default_rng(0)
    data_write_images(tmp_path / "train", {f"c{c}/{i}.png": rng.integers(0, 255, (8, 8, 3)) for c in range(2)
                                           for i in range(2)})
    listing = list_split(tmp_path / "train").images()
    right = folder_stats(listing, 8, workers=1)
    path = cache_path_for(listing.root, 8)
    payload = torch.load(path, weights_only=True)
    for bad in ({**payload, "covariance": torch.zeros(2, 2)}, {**payload, "images": 0}, [1, 2]):
        torch.save(bad, path)
        again = folder_stats(listing, 8, workers=1)
        assert torch.equal(again.mean_image, right.mean_image) and torch.equal(again.covariance, right.covariance)
        assert torch.equal(torch.load(path, weights_only=True)["covariance"], right.covariance)  # rewritten


def test_verify_finds_a_changed_byte_and_passes_an_intact_store(tmp_path, data_write_images, capsys):
    store = _store(tmp_path, data_write_images)
    assert main(["prepare", "--verify", "--out", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 6 and out["files_checked"] == 6        # 3 shards, index.pt, paths.txt, stats.pt
    shard = store / "shards" / "00000.data"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF                                   # same size: only the checksum can tell
    shard.write_bytes(bytes(data))
    StoreSource(store)                                             # the cheap check at open passes
    assert main(["prepare", "--verify", "--out", str(store)]) == 2
    err = capsys.readouterr().err
    assert "shards/00000.data differs from what prepare wrote" in err and "run prepare again" in err
    assert err.count("\n") == 1
    # --data with --verify: prepares (nothing left to do) and verifies in one command
    assert main(["prepare", "--data", str(tmp_path / "src"), "--out", str(store), "--verify"]) == 2
    assert main(["prepare", "--out", str(store)]) == 2
    assert "needs --data" in capsys.readouterr().err


def test_store_errors_reach_the_cli_as_one_sentence(tmp_path, data_write_images, capsys):
    store = _store(tmp_path, data_write_images)
    _edit_json(store, classes=["c0", "c1"])
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "train").symlink_to(store)
    (tmp_path / "root" / "val").symlink_to(store)
    code = main(["train", "--set", "data.source=store", "--set", f"data.root={tmp_path / 'root'}",
                 "--set", "model.preset=cifar", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "lists 2 classes" in err and "Traceback" not in err


def test_a_feature_cache_with_labels_out_of_range_is_rebuilt(tmp_path, data_write_images, capsys):
    from twogpu_alexnet import build_model

    torch.manual_seed(0)
    ckpt = tmp_path / "last.pt"
    torch.save({"model": build_model("cifar", mode="two-tower", devices=("cpu", "cpu")).state_dict(),
                "preset": "cifar", "num_classes": 10, "epoch": 1}, ckpt)
    rng = np.random.default_rng(0)
    data_write_images(tmp_path / "train", {f"{c}/{i}.png": rng.integers(0, 255, (32, 32, 3)) for c in ("x", "y")
                                           for i in range(3)})
    args = ["neighbors", "--checkpoint", str(ckpt), "--data", str(tmp_path / "train"), "--queries",
            str(tmp_path / "train" / "x" / "0.png"), "--k", "2", "--out", str(tmp_path / "nn"),
            "--cache", str(tmp_path / "cache"), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    (cache,) = (tmp_path / "cache").glob("fc7-*.pt")
    entry = torch.load(cache, weights_only=True)
    torch.save({**entry, "labels": [7] * len(entry["labels"])}, cache)
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] is False and again["queries"] == first["queries"]
    assert torch.load(cache, weights_only=True)["labels"] == entry["labels"]          # rewritten
