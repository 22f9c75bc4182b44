"""The one reader of a prepared store's bookkeeping: ``store.json``, ``index.pt`` and the shards, checked together.

A store is a folder the program wrote earlier; by the time it is read it may have been cut short (a
full disk, a copy that stopped), edited, or mixed with another store's files. :func:`check_store`
reads ``store.json`` and ``index.pt`` and compares them with each other and with the shard files
(types, labels against the class list, index rows against each shard's size, the format against
the shards' first bytes) at the cost of one ``stat`` and a few header bytes per shard, and refuses
what cannot be read right in one sentence naming the store and saying to run prepare again.

One damage is not refused: a JPEG shard cut short loses the records past its end, which are then
skipped and counted as unreadable images are (``StoreIndex.lost`` says how many). :func:`verify_store`
(``prepare --verify``) also compares every file with the SHA-256 recorded when the store was made.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .stats import MAX_SIDE, MIN_SIDE

STORE_KIND = "twogpu-alexnet store"
STORE_VERSION = 1
FORMATS = ("jpeg", "raw")
INDEX_KEYS = ("shard", "offset", "length", "label", "id")
NPY_MAGIC, JPEG_MAGIC = b"\x93NUMPY", b"\xff\xd8"
HASHED = ("index.pt", "paths.txt", "stats.pt")     # besides the shards' data files


def damaged(store: Path, detail: str) -> UserError:
    """The one sentence for a store that cannot be read as it is."""
    return UserError(f"store {store} is damaged or not as prepare wrote it ({detail}); delete {store} and run "
                     "prepare again.")


def shard_path(store: Path, chunk: int) -> Path:
    return store / "shards" / f"{chunk:05d}.data"


def load_payload(path: Path, store: Path):
    """A ``.pt`` file the store holds (tensors, lists, numbers only), or the one damaged-store sentence.

    torch's ``weights_only`` loader refuses anything else (a pickled object planted in the file) without
    running it; that refusal, a truncated file or a missing one are all reported the same way.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)      # torch's notes on a foreign pickle protocol
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as exc:
        planted = isinstance(exc, pickle.UnpicklingError)      # garbage, or an object weights_only refuses to build
        what = "is unreadable or holds something other than tensors and lists" if planted else \
            f"is unreadable ({type(exc).__name__})"
        raise damaged(store, f"{path.relative_to(store)} {what}") from None


def read_json(path: Path, store: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise damaged(store, f"{path.name} is unreadable ({type(exc).__name__})") from None


def read_meta(store) -> dict:
    """``store.json`` of a finished store, with every field the readers use checked."""
    store = Path(store).expanduser()
    if not (store / "store.json").exists():
        raise UserError(
            f"{store} is not a prepared store (no store.json); run `twogpu-alexnet prepare --data SRC --out {store}` "
            "first."
        )
    meta = read_json(store / "store.json", store)
    if not isinstance(meta, dict) or meta.get("kind") != STORE_KIND:
        raise damaged(store, "store.json is not a store description")
    if not meta.get("complete"):
        raise UserError(
            f"store {store} is incomplete (prepare was interrupted); run the same prepare command again to finish it."
        )
    if meta.get("version") != STORE_VERSION:
        raise damaged(store, f"store.json has version {meta.get('version')!r}, this program reads {STORE_VERSION}")
    problems = []
    if meta.get("format") not in FORMATS:
        problems.append(f"format {meta.get('format')!r} is not one of {', '.join(FORMATS)}")
    if not _whole(meta.get("size")) or not MIN_SIDE <= meta["size"] <= MAX_SIDE:
        problems.append(f"size {meta.get('size')!r} is not a side in {MIN_SIDE}..{MAX_SIDE}")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes) \
            or len(set(classes)) != len(classes):
        problems.append("classes is not a list of distinct names")
    for key in ("chunks", "written", "chunk_size"):
        if not _whole(meta.get(key)) or meta[key] < 0:
            problems.append(f"{key} {meta.get(key)!r} is not a count")
    if meta.get("format") == "raw" and meta.get("layout") != "hwc":
        problems.append("its raw shards are in the C,H,W layout of an unreleased early version")
    if problems:
        raise damaged(store, "store.json: " + problems[0])
    return meta


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class StoreIndex:
    """What :func:`check_store` returns: the checked metadata and index, and each used shard's size in bytes."""

    meta: dict
    shard: torch.Tensor        # int, per image
    offset: torch.Tensor       # JPEG: byte offset in the shard; raw: row
    length: torch.Tensor       # JPEG: bytes; raw: 1
    label: torch.Tensor        # int64, in 0 .. len(classes) - 1
    id: torch.Tensor           # position in the sorted source list
    shard_bytes: dict          # chunk -> size of its data file
    lost: int                  # JPEG records past the end of a shard cut short (skipped when read)


def check_store(store) -> StoreIndex:
    """Read and cross-check ``store.json``, ``index.pt`` and the shard files; the one damaged-store sentence
    for anything that does not fit."""
    store = Path(store).expanduser()
    meta = read_meta(store)
    index = load_payload(store / "index.pt", store)
    if not isinstance(index, dict) or not all(isinstance(index.get(k), torch.Tensor) for k in INDEX_KEYS):
        raise damaged(store, f"index.pt is not a table with the columns {', '.join(INDEX_KEYS)}")
    cols = {k: index[k] for k in INDEX_KEYS}
    for key, col in cols.items():
        if col.dim() != 1 or col.dtype not in (torch.int64, torch.int32) or len(col) != meta["written"]:
            raise damaged(store, f"index.pt column {key} is not {meta['written']:,} whole numbers, as store.json "
                          "says were written")
    n_classes = len(meta["classes"])
    if len(cols["label"]) and (int(cols["label"].min()) < 0 or int(cols["label"].max()) >= n_classes):
        raise damaged(store, f"index.pt has labels from {int(cols['label'].min())} to {int(cols['label'].max())} "
                      f"but store.json lists {n_classes} classes")
    if len(cols["shard"]) and (int(cols["shard"].min()) < 0 or int(cols["shard"].max()) >= meta["chunks"]):
        raise damaged(store, f"index.pt names shards outside the {meta['chunks']} of store.json")
    if len(cols["offset"]) and (int(cols["offset"].min()) < 0 or int(cols["length"].min()) < 1):
        raise damaged(store, "index.pt has negative offsets or empty records")
    check = _check_jpeg_shards if meta["format"] == "jpeg" else _check_raw_shards
    shard_bytes, lost = check(store, meta, cols)
    return StoreIndex(meta, cols["shard"], cols["offset"], cols["length"], cols["label"].long(), cols["id"],
                      shard_bytes, lost)


def _shard_head(store: Path, chunk: int) -> tuple[int, bytes]:
    path = shard_path(store, chunk)
    try:
        with open(path, "rb") as f:
            return path.stat().st_size, f.read(128)
    except OSError as exc:
        state = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
        raise damaged(store, f"shards/{path.name} is {state}") from None


def _check_jpeg_shards(store: Path, meta: dict, cols: dict) -> tuple[dict, int]:
    sizes = {}
    for chunk in range(meta["chunks"]):
        size, head = _shard_head(store, chunk)
        if head.startswith(NPY_MAGIC):
            raise damaged(store, f"store.json says format jpeg but shards/{chunk:05d}.data holds a raw array")
        if head and not head.startswith(JPEG_MAGIC):
            raise damaged(store, f"shards/{chunk:05d}.data does not start with a JPEG")
        sizes[chunk] = size
    if meta.get("shard_bytes") == [sizes[c] for c in range(meta["chunks"])] or not len(cols["shard"]):
        return sizes, 0                        # every shard as long as prepare wrote it: nothing to look up per row
    limit = torch.tensor([sizes[c] for c in range(meta["chunks"])], dtype=torch.int64)
    ends = cols["offset"].long() + cols["length"].long()
    return sizes, int((ends > limit[cols["shard"].long()]).sum())


def _check_raw_shards(store: Path, meta: dict, cols: dict) -> tuple[dict, int]:
    sizes, side = {}, meta["size"]
    rows = torch.zeros(meta["chunks"], dtype=torch.int64)
    for chunk in range(meta["chunks"]):
        name = f"shards/{chunk:05d}.data"
        size, head = _shard_head(store, chunk)
        if head.startswith(JPEG_MAGIC):
            raise damaged(store, f"store.json says format raw but {name} holds JPEGs")
        try:
            with open(shard_path(store, chunk), "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
                header = f.tell()
        except (ValueError, OSError, SyntaxError, EOFError):
            raise damaged(store, f"{name} is not an array file") from None
        if dtype != np.uint8 or fortran or len(shape) != 4 or tuple(shape[1:]) != (side, side, 3):
            raise damaged(store, f"{name} holds a {dtype} array of shape {tuple(shape)}, not n x {side} x {side} x 3 "
                          "uint8")
        expected = header + shape[0] * side * side * 3
        if size != expected:
            raise damaged(store, f"{name} is {size:,} bytes where its {shape[0]:,} rows need {expected:,} (cut short?)")
        sizes[chunk], rows[chunk] = size, shape[0]
    if len(cols["shard"]) and bool((cols["offset"].long() >= rows[cols["shard"].long()]).any()):
        raise damaged(store, "index.pt points at rows beyond the end of their shard")
    return sizes, 0


# ----------------------------------------------------------------------------------- checksums

def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def store_checksums(store: Path, chunks: int) -> dict:
    """SHA-256 of every file a finished store's readers use besides store.json (recorded in it by prepare)."""
    names = [f"shards/{c:05d}.data" for c in range(chunks)] + [n for n in HASHED if (store / n).exists()]
    return {name: file_sha256(store / name) for name in names}


def verify_store(store) -> dict:
    """:func:`check_store`, then every file compared with its recorded SHA-256; returns a summary or raises the
    damaged-store sentence naming the first file that differs."""
    store = Path(store).expanduser()
    index = check_store(store)
    recorded = index.meta.get("sha256")
    if not isinstance(recorded, dict) or not recorded:
        raise damaged(store, "store.json records no checksums (made by an earlier version)")
    for name, digest in recorded.items():
        try:
            actual = file_sha256(store / name)
        except OSError:
            raise damaged(store, f"{name} is missing or unreadable") from None
        if actual != digest:
            raise damaged(store, f"{name} differs from what prepare wrote (SHA-256 mismatch)")
    if index.lost:
        raise damaged(store, f"{index.lost:,} records lie past the end of their shard")
    return {"store": str(store), "files_checked": len(recorded), "images": index.meta["written"]}
