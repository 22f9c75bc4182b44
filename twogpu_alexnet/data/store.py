"""The prepared store: the paper's one-time step (shorter side to S, centre crop) saved for fast reads.

One split per store; docs/data.md lists its files. ``shards/NNNNN.data`` holds one chunk's images: format
"jpeg" its re-encoded JPEGs back to back (an index entry is byte offset and length), format "raw" an .npy
array n x S x S x 3 uint8, pixels in the order decoders give them (an entry is the row, length 1).
``shards/NNNNN.pt`` is the chunk's index. A finished store's ``store.json`` records the SHA-256 of every
other file; ``store_check.py`` reads and checks the store when it is opened.

The sorted source file list is cut into fixed chunks, one pool task each; progress is counted file by file
as the workers go (pool.advance), not a chunk at a time, so its rate and ETA are steady. A chunk is written
under temporary names and renamed when done (its index last), so an interrupted ``prepare`` resumes with
the chunks not done and never stores an image twice. Statistics are summed from the pixels as stored
(after JPEG re-encoding), i.e. exactly what training reads.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import OrderedDict
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from .. import files
from ..errors import UserError
from .decode import CorruptImage, decode_jpeg, decode_rgb, encode_jpeg, read_bytes, resize_center_crop
from .folders import FolderListing, list_split
from .pool import CallerError, advance, carry, pool_map, worker_count
from .stats import CHUNK, Stats, StatsAccumulator, check_side, fingerprint_files, load_stats, save_stats
from .store_check import (
    FORMATS,
    STORE_KIND,
    STORE_VERSION,
    check_store,
    damaged,
    load_payload,
    read_json,
    read_meta,
    shard_path,
    store_checksums,
)

OPEN_FILES = 64      # file handles a reader keeps open (LRU), per process


# ----------------------------------------------------------------------------------- writing

def prepare_store(data, out, *, size: int = 256, fmt: str = "jpeg", quality: int = 90, workers: int | None = None,
                  chunk_size: int | None = None, max_chunks: int | None = None, progress=None) -> dict:
    """Run the one-time preprocessing of split folder ``data`` into store ``out`` (resumable).

    ``progress(done, total)`` is called at the start and as files are done (counts of source files, the
    files of chunks done by earlier runs included; from workers a few times a second). ``max_chunks``
    stops after that many new chunks (the store stays incomplete; call again to go on).
    Returns a summary: ``written``, ``skipped`` (list of {path, reason}), ``complete``, ``reused``
    (files already done by an earlier run), ``bytes``, ``bytes_per_image``, ``seconds``, ``store``.
    """
    settings = _check_settings(size, fmt, quality)
    listing = list_split(data, "--data folder")
    out = Path(out).expanduser()
    _check_output(out)
    workers, n = worker_count(workers), len(listing.files)
    meta = _load_or_start(out, listing, settings, chunk_size or max(1, min(CHUNK, math.ceil(n / (4 * workers)))))
    start, chunks, per_chunk = time.perf_counter(), range(meta["chunks"]), meta["chunk_size"]
    todo = [c for c in chunks if not _chunk_done(out, c)]
    done = n - sum(min(per_chunk, n - c * per_chunk) for c in todo)      # files of chunks done by earlier runs
    result = {"store": str(out), "files": n, "reused": done, "settings": settings}
    job = {"out": str(out), "root": str(listing.root), **settings, "chunk_size": per_chunk, "files": listing.files,
           "labels": listing.labels}
    counted = None
    if progress is not None:
        progress(done, n)

        @carry  # the bar's own errors (a broken pipe) reach the caller as they are, not as the store's
        def counted(files: int) -> None:
            nonlocal done
            done += files
            progress(done, n)
    try:
        # an error (in progress too) stops the pool
        with closing(pool_map(_prepare_chunk, job, todo[:max_chunks], workers, counted)) as results:
            for _ in results:
                pass
        result["complete"] = all(_chunk_done(out, c) for c in chunks)
        if result["complete"] and not meta.get("complete"):
            _finalize(out, meta, list(listing.skipped))
    except CallerError as carried:
        raise carried.args[0] from None
    except OSError as exc:  # disk full, store folder removed, ... (unreadable images are skipped, not raised)
        raise UserError(
            f"writing the store {out} failed ({exc.strerror or exc}); fix that and run the same command again "
            "to resume."
        ) from None
    except BrokenProcessPool:  # a worker killed (out of memory, a SIGBUS from a full disk under a mapped shard)
        raise UserError(
            f"a worker writing the store {out} died (out of memory, or the disk full?); fix that and run the same "
            "command again to resume."
        ) from None
    finally:
        _remove_temporary_files(out)      # the pool has stopped: a .tmp left now is a lost write
    if not result["complete"]:
        return {**result, "seconds": time.perf_counter() - start,
                **dict.fromkeys(("written", "skipped", "bytes", "bytes_per_image"))}
    return {**result, "seconds": time.perf_counter() - start, **_summary(out, meta)}


def _check_settings(size: int, fmt: str, quality: int) -> dict:
    if fmt not in FORMATS:
        raise UserError(f"store format {fmt!r} is not one of {', '.join(FORMATS)}; use --format jpeg or --format raw.")
    check_side(size)
    if fmt == "jpeg" and not 1 <= quality <= 100:
        raise UserError(f"--quality {quality} is outside 1..100; use 90-95 for the store.")
    return {"size": size, "format": fmt, "quality": quality if fmt == "jpeg" else None}


def _check_output(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "shards").mkdir(exist_ok=True)
        fd, probe = files.temporary_file(out / ".write-test")  # never through a link planted there
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"cannot write to output folder {out} ({exc.strerror or exc}); choose a folder you can write to with --out."
        ) from None


def _load_or_start(out: Path, listing: FolderListing, settings: dict, chunk_size: int) -> dict:
    """store.json for this run: the existing one when resuming (after checking it matches), else a new one."""
    fingerprint = fingerprint_files(listing.files, listing.labels, listing.root)
    if not (out / "store.json").exists():
        if any(p.name != "shards" for p in out.iterdir()) or any((out / "shards").iterdir()):
            raise UserError(
                f"output folder {out} is not empty and is not a store; choose an empty or new folder with --out."
            )
        meta = {"kind": STORE_KIND, "version": STORE_VERSION, **settings,
                "source": str(listing.root.resolve()), "classes": listing.classes, "files": len(listing.files),
                "chunk_size": chunk_size, "chunks": math.ceil(len(listing.files) / chunk_size),
                "fingerprint": fingerprint, "complete": False}
        if settings["format"] == "raw":
            meta["layout"] = "hwc"                    # rows as decoders give pixels: crops need no transposition
        _write(out / "store.json", meta)
        return meta
    meta = read_json(out / "store.json", out)
    if not isinstance(meta, dict) or meta.get("kind") != STORE_KIND or \
            (settings["format"] == "raw" and meta.get("layout") != "hwc"):
        raise damaged(out, "store.json is not this version's store description")
    old = {k: meta.get(k) for k in settings}
    if old != settings:
        diff = ", ".join(f"{k} {old[k]} (asked {settings[k]})" for k in settings if old[k] != settings[k])
        raise UserError(
            f"store {out} was made with different settings: {diff}; use the same --size/--format/--quality "
            "to resume it, or choose a new --out folder."
        )
    if meta.get("fingerprint") != fingerprint:
        raise UserError(
            f"store {out} was started from different files than {listing.root} has now (files added, removed "
            "or changed); delete the store folder or choose a new --out folder."
        )
    return meta


def _write(path: Path, obj) -> None:
    """Write ``obj`` (JSON for a .json path, else torch.save) through the one writer (whole or not at all)."""
    data = (json.dumps(obj, indent=1) + "\n") if path.suffix == ".json" else (lambda f: torch.save(obj, f))
    files.write_atomic(path, data, what=f"store file {path}", then=_AGAIN, error_folder=path.parent)


_AGAIN = "run the same prepare command again to finish the store"


def _chunk_done(out: Path, chunk: int) -> bool:
    return (out / "shards" / f"{chunk:05d}.pt").exists()


class _JpegShard:
    """A chunk's re-encoded JPEGs back to back; an image's index entry is (byte offset, length)."""

    def __init__(self, path: Path, count: int, job: dict):
        # open for the shard's life, closed by close()
        self.file, self.quality, self.position = open(path, "wb"), job["quality"], 0  # noqa: SIM115

    def add(self, img: torch.Tensor):
        """Store ``img``; returns the pixels as training will read them, and the index entry."""
        encoded = encode_jpeg(img, self.quality)
        self.file.write(encoded.numpy().tobytes())
        self.position += encoded.numel()
        return decode_jpeg(encoded), (self.position - encoded.numel(), encoded.numel())

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())      # on disk before the chunk's index marks it done
        self.file.close()


class _RawShard:
    """A chunk's images as one .npy array, count x S x S x 3 uint8; an image's index entry is (row, 1)."""

    def __init__(self, path: Path, count: int, job: dict):
        size = job["size"]
        shape = (count, size, size, 3)
        self.array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        if hasattr(os, "posix_fallocate"):  # a full disk fails here, not as SIGBUS on a page of the map
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
            except OSError as exc:
                if exc.errno in files.DISK_FULL:
                    raise
            finally:
                os.close(fd)
        self.rows = 0

    def add(self, img: torch.Tensor):
        self.array[self.rows] = img.movedim(0, -1).numpy()
        self.rows += 1
        return img, (self.rows - 1, 1)

    def close(self) -> None:
        self.array.flush()
        del self.array


SHARDS = {"jpeg": _JpegShard, "raw": _RawShard}


def _source_image(path: Path, size: int):
    """(image, None): the file decoded and brought to size x size; or (None, the reason it cannot be stored)."""
    if not path.name.lower().endswith(IMG_EXTENSIONS):
        return None, f"not an image file name (extension {path.suffix or 'none'})"
    try:
        return resize_center_crop(decode_rgb(read_bytes(path)), size), None
    except CorruptImage as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"


def _prepare_chunk(job: dict, chunk: int) -> int:
    """Store chunk ``chunk`` of ``job`` (made by prepare_store) and its index; returns its count of source files."""
    shards, size = Path(job["out"]) / "shards", job["size"]
    ids = range(chunk * job["chunk_size"], min(len(job["files"]), (chunk + 1) * job["chunk_size"]))
    data_path = shards / f"{chunk:05d}.data"
    files.refuse_link(data_path, f"store file {data_path}")
    # left by a prepare killed while writing this chunk (also the fixed names of older versions)
    for old in [*shards.glob(f".{chunk:05d}.*.tmp"), *shards.glob(f"{chunk:05d}.*.tmp")]:
        old.unlink(missing_ok=True)
    tmp = None
    acc, rows, skipped = StatsAccumulator(size), [], []
    try:
        fd, tmp = files.temporary_file(data_path)  # an unpredictable name, made by this call
        os.close(fd)
        with closing(SHARDS[job["format"]](tmp, len(ids), job)) as shard:
            for i in ids:
                path = Path(job["root"]) / job["files"][i]
                img, reason = _source_image(path, size)
                if img is None:
                    skipped.append({"path": str(path), "reason": reason})
                else:
                    stored, (offset, length) = shard.add(img)
                    acc.add(stored)
                    rows.append((offset, length, job["labels"][i], i))
                advance()                       # one file done, for the progress of prepare_store
        os.replace(tmp, data_path)
    except BaseException as exc:  # no temporary file left, whatever stopped the chunk
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full or read-only disk: one sentence; the chunks finished before are kept
            raise files.write_error(exc, f"store file {data_path}", shards, _AGAIN) from None
        raise
    state = acc.state()      # exact sums; the mean-image sum fits int32 for chunks of up to 8M/255 images
    _write(shards / f"{chunk:05d}.stats.pt", {**state, "sum_image": state["sum_image"].to(torch.int32)})
    offsets, lengths, labels, kept = torch.tensor(rows, dtype=torch.int64).reshape(-1, 4).T.contiguous()
    _write(shards / f"{chunk:05d}.pt", {                     # written last: its presence marks the chunk done
        "chunk": chunk, "offsets": offsets, "lengths": lengths, "labels": labels, "ids": kept,
        "paths": [job["files"][i] for i in kept.tolist()], "skipped": skipped, "bytes": data_path.stat().st_size,
    })
    return len(ids)


def _finalize(out: Path, meta: dict, walk_skipped: list) -> None:
    """Join the chunk indexes, statistics and skipped lists (``walk_skipped``: what listing the folder left
    out); mark the store complete."""
    shards = out / "shards"
    parts = [load_payload(shards / f"{c:05d}.pt", out) for c in range(meta["chunks"])]
    index = {key: torch.cat([p[key + "s"] for p in parts]) for key in ("offset", "length", "label", "id")}
    index["shard"] = torch.cat([torch.full((len(p["labels"]),), p["chunk"], dtype=torch.int32) for p in parts])
    _write(out / "index.pt", index)
    files.write_atomic(out / "paths.txt", "".join(rel + "\n" for part in parts for rel in part["paths"])
                       .encode("utf-8", errors="surrogateescape"), then=_AGAIN)
    skipped = walk_skipped + [s for p in parts for s in p["skipped"]]
    _write(out / "skipped.json", skipped)
    acc = StatsAccumulator(meta["size"])
    for c in range(meta["chunks"]):
        acc.merge(StatsAccumulator.from_state(load_payload(shards / f"{c:05d}.stats.pt", out)))
    if acc.images:
        save_stats(acc.finish(), out / "stats.pt", {"source": "store", "fingerprint": meta["fingerprint"]})
    meta.update(complete=True, written=acc.images, skipped=len(skipped), bytes=sum(int(p["bytes"]) for p in parts),
                shard_bytes=[shard_path(out, c).stat().st_size for c in range(meta["chunks"])],
                sha256=store_checksums(out, meta["chunks"]))
    _write(out / "store.json", meta)
    for c in range(meta["chunks"]):                   # the sums are in stats.pt now
        (shards / f"{c:05d}.stats.pt").unlink(missing_ok=True)


def _summary(out: Path, meta: dict) -> dict:
    """written, skipped, bytes, bytes_per_image and the statistics summary of a finished store."""
    written, total_bytes = meta["written"], meta["bytes"]
    stats_path = out / "stats.pt"
    return {"written": written, "skipped": read_json(out / "skipped.json", out), "bytes": total_bytes,
            "bytes_per_image": total_bytes / written if written else None,
            "stats": load_stats(stats_path)[0].summary() if stats_path.exists() else None}


# ----------------------------------------------------------------------------------- reading

def read_store_meta(path) -> dict:
    """store.json of a finished store, checked (store_check.read_meta), or a UserError saying what to run."""
    return read_meta(path)


def store_stats(path) -> Stats:
    """The statistics of store ``path`` (its stats.pt), or a UserError saying how to compute them.

    A stats.pt that is unreadable, or not the one of this store's images (another fingerprint or size), is
    refused with the command that computes it again.
    """
    path = Path(path).expanduser()
    again = f"run `twogpu-alexnet stats --data {path} --force` to compute it again"
    if not (path / "stats.pt").exists():
        raise UserError(f"store {path} has no stats.pt; run `twogpu-alexnet stats --data {path}` to compute it.")
    meta = read_meta(path)
    try:
        stats, payload = load_stats(path / "stats.pt")
    except UserError:
        raise UserError(f"{path / 'stats.pt'} is unreadable; {again}.") from None
    if payload.get("fingerprint") != meta.get("fingerprint") or stats.size != meta["size"]:
        raise UserError(f"{path / 'stats.pt'} is not the statistics of this store's images; {again}.")
    return stats


class StoreReader:
    """Random access to a finished store's images (uint8 3 x S x S) and labels; picklable for workers.

    Opening checks the store (store_check.check_store): a damaged one is one sentence. Records of a JPEG
    shard cut short (``lost``) raise CorruptImage when read, so the loader skips and counts them.
    """

    def __init__(self, path):
        self.path = Path(path).expanduser()
        checked = check_store(self.path)
        self.meta = checked.meta
        self.shard, self.offset, self.length, self.ids = checked.shard, checked.offset, checked.length, checked.id
        self.labels = checked.label.tolist()
        self.lost = checked.lost
        self.classes: list[str] = self.meta["classes"]
        self.size: int = self.meta["size"]
        self.format: str = self.meta["format"]
        self._handles: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        return state

    def __del__(self):
        for handle in getattr(self, "_handles", {}).values():
            if isinstance(handle, int):
                os.close(handle)

    def _handle(self, shard: int):
        handle = self._handles.get(shard)
        if handle is None:
            path = shard_path(self.path, shard)
            handle = np.load(path, mmap_mode="r") if self.format == "raw" else os.open(path, os.O_RDONLY)
            self._handles[shard] = handle
            if len(self._handles) > OPEN_FILES:
                _, old = self._handles.popitem(last=False)
                if isinstance(old, int):
                    os.close(old)
        else:
            self._handles.move_to_end(shard)
        return handle

    def encoded(self, i: int) -> torch.Tensor:
        """The stored JPEG bytes of image ``i`` (format "jpeg" only); CorruptImage if its shard was cut short."""
        shard, offset, length = int(self.shard[i]), int(self.offset[i]), int(self.length[i])
        data = os.pread(self._handle(shard), length, offset)
        if len(data) < length:
            raise CorruptImage(f"store record {i} lies past the end of shards/{shard:05d}.data (the shard was cut "
                               "short)")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as stored: uint8, 3 x S x S."""
        if self.format == "raw":
            row = torch.from_numpy(np.array(self._handle(int(self.shard[i]))[int(self.offset[i])]))
            return row.movedim(-1, 0)
        try:
            return decode_jpeg(self.encoded(i))
        except CorruptImage as exc:
            raise CorruptImage(f"store record {i} does not decode ({exc})") from None

    def stats(self) -> Stats:
        return store_stats(self.path)

    def source_paths(self) -> list[str]:
        """Source path (relative to the prepared folder) of every stored image, in store order.

        One path a line, split on "\\n" only (names with a line break are never stored: the folder walk
        skips them); ``splitlines`` would also split names holding \\x85 or \\u2028.
        """
        try:
            text = (self.path / "paths.txt").read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            raise damaged(self.path, "paths.txt is missing or unreadable") from None
        paths = text.split("\n")[:-1]
        if len(paths) != len(self):
            raise damaged(self.path, f"paths.txt lists {len(paths):,} images, the index {len(self):,}")
        return paths


def _remove_temporary_files(out: Path) -> None:
    """Remove the temporary files of writes that did not finish (call only when no worker is writing)."""
    for folder in (out, out / "shards"):
        for pattern in ("*.tmp", ".*.tmp"):
            for tmp in folder.glob(pattern):
                tmp.unlink(missing_ok=True)
