"""The prepared store: the paper's one-time step (shorter side to 256, centre crop) saved for fast reads.

Layout of ``STORE`` (one split; run ``prepare`` once per split)::

    STORE/store.json          settings, class names, counts; "complete": true once finished
    STORE/shards/NNNNN.data   format "jpeg": the chunk's re-encoded JPEGs back to back
                              format "raw":  a .npy array, n x 3 x S x S uint8 (memory-mapped)
    STORE/shards/NNNNN.pt     the chunk's index (offsets, lengths, labels, source ids), its skipped
                              files and its exact statistics sums; written last = the chunk is done
    STORE/index.pt            all chunks' indexes joined (written when complete)
    STORE/stats.pt            mean image + RGB PCA of the stored pixels (see stats.py)
    STORE/skipped.json        every file that was not stored, with the reason

The source file list (sorted, like the class indices) is cut into fixed chunks; each chunk is one
task for a process pool and is written to temporary names and renamed when finished, so an
interrupted ``prepare`` resumes with the chunks that are not done, and never stores an image twice.
Statistics are computed from the pixels as stored (after JPEG re-encoding), i.e. exactly what
training reads.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from ..errors import UserError
from .decode import CorruptImage, decode_rgb, read_bytes, resize_center_crop
from .folders import FolderListing, list_split
from .stats import Stats, StatsAccumulator, check_side, fingerprint_files, load_stats, save_stats

STORE_VERSION = 1
FORMATS = ("jpeg", "raw")
MAX_CHUNK = 1000
OPEN_FILES = 64      # file handles a reader keeps open (LRU), per process


# ----------------------------------------------------------------------------------- writing

def _settings(size: int, fmt: str, quality: int) -> dict:
    return {"size": size, "format": fmt, "quality": quality if fmt == "jpeg" else None}


def _check_output(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "shards").mkdir(exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"cannot write to output folder {out} ({exc.strerror or exc}); choose a folder you can write to with --out."
        ) from None


def _load_or_start(out: Path, listing: FolderListing, settings: dict, chunk_size: int) -> dict:
    """store.json for this run: the existing one when resuming (after checking it matches), else a new one."""
    meta_path = out / "store.json"
    fingerprint = fingerprint_files(listing.files, listing.labels, listing.root)
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            raise UserError(f"{meta_path} is unreadable; delete {out} and run prepare again.") from None
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
                "or changed); "
                "delete the store folder or choose a new --out folder."
            )
        return meta
    if any(p.name != "shards" for p in out.iterdir()) or any((out / "shards").iterdir()):
        raise UserError(
            f"output folder {out} is not empty and is not a store; choose an empty or new folder with --out."
        )
    meta = {
        "kind": "twogpu-alexnet store", "version": STORE_VERSION, **settings,
        "source": str(listing.root.resolve()), "classes": listing.classes, "files": len(listing.files),
        "chunk_size": chunk_size, "chunks": math.ceil(len(listing.files) / chunk_size),
        "fingerprint": fingerprint, "complete": False,
    }
    _write_json(meta_path, meta)
    return meta


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _chunk_done(out: Path, chunk: int) -> bool:
    return (out / "shards" / f"{chunk:05d}.pt").exists()


def init_pool_worker(parent: int) -> None:
    """Set up a process-pool worker of prepare or stats: one thread, and exit when process ``parent`` is gone."""
    torch.set_num_threads(1)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """End this pool worker when the prepare process is gone (killed): an orphaned worker would otherwise
    wait on the task queue forever, or race a resumed run on the same chunk's temporary files."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _prepare_chunk(task: dict) -> dict:
    """Decode, resize/crop and store one chunk; returns its summary. Runs in a pool worker."""
    out, chunk, root = Path(task["out"]), task["chunk"], Path(task["root"])
    size, fmt, quality = task["size"], task["format"], task["quality"]
    files, labels, ids = task["files"], task["labels"], task["ids"]
    data_path = out / "shards" / f"{chunk:05d}.data"
    tmp_data = data_path.with_name(data_path.name + ".tmp")
    offsets, lengths, kept_labels, kept_ids, skipped = [], [], [], [], []
    acc = StatsAccumulator(size)
    position = 0
    array = None
    if fmt == "raw":
        array = np.lib.format.open_memmap(tmp_data, mode="w+", dtype=np.uint8, shape=(len(files), 3, size, size))
        sink = None
    else:
        sink = open(tmp_data, "wb")
    try:
        for rel, label, file_id in zip(files, labels, ids):
            path = root / rel
            if not rel.lower().endswith(IMG_EXTENSIONS):
                skipped.append(
                    {"path": str(path), "reason": f"not an image file name (extension {Path(rel).suffix or 'none'})"}
                )
                continue
            try:
                img = resize_center_crop(decode_rgb(read_bytes(path)), size)
            except CorruptImage as exc:
                skipped.append({"path": str(path), "reason": str(exc)})
                continue
            except OSError as exc:
                skipped.append({"path": str(path), "reason": f"unreadable ({exc.strerror or exc})"})
                continue
            if fmt == "jpeg":
                encoded = encode_jpeg(img.contiguous(), quality=quality)
                stored = decode_jpeg(encoded, mode=ImageReadMode.RGB)     # the pixels training will see
                sink.write(encoded.numpy().tobytes())
                offsets.append(position)
                lengths.append(encoded.numel())
                position += encoded.numel()
            else:
                stored = img
                array[len(offsets)] = img.numpy()
                offsets.append(len(offsets))
                lengths.append(1)
            acc.add(stored)
            kept_labels.append(label)
            kept_ids.append(file_id)
    finally:
        if sink is not None:
            sink.close()
        if array is not None:
            array.flush()
            del array
    os.replace(tmp_data, data_path)
    summary = {
        "chunk": chunk,
        "offsets": torch.tensor(offsets, dtype=torch.int64),
        "lengths": torch.tensor(lengths, dtype=torch.int64),
        "labels": torch.tensor(kept_labels, dtype=torch.int64),
        "ids": torch.tensor(kept_ids, dtype=torch.int64),
        "paths": [files[i - ids[0]] for i in kept_ids],
        "skipped": skipped,
        "bytes": data_path.stat().st_size,
    }
    # exact statistics sums; the mean-image sum fits int32 for chunks of up to 8M/255 images
    state = acc.state()
    state["sum_image"] = state["sum_image"].to(torch.int32)
    stats_path = out / "shards" / f"{chunk:05d}.stats.pt"
    torch.save(state, stats_path.with_name(stats_path.name + ".tmp"))
    os.replace(stats_path.with_name(stats_path.name + ".tmp"), stats_path)
    index_path = out / "shards" / f"{chunk:05d}.pt"
    torch.save(summary, index_path.with_name(index_path.name + ".tmp"))
    os.replace(index_path.with_name(index_path.name + ".tmp"), index_path)
    return {"chunk": chunk, "written": len(offsets), "seen": len(files), "skipped": skipped}


def _run_chunks(todo, task, workers: int, done: int, n: int, progress) -> int:
    """Run the chunks in ``todo`` (in a process pool when workers > 1); returns the files done so far."""
    if workers == 1 or len(todo) <= 1:
        for c in todo:
            done += _prepare_chunk(task(c))["seen"]
            if progress is not None:
                progress(done, n)
        return done
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"), initializer=init_pool_worker,
                             initargs=(os.getpid(),)) as pool:
        pending = {pool.submit(_prepare_chunk, task(c)) for c in todo}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    done += fut.result()["seen"]
                if progress is not None:
                    progress(done, n)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return done


def prepare_store(data, out, *, size: int = 256, fmt: str = "jpeg", quality: int = 90, workers: int | None = None,
                  chunk_size: int | None = None, max_chunks: int | None = None, progress=None) -> dict:
    """Run the one-time preprocessing of split folder ``data`` into store ``out`` (resumable).

    ``progress(done, total)`` is called as chunks finish (counts of source files). ``max_chunks``
    stops after that many new chunks (the store stays incomplete; call again to go on).
    Returns a summary: ``written``, ``skipped`` (list of {path, reason}), ``complete``, ``reused``
    (files already done by an earlier run), ``bytes``, ``bytes_per_image``, ``seconds``, ``store``.
    """
    if fmt not in FORMATS:
        raise UserError(f"store format {fmt!r} is not one of {', '.join(FORMATS)}; use --format jpeg or --format raw.")
    check_side(size)
    if fmt == "jpeg" and not 1 <= quality <= 100:
        raise UserError(f"--quality {quality} is outside 1..100; use 90-95 for the store.")
    listing = list_split(data, "--data folder")
    out = Path(out).expanduser()
    _check_output(out)
    workers = max(1, workers or os.cpu_count() or 1)
    n = len(listing.files)
    if chunk_size is None:
        chunk_size = max(1, min(MAX_CHUNK, math.ceil(n / (4 * workers))))
    meta = _load_or_start(out, listing, _settings(size, fmt, quality), chunk_size)
    chunk_size = meta["chunk_size"]
    start = time.perf_counter()
    chunks = list(range(meta["chunks"]))
    todo = [c for c in chunks if not _chunk_done(out, c)]
    reused = n - sum(min(chunk_size, n - c * chunk_size) for c in todo)
    if max_chunks is not None:
        todo = todo[:max_chunks]
    done = reused
    if progress is not None:
        progress(done, n)

    def task(c):
        lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
        return {"out": str(out), "chunk": c, "root": str(listing.root), "size": size, "format": fmt, "quality": quality,
                "files": listing.files[lo:hi], "labels": listing.labels[lo:hi], "ids": list(range(lo, hi))}

    try:
        done = _run_chunks(todo, task, workers, done, n, progress)
    except OSError as exc:  # disk full, store folder removed, ... (unreadable images are skipped, not raised)
        raise UserError(
            f"writing the store {out} failed ({exc.strerror or exc}); fix that and run the same "
            f"command again to resume."
        ) from None
    complete = all(_chunk_done(out, c) for c in chunks)
    if meta.get("complete"):                          # finished earlier: report what is there
        result = {"store": str(out), "complete": True, "files": n, "reused": n, "seconds": time.perf_counter() - start,
                  "settings": _settings(size, fmt, quality)}
        result.update(_summary(out, meta))
        return result
    result = {
        "store": str(out),
        "complete": complete,
        "files": n,
        "reused": reused,
        "seconds": time.perf_counter() - start,
        "settings": _settings(size, fmt, quality),
    }
    if not complete:
        result.update({"written": None, "skipped": None, "bytes": None, "bytes_per_image": None})
        return result
    result.update(_finalize(out, meta, list(listing.skipped)))
    return result


def _finalize(out: Path, meta: dict, walk_skipped: list) -> dict:
    """Join the chunk indexes, statistics and skipped lists (``walk_skipped``: what listing the folder left
    out); mark the store complete."""
    parts = [torch.load(out / "shards" / f"{c:05d}.pt", weights_only=True) for c in range(meta["chunks"])]
    index = {
        "shard": torch.cat([torch.full((len(p["labels"]),), p["chunk"], dtype=torch.int32) for p in parts]),
        "offset": torch.cat([p["offsets"] for p in parts]),
        "length": torch.cat([p["lengths"] for p in parts]),
        "label": torch.cat([p["labels"] for p in parts]),
        "id": torch.cat([p["ids"] for p in parts]),
    }
    torch.save(index, out / "index.pt.tmp")
    os.replace(out / "index.pt.tmp", out / "index.pt")
    (out / "paths.txt").write_text("".join(rel + "\n" for part in parts for rel in part["paths"]),
                                      encoding="utf-8", errors="surrogateescape")
    skipped = walk_skipped + [s for p in parts for s in p["skipped"]]
    _write_json(out / "skipped.json", skipped)
    written = int(index["label"].numel())
    if written:
        acc = StatsAccumulator(meta["size"])
        for c in range(meta["chunks"]):
            acc.merge(StatsAccumulator.from_state(torch.load(out / "shards" / f"{c:05d}.stats.pt", weights_only=True)))
        save_stats(acc.finish(), out / "stats.pt", {"source": "store", "fingerprint": meta["fingerprint"]})
    meta.update({"complete": True, "written": written, "skipped": len(skipped),
                 "bytes": sum(int(p["bytes"]) for p in parts)})
    _write_json(out / "store.json", meta)
    for c in range(meta["chunks"]):                   # the sums are in stats.pt now
        (out / "shards" / f"{c:05d}.stats.pt").unlink(missing_ok=True)
    return _summary(out, meta)


def _summary(out: Path, meta: dict) -> dict:
    """written, skipped, bytes, bytes_per_image and the statistics summary of a finished store."""
    written, total_bytes = meta["written"], meta["bytes"]
    stats_path = out / "stats.pt"
    return {"written": written, "skipped": json.loads((out / "skipped.json").read_text()), "bytes": total_bytes,
            "bytes_per_image": total_bytes / written if written else None,
            "stats": load_stats(stats_path)[0].summary() if stats_path.exists() else None}


# ----------------------------------------------------------------------------------- reading

def read_store_meta(path) -> dict:
    """store.json of a finished store, or a UserError saying what to run."""
    path = Path(path).expanduser()
    meta_path = path / "store.json"
    if not meta_path.exists():
        raise UserError(
            f"{path} is not a prepared store (no store.json); run `twogpu-alexnet prepare --data "
            f"SRC --out {path}` first."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{meta_path} is unreadable; delete {path} and run prepare again.") from None
    if not meta.get("complete"):
        raise UserError(
            f"store {path} is incomplete (prepare was interrupted); run the same prepare command again to finish it."
        )
    return meta


class StoreReader:
    """Random access to a finished store's images (uint8 3 x S x S) and labels; picklable for workers."""

    def __init__(self, path):
        self.path = Path(path).expanduser()
        self.meta = read_store_meta(self.path)
        try:
            index = torch.load(self.path / "index.pt", weights_only=True)
        except Exception:  # missing, truncated or foreign file
            raise UserError(
                f"{self.path / 'index.pt'} is unreadable; delete {self.path} and run prepare again."
            ) from None
        self.shard = index["shard"]
        self.offset = index["offset"]
        self.length = index["length"]
        self.labels = index["label"].tolist()
        self.ids = index["id"]
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
            path = self.path / "shards" / f"{shard:05d}.data"
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
        """The stored JPEG bytes of image ``i`` (format "jpeg" only)."""
        shard, offset, length = int(self.shard[i]), int(self.offset[i]), int(self.length[i])
        data = os.pread(self._handle(shard), length, offset)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as stored: uint8, 3 x S x S."""
        if self.format == "raw":
            return torch.from_numpy(np.array(self._handle(int(self.shard[i]))[int(self.offset[i])]))
        try:
            return decode_jpeg(self.encoded(i), mode=ImageReadMode.RGB)
        except RuntimeError as exc:
            raise CorruptImage(f"store record {i} does not decode ({exc})") from None

    def stats(self) -> Stats:
        path = self.path / "stats.pt"
        if not path.exists():
            raise UserError(
                f"store {self.path} has no stats.pt; run `twogpu-alexnet stats --data {self.path}` to compute it."
            )
        return load_stats(path)[0]

    def source_paths(self) -> list[str]:
        """Source path (relative to the prepared folder) of every stored image, in store order.

        One path a line, split on "\\n" only (names with a line break are never stored: the folder walk
        skips them); ``splitlines`` would also split names holding \\x85 or \\u2028.
        """
        return (self.path / "paths.txt").read_text(encoding="utf-8", errors="surrogateescape").split("\n")[:-1]
