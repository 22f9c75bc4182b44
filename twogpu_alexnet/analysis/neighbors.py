"""Nearest training images in fc7 space (the paper's Figure 4).

For each query image, the ``k`` training images whose fc7 vectors (the last hidden layer after its
ReLU, 4096-d for the paper's net) are closest in Euclidean distance. Model and images come from
engine/inference.py, as for evaluation (shorter side to the stored size, centre crop, the training
split's mean image subtracted), features are computed in batches in eval mode and cached on disk,
keyed by the checkpoint file (path, size, modification time), the data (a folder's file list with
sizes and modification times, or a store's fingerprint) and the input size, so repeated queries
against the same set only compute the queries' features. The cache lives under the run folder of the
checkpoint (``RUN/cache/neighbors``), or under ``$TWOGPU_ALEXNET_CACHE`` when that is set.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as F
from torchvision.utils import make_grid, save_image

from .. import files
from ..data import make_loader
from ..data.decode import CorruptImage, decode_rgb, read_bytes, resize_center_crop
from ..data.stats import CACHE_ENV
from ..engine.inference import open_for_inference
from ..errors import UserError
from . import output_folder

CACHE_FORMAT = 2
TILE = 128  # pixels per image in the picture



def default_cache_dir(checkpoint=None) -> Path:
    """Where the feature cache lives: ``$TWOGPU_ALEXNET_CACHE/neighbors`` when set; else under the run folder of a
    training checkpoint (``RUN/checkpoints/last.pt`` -> ``RUN/cache/neighbors``); else
    ``$XDG_CACHE_HOME/twogpu-alexnet/neighbors`` (default ``~/.cache/twogpu-alexnet/neighbors``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "neighbors"
    if checkpoint is not None and Path(checkpoint).parent.name == "checkpoints":
        return Path(checkpoint).parent.parent / "cache" / "neighbors"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "twogpu-alexnet" / "neighbors"


def image_names(source) -> list[str]:
    """A name for each image of a split's source: the file path for class folders, ``STORE#i`` for a store."""
    if hasattr(source, "files"):
        return [str(source.root / f) for f in source.files]
    return [f"{source.path}#{int(i)}" for i in source.ids.tolist()]


# ----------------------------------------------------------------------------------------------
# Features


@torch.inference_mode()
def fc7_features(model, batches) -> torch.Tensor:
    """fc7 activations (N x F, float32, cpu) of normalized image batches, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        out = [model.features(x).float().cpu() for x in batches]
    finally:
        model.train(was_training)
    if not out:
        raise UserError("no images to compute features for")
    return torch.cat(out)


def nearest(
    queries: torch.Tensor, database: torch.Tensor, k: int, chunk: int = 16384
) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices), each Q x k, of the ``k`` rows of ``database`` nearest each query.

    Candidates come from ``torch.cdist`` over chunks of the database (fast, matrix-multiply based);
    the final distances are recomputed directly in float64, so an exact copy is at distance 0.
    """
    if database.shape[0] == 0:
        raise UserError("the training set holds no readable images to search")
    k = min(k, database.shape[0])
    keep = min(database.shape[0], 4 * k)
    cand_d, cand_i = [], []
    for start in range(0, database.shape[0], chunk):
        block = database[start:start + chunk]
        d = torch.cdist(queries.float(), block.float())
        top = d.topk(min(keep, block.shape[0]), dim=1, largest=False)
        cand_d.append(top.values)
        cand_i.append(top.indices + start)
    cand_i = torch.cat(cand_i, dim=1).gather(1, torch.cat(cand_d, dim=1).topk(keep, dim=1, largest=False).indices)
    exact = (database[cand_i].double() - queries.double()[:, None, :]).square().sum(dim=2).sqrt()  # Q x keep
    order = exact.argsort(dim=1, stable=True)[:, :k]
    return exact.gather(1, order), cand_i.gather(1, order)


# ----------------------------------------------------------------------------------------------
# Images


def _query(path: Path, split) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored uint8 image, network input) of a query file, preprocessed as ``split``'s images."""
    if not path.is_file():
        what = "is a folder, not an image file" if path.is_dir() else "does not exist"
        raise UserError(f"query image {path} {what}; pass image files with --queries")
    try:
        stored = resize_center_crop(decode_rgb(read_bytes(path)), split.pipeline.geometry.image_size)
    except (CorruptImage, OSError) as exc:
        raise UserError(f"query image {path} cannot be read ({exc}); pass a JPEG or PNG file") from None
    return stored, split.pipeline.finish(split.pipeline(stored)[0][None])[0]


# ----------------------------------------------------------------------------------------------
# The cache


def _file_key(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:          # a dangling link or a file gone since the listing: skipped when read
        return "-"
    return f"{st.st_size}\t{st.st_mtime_ns}"


def _cache_key(checkpoint: Path, source, input_size: int, preset: str) -> str:
    st = checkpoint.stat()
    root = source.root if hasattr(source, "files") else source.path
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                CACHE_FORMAT,
                str(checkpoint.resolve()),
                st.st_size,
                st.st_mtime_ns,
                str(Path(root).resolve()),
                input_size,
                preset,
            ]
        ).encode()
    )
    if hasattr(source, "files"):
        for f in source.files:
            h.update(f"{f}\t{_file_key(source.root / f)}\n".encode())
    else:                                   # a store: its fingerprint names the files it was made from
        h.update(f"store\t{source.meta.get('fingerprint')}\t{len(source)}\n".encode())
    return h.hexdigest()[:24]


def cache_file(cache_dir, checkpoint: Path, split, preset: str) -> Path:
    """The feature cache file of (checkpoint, data, input size, preset) in ``cache_dir``."""
    return Path(cache_dir) / f"fc7-{_cache_key(checkpoint, split.dataset.source, split.input_size, preset)}.pt"


def _read_cache(path: Path, source) -> dict | None:
    """The cached features, or None when the file is missing, cut short or does not fit ``source``."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        n = len(entry["files"])
        ok = (entry.get("format") == CACHE_FORMAT and entry["features"].shape[0] == n == len(entry["labels"])
              and all(0 <= int(y) < len(source.classes) for y in entry["labels"]))
    except Exception:          # a cache file cut short or edited: compute again
        return None
    return entry if ok else None


def training_features(model, split, *, checkpoint: Path, preset: str, batch_size: int, workers: int,
                      cache_dir: Path | None, device, progress=None) -> tuple[dict, bool]:
    """fc7 features of every readable image of ``split``: {"features", "files", "labels"}, and
    whether they came from the cache. ``progress(done, total)`` counts images."""
    listing = split.dataset.source
    path = None
    if cache_dir is not None:
        path = cache_file(cache_dir, checkpoint, split, preset)
        entry = _read_cache(path, listing)
        if entry is not None:
            return entry, True
    loader = make_loader(split, batch_size=batch_size, shuffle=False, workers=workers, drop_last=False, device=device)
    loader.set_epoch(0)
    feats, kept, skipped = [], [], 0
    total = len(split.dataset)
    names = image_names(listing)
    for batch in loader.batches():
        skipped += batch.skipped
        if len(batch.indices):
            feats.append(fc7_features(model, [batch.images]))
            kept += batch.indices.tolist()
        if progress:
            progress(len(kept) + skipped, total)
    if not feats:
        raise UserError(f"{split.root} holds no readable images to search")
    entry = {
        "format": CACHE_FORMAT,
        "features": torch.cat(feats),
        "files": [names[i] for i in kept],
        "labels": [listing.labels[i] for i in kept],
        "skipped": skipped,
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_atomic(path, lambda f: torch.save(entry, f), what=f"feature cache {path}")
    return entry, False


# ----------------------------------------------------------------------------------------------
# The whole command


def find_neighbors(checkpoint, data, queries, out_dir, *, k: int = 6, preset: str | None = None,
                   batch_size: int = 64, workers: int | None = 0, device: str | None = "cpu",
                   cache_dir=None, use_cache: bool = True, tile: int = TILE, progress=None, header=None) -> dict:
    """Nearest training images in fc7 space for each query; writes ``out_dir/neighbors.png``.

    ``data``: one split (the training images to search): a store made by ``prepare`` or a folder of class
    subfolders, of the classes the checkpoint was trained on; ``queries``: image files. The picture
    (:func:`neighbor_picture`) has one row per query: the query, a gap,
    then its ``k`` neighbours, nearest first (``k`` is clamped to the images there, with a note).
    Training features are cached in ``cache_dir`` (default :func:`default_cache_dir`) unless
    ``use_cache`` is False. ``header(dict)`` is called once the inputs are checked, before the feature
    pass (checkpoint, preset, device, images, cache file and whether it holds the features);
    ``progress(done, total)`` counts the training images whose features are computed.
    """
    from ..data.pool import worker_count

    if k < 1:
        raise UserError(f"--k must be a positive integer, got {k}")
    if not queries:
        raise UserError("no query images given; pass one or more image files with --queries")
    model, ck, split = open_for_inference(checkpoint, data, preset=preset, device=device, count=False)
    stored, query_inputs = zip(*(_query(Path(q), split) for q in queries), strict=True)
    # both folders are checked before the (long) feature pass, not after it
    out = output_folder(out_dir)
    if use_cache:
        cache_dir = output_folder(
            cache_dir or default_cache_dir(ck.path), "--cache DIR (or turn the cache off with --no-cache)"
        )
    model_device = next(model.parameters()).device
    cache = cache_file(cache_dir, ck.path, split, ck.preset) if use_cache else None
    if header:
        header({"checkpoint": str(ck.path), "preset": ck.preset, "device": str(model_device),
                "images": len(split.dataset), "cache": None if cache is None else str(cache),
                "cached": cache is not None and cache.is_file()})       # read (and checked) once, below
    query_feats = fc7_features(model, [torch.stack(query_inputs).to(model_device)])
    db, cached = training_features(model, split, checkpoint=ck.path, preset=ck.preset, batch_size=batch_size,
                                   workers=0 if workers == 0 else worker_count(workers), device=model_device,
                                   cache_dir=cache_dir if use_cache else None, progress=progress)
    notes = []
    if k > len(db["files"]):
        notes.append(f"--k {k} is more than the {len(db['files'])} readable training images; showing "
                     f"{len(db['files'])} per query")
        k = len(db["files"])
    distances, indices = nearest(query_feats, db["features"], k)
    listing = split.dataset.source
    position = {f: i for i, f in enumerate(image_names(listing))}
    query_tiles, neighbor_tiles, results = [], [], []
    for qi, q in enumerate(queries):
        found = []
        query_tiles.append(_tile(stored[qi], tile))
        for d, i in zip(distances[qi].tolist(), indices[qi].tolist(), strict=True):
            rel = db["files"][i]
            found.append({"path": rel, "class": listing.classes[db["labels"][i]], "distance": d})
            neighbor_tiles.append(_tile(split.dataset.image(position[rel]), tile))
        results.append({"query": str(q), "neighbors": found})
    picture = out / "neighbors.png"
    grid = neighbor_picture(query_tiles, neighbor_tiles, k)
    files.write_atomic(picture, lambda f: save_image(grid, f, format="png"))
    return {
        "checkpoint": str(ck.path), "preset": ck.preset, "data": str(split.root), "k": k,
        "images": len(db["files"]), "skipped": db["skipped"], "cached": cached, "device": str(model_device),
        "cache": None if cache is None else {"path": str(cache), "bytes": cache.stat().st_size},
        "feature_dim": int(db["features"].shape[1]),
        "queries": results, "files": {"neighbors": str(picture)}, "notes": notes,
    }


def neighbor_picture(query_tiles: list, neighbor_tiles: list, k: int, padding: int = 4, gap: int = 12) -> torch.Tensor:
    """Queries in the left column, a ``gap`` of white, then each query's ``k`` neighbours in its row.

    Size for Q queries and t-pixel tiles: height Q * (t + padding) + padding,
    width (t + 2 * padding) + gap + k * (t + padding) + padding.
    """
    left = _grid(query_tiles, 1, padding)
    right = _grid(neighbor_tiles, k, padding)
    return torch.cat([left, torch.ones(3, left.shape[1], gap), right], dim=2)


def _grid(tiles: list, nrow: int, padding: int) -> torch.Tensor:
    if len(tiles) == 1:  # make_grid hands a single image back without its border
        return torch.nn.functional.pad(tiles[0], [padding] * 4, value=1.0)
    return make_grid(torch.stack(tiles), nrow=nrow, padding=padding, pad_value=1.0)


def _tile(img_u8: torch.Tensor, size: int) -> torch.Tensor:
    """An image for the picture: float [0, 1], size x size (nearest-neighbour when enlarging)."""
    h = img_u8.shape[-1]
    mode = F.InterpolationMode.NEAREST if size >= h else F.InterpolationMode.BILINEAR
    return F.resize(img_u8, [size, size], interpolation=mode, antialias=size < h).float() / 255
