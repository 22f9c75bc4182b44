"""The one folder walk: symbolic links are followed but each real folder is walked once, nothing can
hang or repeat, and everything left out is listed with a reason."""
import errno
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from twogpu_alexnet.data import folders
from twogpu_alexnet.data.folders import list_split
from twogpu_alexnet.errors import UserError

IMG = np.zeros((4, 4, 3), np.uint8)


def _split(root, data_write_images):
    return data_write_images(root, {"a/1.png": IMG, "a/sub/2.png": IMG, "b/3.png": IMG})


def _reasons(listing):
    return {Path(s["path"]).relative_to(listing.root).as_posix(): s["reason"] for s in listing.skipped}


def test_plain_split_lists_every_file_once(tmp_path, data_write_images):
    listing = list_split(_split(tmp_path / "d", data_write_images))
    assert listing.files == ["a/1.png", "a/sub/2.png", "b/3.png"] and listing.labels == [0, 0, 1]
    assert listing.skipped == ()


def test_link_to_dot_is_walked_once(tmp_path, data_write_images):
    root = _split(tmp_path / "d", data_write_images)
    os.symlink(".", root / "a" / "self")
    listing = list_split(root)
    assert listing.files == ["a/1.png", "a/sub/2.png", "b/3.png"]
    assert "already listed" in _reasons(listing)["a/self"]


def _list_in_child(root, queue):
    queue.put(list_split(root).files)


def test_link_to_a_parent_cannot_hang(tmp_path, data_write_images):
    root = _split(tmp_path / "d", data_write_images)
    os.symlink("..", root / "a" / "sub" / "up")                   # -> a
    os.symlink("..", root / "b" / "top")                          # -> the split folder
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_list_in_child, args=(root, queue))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("listing a folder with a link to its parent did not finish in 60 s")
    assert queue.get(timeout=5) == ["a/1.png", "a/sub/2.png", "b/3.png"]
    reasons = _reasons(list_split(root))
    assert set(reasons) == {"a/sub/up", "b/top"} and all("already listed" in r for r in reasons.values())


def test_class_folder_linked_to_another_is_listed_once(tmp_path, data_write_images):
    root = _split(tmp_path / "d", data_write_images)
    os.symlink("a", root / "c")
    listing = list_split(root)
    assert listing.classes == ["a", "b", "c"]
    assert listing.files == ["a/1.png", "a/sub/2.png", "b/3.png"] and listing.labels == [0, 0, 1]
    assert "same folder as another class" in _reasons(listing)["c"]


def test_broken_links_fifos_and_line_breaks_are_skipped_with_reasons(tmp_path, data_write_images):
    root = _split(tmp_path / "d", data_write_images)
    os.symlink("missing.png", root / "a" / "gone.png")
    os.mkfifo(root / "b" / "pipe.png")
    (root / "b" / "two\nlines.png").write_bytes(b"x")
    listing = list_split(root)
    assert listing.files == ["a/1.png", "a/sub/2.png", "b/3.png"]
    reasons = _reasons(listing)
    assert "broken link" in reasons["a/gone.png"]
    assert "not a regular file" in reasons["b/pipe.png"]
    assert "line break" in reasons["b/two\nlines.png"]
    assert listing.images().skipped == listing.skipped


def test_unreadable_class_folder_is_counted(tmp_path, data_write_images, monkeypatch):
    root = _split(tmp_path / "d", data_write_images)
    scandir = os.scandir

    def refuse_b(path):                       # the tests run as root, where chmod 000 does not stop reading
        if Path(path).name == "b":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(folders.os, "scandir", refuse_b)
    listing = list_split(root)
    assert listing.files == ["a/1.png", "a/sub/2.png"]
    assert _reasons(listing) == {"b": "unreadable folder (Permission denied); its files are not used"}


def test_only_skipped_files_is_one_sentence(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    os.symlink("nowhere.png", tmp_path / "d" / "a" / "x.png")
    with pytest.raises(UserError, match=r"no files in them \(1 skipped, first: .*x.png: a symbolic link to nothing"):
        list_split(tmp_path / "d")


def test_the_trainer_says_what_the_walk_skipped(tmp_path, data_write_images, notes):
    from twogpu_alexnet.engine.config import load_config
    from twogpu_alexnet.engine.train import train

    images = {f"{split}/{c}/{i}.png": np.full((32, 32, 3), 40 * i + 9 * k, np.uint8)
              for split in ("train", "val") for k, c in enumerate("ab") for i in range(4)}
    root = data_write_images(tmp_path / "data", images)
    os.symlink("missing.png", root / "train" / "a" / "gone.png")
    config = load_config(None, ["data.source=imagefolder", f"data.root='{root}'", "data.workers=0",
                                "train.batch_size=4", "train.epochs=1", "train.max_steps_per_epoch=1",
                                "analysis.color_stats=false"])
    assert train(config, tmp_path / "run", reporter=notes).exit_code == 0
    said = [line for line in notes.lines if "skipped" in line]
    assert said == [f"train: 1 entry of the data folder skipped (first: {root / 'train' / 'a' / 'gone.png'}: "
                    "a symbolic link to nothing (broken link))"], notes.lines
