"""The prepared store: pixels round-trip, odd image files become RGB, broken files are listed and skipped,
an interrupted prepare resumes without redoing or duplicating work, and user mistakes are one sentence."""
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from twogpu_alexnet.data.decode import resize_center_crop
from twogpu_alexnet.data.split import StoreSource
from twogpu_alexnet.data.store import prepare_store
from twogpu_alexnet.errors import UserError


def _smooth(h, w, seed=0):
    """A smooth colour image (JPEG reproduces it closely)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    a, b, c = rng.uniform(0.5, 2.0, 3)
    img = np.stack([120 + 80 * np.sin(a * 3 * x + b), 120 + 80 * np.cos(b * 3 * y), 60 + 100 * x * y * c], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_raw_store_round_trips_pixels_exactly(tmp_path, data_write_images):
    images = {f"c{i % 3}/im{i}.png": _smooth(24, 24, i) for i in range(6)}
    data_write_images(tmp_path / "src", images)
    prepare_store(tmp_path / "src", tmp_path / "store", size=24, fmt="raw", workers=1)
    reader = StoreSource(tmp_path / "store")
    assert len(reader) == 6 and reader.classes == ["c0", "c1", "c2"]
    paths = reader.source_paths()
    for i in range(len(reader)):
        original = torch.from_numpy(images[paths[i]]).permute(2, 0, 1)
        assert torch.equal(reader.image(i), original)
        assert reader.labels[i] == int(paths[i][1])
    # rows are stored in H, W, C order, so an image comes back in that memory order without a transposition
    assert reader.meta["layout"] == "hwc" and reader.image(0).movedim(0, -1).is_contiguous()
    shard = np.load(tmp_path / "store" / "shards" / "00000.data", mmap_mode="r")
    assert shard.shape[1:] == (24, 24, 3)


def test_jpeg_store_round_trips_within_jpeg_tolerance_and_resizes(tmp_path, data_write_images):
    images = {"a/wide.png": _smooth(30, 50, 1), "b/tall.png": _smooth(48, 20, 2), "b/square.png": _smooth(32, 32, 3)}
    data_write_images(tmp_path / "src", images)
    prepare_store(tmp_path / "src", tmp_path / "store", size=32, fmt="jpeg", quality=95, workers=1)
    reader = StoreSource(tmp_path / "store")
    for i, rel in enumerate(reader.source_paths()):
        expected = resize_center_crop(torch.from_numpy(images[rel]).permute(2, 0, 1), 32)
        got = reader.image(i)
        assert got.shape == (3, 32, 32)
        assert (got.float() - expected.float()).abs().mean() < 2.0
        assert (got.float() - expected.float()).abs().max() < 24


def test_shorter_side_to_size_then_centre_crop():
    img = torch.zeros(3, 20, 40, dtype=torch.uint8)
    img[:, :, 10:30] = 200                                        # the central 20x20 square is bright
    out = resize_center_crop(img, 10)
    assert out.shape == (3, 10, 10) and (out == 200).all()


def _encoded(image, fmt, **kw):
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_odd_images_become_rgb_and_broken_files_are_listed(tmp_path, data_write_images):
    rgb = _smooth(16, 16, 4)
    good_jpeg = _encoded(Image.fromarray(rgb), "JPEG", quality=95)
    palette = Image.fromarray(rgb).convert("P")
    files = {
        "a/gray.JPEG": Image.fromarray(rgb[..., 0]),                            # grayscale JPEG
        "a/cmyk.JPEG": Image.fromarray(rgb).convert("CMYK"),                      # CMYK JPEG
        "b/palette.png": palette,                                                 # palette PNG
        ("b/png_named.JPEG", "PNG"): Image.fromarray(rgb),                       # PNG behind a .JPEG name
        "b/rgba.png": Image.fromarray(rgb).convert("RGBA"),
        "a/truncated.JPEG": good_jpeg[: len(good_jpeg) // 2],
        "a/text.JPEG": b"this is not an image at all",
        "b/empty.jpg": b"",
        "b/readme.txt": b"notes",
    }
    data_write_images(tmp_path / "src", files)
    result = prepare_store(tmp_path / "src", tmp_path / "store", size=16, fmt="raw", workers=1)
    skipped = {item["path"].split("src/")[1]: item["reason"] for item in result["skipped"]}
    assert set(skipped) == {"a/truncated.JPEG", "a/text.JPEG", "b/empty.jpg", "b/readme.txt"}
    assert "truncated" in skipped["a/truncated.JPEG"]
    assert "not an image" in skipped["a/text.JPEG"]
    assert "empty" in skipped["b/empty.jpg"]
    assert "extension .txt" in skipped["b/readme.txt"]
    assert result["written"] == 5
    assert json.loads((tmp_path / "store" / "skipped.json").read_text()) == result["skipped"]
    reader = StoreSource(tmp_path / "store")
    by_name = {rel: reader.image(i) for i, rel in enumerate(reader.source_paths())}
    gray = by_name["a/gray.JPEG"]
    assert gray.shape == (3, 16, 16) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    original = torch.from_numpy(rgb).permute(2, 0, 1).int()
    assert (by_name["a/cmyk.JPEG"].int() - original).abs().float().mean() < 4
    assert torch.equal(by_name["b/png_named.JPEG"], original.to(torch.uint8))
    assert torch.equal(by_name["b/rgba.png"], original.to(torch.uint8))
    assert torch.equal(by_name["b/palette.png"], torch.from_numpy(np.array(palette.convert("RGB"))).permute(2, 0, 1))


def test_interrupted_prepare_resumes_without_redoing_or_duplicating(tmp_path, data_write_images):
    images = {f"c{i % 2}/im{i:02d}.png": _smooth(20, 20, i) for i in range(10)}
    images["c0/broken.png"] = b"\x89PNG\r\n\x1a\n broken"
    data_write_images(tmp_path / "src", images)
    store = tmp_path / "store"
    first = prepare_store(tmp_path / "src", store, size=20, fmt="jpeg", workers=1, chunk_size=3, max_chunks=2)
    assert not first["complete"] and first["written"] is None
    done = {p.name: p.stat().st_mtime_ns for p in (store / "shards").iterdir()}
    assert sorted(done) == ["00000.data", "00000.pt", "00000.stats.pt", "00001.data", "00001.pt", "00001.stats.pt"]
    with pytest.raises(UserError, match="incomplete"):
        StoreSource(store)
    (store / "shards" / "00002.data.tmp").write_bytes(b"half a chunk from a killed worker")
    second = prepare_store(tmp_path / "src", store, size=20, fmt="jpeg", workers=2)
    assert second["complete"] and second["reused"] == 6
    for name, mtime in done.items():                                     # earlier chunks untouched
        if not name.endswith(".stats.pt"):
            assert (store / "shards" / name).stat().st_mtime_ns == mtime
    assert not list((store / "shards").glob("*.tmp"))
    reader = StoreSource(store)
    assert len(reader) == 10 and len(set(reader.ids.tolist())) == 10
    assert sorted(reader.source_paths()) == sorted(k for k in images if "broken" not in k)
    assert [s["path"].split("src/")[1] for s in second["skipped"]] == ["c0/broken.png"]
    third = prepare_store(tmp_path / "src", store, size=20, fmt="jpeg", workers=1)
    assert third["reused"] == 11 and third["written"] == 10


def test_prepare_user_mistakes_are_one_sentence(tmp_path, data_write_images):
    with pytest.raises(UserError, match="does not exist"):
        prepare_store(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class subfolders"):
        prepare_store(tmp_path / "empty", tmp_path / "out")
    data_write_images(tmp_path / "src", {"a/x.png": _smooth(8, 8)})
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="cannot write to output folder .*afile"):
        prepare_store(tmp_path / "src", tmp_path / "afile" / "store", size=8)
    prepare_store(tmp_path / "src", tmp_path / "store", size=8, workers=1)
    with pytest.raises(UserError, match=r"store .*store was made with different settings: size 8 \(asked 16\)"):
        prepare_store(tmp_path / "src", tmp_path / "store", size=16, workers=1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "other.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and is not a store"):
        prepare_store(tmp_path / "src", tmp_path / "busy", size=8)


def test_unreadable_store_files_are_one_sentence(tmp_path, data_write_images):
    data_write_images(tmp_path / "src", {"a/x.png": _smooth(8, 8)})
    prepare_store(tmp_path / "src", tmp_path / "store", size=8, workers=1)
    (tmp_path / "store" / "index.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"index.pt is unreadable.*; delete .*store and run prepare again"):
        StoreSource(tmp_path / "store")
    (tmp_path / "store" / "store.json").write_text("{ not json")
    with pytest.raises(UserError, match=r"store.json is unreadable .*; delete .*store and run prepare again"):
        StoreSource(tmp_path / "store")


def _processes_with(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_killed_prepare_leaves_no_worker_behind_and_resumes(tmp_path, data_write_images):
    """SIGKILL of prepare (an OOM kill, `kill -9`): its pool workers exit too instead of waiting forever."""
    data_write_images(tmp_path / "src", {f"c{i % 2}/im{i}.png": _smooth(20, 20, i) for i in range(24)})
    marker = f"prepare-kill-test-{uuid.uuid4().hex}"
    script = (
        f"# {marker}\nimport os, signal\nfrom twogpu_alexnet.data.store import prepare_store\n"
        f"prepare_store({str(tmp_path / 'src')!r}, {str(tmp_path / 'store')!r}, size=20, workers=2, chunk_size=1,\n"
        "              progress=lambda done, total: done and os.kill(os.getpid(), signal.SIGKILL))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 20
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _processes_with(marker)
    for pid in left:                       # do not leak them even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert left == []
    done = len(list((tmp_path / "store" / "shards").glob("*[0-9].pt")))
    assert 1 <= done < 24  # 24 one-image chunks: the kill at the first one leaves most undone
    result = prepare_store(tmp_path / "src", tmp_path / "store", size=20, workers=1)
    assert result["complete"] and result["written"] == 24 and result["reused"] == done
    assert sorted(StoreSource(tmp_path / "store").ids.tolist()) == list(range(24))


def test_16_bit_images_are_stored_as_8_bit_in_both_formats(tmp_path, data_write_images):
    values = (np.arange(16 * 16).reshape(16, 16) * 256).astype(np.uint16)     # high byte = 0..255
    data_write_images(tmp_path / "src", {"a/deep.png": Image.fromarray(values), "b/plain.png": _smooth(16, 16)})
    expected = torch.from_numpy((values >> 8).astype(np.uint8))[None].expand(3, -1, -1)
    raw = prepare_store(tmp_path / "src", tmp_path / "raw", size=16, fmt="raw", workers=1)
    assert raw["written"] == 2 and raw["skipped"] == []
    reader = StoreSource(tmp_path / "raw")
    assert torch.equal(reader.image(reader.source_paths().index("a/deep.png")), expected)
    assert 0 < raw["stats"]["channel_mean"][0] < 255
    for _ in range(2):                                                   # a rerun finds the finished store
        jpeg = prepare_store(tmp_path / "src", tmp_path / "jpeg", size=16, fmt="jpeg", quality=95, workers=1)
        assert jpeg["written"] == 2


def test_odd_file_names_round_trip_and_line_breaks_are_refused(tmp_path, data_write_images):
    names = ["a/next\x85line.png", "a/sep\u2028.png", "b/[/x] [red]bold.png", "b/two\nlines.png"]
    data_write_images(tmp_path / "src", {n: _smooth(8, 8, i) for i, n in enumerate(names)})
    result = prepare_store(tmp_path / "src", tmp_path / "store", size=8, fmt="raw", workers=1)
    reader = StoreSource(tmp_path / "store")
    assert reader.source_paths() == names[:3] and len(reader) == 3
    assert [(Path(s["path"]).name, s["reason"]) for s in result["skipped"]] == [
        ("two\nlines.png", "the name contains a line break; rename it")]


def test_what_the_walk_skips_is_in_skipped_json(tmp_path, data_write_images):
    data_write_images(tmp_path / "src", {"a/x.png": _smooth(8, 8), "b/y.png": _smooth(8, 8, 1)})
    os.symlink("..", tmp_path / "src" / "a" / "loop")
    result = prepare_store(tmp_path / "src", tmp_path / "store", size=8, workers=1)
    assert result["written"] == 2
    saved = json.loads((tmp_path / "store" / "skipped.json").read_text())
    assert saved == result["skipped"] and len(saved) == 1 and saved[0]["path"].endswith("a/loop")


def test_images_above_the_pixel_limit_are_skipped(tmp_path, data_write_images, monkeypatch):
    data_write_images(tmp_path / "src", {"a/small.png": _smooth(8, 8), "a/big.png": _smooth(40, 40)})
    monkeypatch.setenv("TWOGPU_ALEXNET_MAX_PIXELS", "1000")
    result = prepare_store(tmp_path / "src", tmp_path / "store", size=8, workers=1)
    assert result["written"] == 1
    assert [s["reason"] for s in result["skipped"]] == [
        "40 x 40 = 1,600 pixels is above the limit of 1,000 (a decompression bomb?); if the image is real, raise "
        "the limit with TWOGPU_ALEXNET_MAX_PIXELS"]


def test_absurd_sizes_are_one_sentence(tmp_path, data_write_images):
    data_write_images(tmp_path / "src", {"a/x.png": _smooth(8, 8)})
    for size in (0, 7, 100_000, 8.5, True):
        with pytest.raises(UserError, match=rf"--size {size!r} is outside 8..4096"):
            prepare_store(tmp_path / "src", tmp_path / "other", size=size, workers=1)
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_an_error_in_the_progress_callback_stops_the_pool_at_once(tmp_path, data_write_images, monkeypatch):
    """The caller's loop over the pool's results raising (e.g. Ctrl-C in a progress bar) ends the pool there:
    the chunks not started are cancelled instead of running on in the background."""
    from twogpu_alexnet.data import store as store_module

    data_write_images(tmp_path / "src", {f"c{i % 2}/im{i:02d}.png": _smooth(16, 16, i) for i in range(24)})
    source_image = store_module._source_image

    def slow(path, size):                          # 0.1 s a chunk (the forked workers inherit it)
        time.sleep(0.1)
        return source_image(path, size)

    monkeypatch.setattr(store_module, "_source_image", slow)

    class Stop(Exception):
        pass

    def progress(done, total):
        if done:
            raise Stop

    with pytest.raises(Stop) as caught:
        prepare_store(tmp_path / "src", tmp_path / "store", size=16, workers=2, chunk_size=1, progress=progress)
    # the pool is shut down (waited for) before the error leaves prepare_store: what ran is all there is
    done = len(list((tmp_path / "store" / "shards").glob("[0-9][0-9][0-9][0-9][0-9].pt")))   # chunks done
    assert caught.value and 1 <= done <= 12, done   # the first, those running and the few already queued (not 24)



def test_prepare_counts_file_by_file_so_its_eta_holds_from_the_first_tenth(tmp_path, data_write_images, monkeypatch):
    """Workers count each file as they go, not a chunk at its end: with 2 workers and 4 chunks the count used to
    jump a quarter at a time, its first report at 25% with an ETA 3x the time left."""
    from rich.console import Console

    from twogpu_alexnet.data import store as store_module
    from twogpu_alexnet.engine.progress import Counter

    n, chunk = 200, 50
    data_write_images(tmp_path / "src", {f"c{i % 2}/im{i:03d}.png": _smooth(16, 16, i) for i in range(n)})
    source_image = store_module._source_image

    def slow(path, size):                           # the same cost for every file, load or not (workers inherit it)
        time.sleep(0.015)
        return source_image(path, size)

    monkeypatch.setattr(store_module, "_source_image", slow)
    counter, seen = Counter(Console(file=io.StringIO()), "prepare", unit="files"), []

    def progress(done, total):
        seen.append((done, time.perf_counter(), counter.numbers(done, total)[1]))   # the ETA the bar shows

    prepare_store(tmp_path / "src", tmp_path / "store", size=16, workers=2, chunk_size=chunk, progress=progress)
    end = time.perf_counter()
    counts = [done for done, _, _ in seen]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == n
    assert max(np.diff(counts)) <= chunk // 2, counts                 # not a chunk at a time
    early = [(done, eta, end - t) for done, t, eta in seen if 0.1 * n <= done <= 0.75 * n]
    assert early and early[0][0] <= 0.2 * n, counts
    for done, eta, left in early:
        assert 0.5 <= eta / left <= 2, (done, eta, left)
    one_process = []                                # workers=1: the chunks run here, each file reported at once
    prepare_store(tmp_path / "src", tmp_path / "here", size=16, workers=1, chunk_size=5, max_chunks=2,
                  progress=lambda done, total: one_process.append(done))
    assert one_process == list(range(11))


@pytest.mark.parametrize("error", [BrokenPipeError, KeyboardInterrupt])
def test_an_error_of_the_progress_bar_in_process_is_its_own_and_leaves_no_temporary_file(tmp_path, data_write_images,
                                                                                          error):
    """With one worker the files are counted inside the chunk's work: a broken pipe of the progress bar (``| head``)
    is not the store's write error, and Ctrl-C there leaves no temporary file."""
    data_write_images(tmp_path / "src", {f"c{i % 2}/im{i:02d}.png": _smooth(16, 16, i) for i in range(6)})

    def progress(done, total):
        if done:
            raise error

    with pytest.raises(error):
        prepare_store(tmp_path / "src", tmp_path / "store", size=16, workers=1, progress=progress)
    shards = tmp_path / "store" / "shards"
    assert not list(shards.glob("*.tmp")) and not list(shards.glob(".*"))
