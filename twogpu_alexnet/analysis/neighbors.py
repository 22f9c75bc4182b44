"""Nearest training images in fc7 space (the paper's Figure 4).

For each query image, the ``k`` training images whose fc7 vectors (the last hidden layer after its
ReLU, 4096-d for the paper's net) are closest in Euclidean distance. Model and images come from
engine/inference.py, as for evaluation (shorter side to the stored size, centre crop, the training
split's mean image subtracted), features are computed in batches in eval mode and cached on disk,
keyed by the checkpoint file (path, size, modification time), the data folder's file list (names,
sizes, modification times) and the input size, so repeated queries against the same set only
compute the queries' features.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as F
from torchvision.utils import make_grid, save_image

from ..data import make_loader
from ..data.decode import CorruptImage, decode_rgb, read_bytes, resize_center_crop
from ..engine.inference import open_for_inference
from ..errors import UserError
from . import output_folder

CACHE_FORMAT = 1
TILE = 128  # pixels per image in the picture


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/twogpu-alexnet/neighbors`` (default ``~/.cache/twogpu-alexnet/neighbors``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "twogpu-alexnet" / "neighbors"


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


def _cache_key(checkpoint: Path, listing, input_size: int, preset: str) -> str:
    st = checkpoint.stat()
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                CACHE_FORMAT,
                str(checkpoint.resolve()),
                st.st_size,
                st.st_mtime_ns,
                str(listing.root.resolve()),
                input_size,
                preset,
            ]
        ).encode()
    )
    for f in listing.files:
        h.update(f"{f}\t{_file_key(listing.root / f)}\n".encode())
    return h.hexdigest()[:24]


def _cache_fits(entry, classes: int) -> bool:
    """Whether a cache file holds what :func:`training_features` writes (else it is computed again)."""
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
        return False
    feats, files, labels = entry.get("features"), entry.get("files"), entry.get("labels")
    return (isinstance(feats, torch.Tensor) and feats.dim() == 2 and feats.is_floating_point()
            and isinstance(files, list) and isinstance(labels, list) and len(files) == len(labels) == len(feats)
            and all(isinstance(y, int) and 0 <= y < classes for y in labels) and isinstance(entry.get("skipped"), int))


def training_features(model, split, *, checkpoint: Path, preset: str, batch_size: int, workers: int,
                      cache_dir: Path | None, device) -> tuple[dict, bool]:
    """fc7 features of every readable image of ``split``: {"features", "files", "labels"}, and
    whether they came from the cache."""
    listing = split.dataset.source
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"fc7-{_cache_key(checkpoint, listing, split.input_size, preset)}.pt"
        if path.is_file():
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
                if _cache_fits(entry, len(listing.classes)):
                    return entry, True
            except Exception:  # a cache file cut short: compute again
                pass
    loader = make_loader(split, batch_size=batch_size, shuffle=False, workers=workers, drop_last=False, device=device)
    loader.set_epoch(0)
    feats, kept, skipped = [], [], 0
    for batch in loader.batches():
        skipped += batch.skipped
        if len(batch.indices):
            feats.append(fc7_features(model, [batch.images]))
            kept += batch.indices.tolist()
    if not feats:
        raise UserError(f"{listing.root} holds no readable images to search")
    entry = {
        "format": CACHE_FORMAT,
        "features": torch.cat(feats),
        "files": [listing.files[i] for i in kept],
        "labels": [listing.labels[i] for i in kept],
        "skipped": skipped,
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(entry, tmp)
        os.replace(tmp, path)
    return entry, False


# ----------------------------------------------------------------------------------------------
# The whole command


def find_neighbors(checkpoint, data, queries, out_dir, *, k: int = 6, preset: str | None = None,
                   batch_size: int = 64, workers: int = 0, device: str = "cpu",
                   cache_dir=None, use_cache: bool = True, tile: int = TILE) -> dict:
    """Nearest training images in fc7 space for each query; writes ``out_dir/neighbors.png``.

    ``data``: one split folder of class subfolders (the training images to search); ``queries``:
    image files. The picture (:func:`neighbor_picture`) has one row per query: the query, a gap,
    then its ``k`` neighbours, nearest first (``k`` is clamped to the images there, with a note).
    Training features are cached in ``cache_dir`` (default :func:`default_cache_dir`) unless
    ``use_cache`` is False.
    """
    if k < 1:
        raise UserError(f"--k must be a positive integer, got {k}")
    if not queries:
        raise UserError("no query images given; pass one or more image files with --queries")
    model, ck, split = open_for_inference(checkpoint, data, preset=preset, device=device)
    stored, query_inputs = zip(*(_query(Path(q), split) for q in queries))
    # both folders are checked before the (long) feature pass, not after it
    out = output_folder(out_dir)
    if use_cache:
        cache_dir = output_folder(
            cache_dir or default_cache_dir(), "--cache DIR (or turn the cache off with --no-cache)"
        )
    query_feats = fc7_features(model, [torch.stack(query_inputs).to(next(model.parameters()).device)])
    db, cached = training_features(model, split, checkpoint=ck.path, preset=ck.preset, batch_size=batch_size,
                                   workers=workers, device=device, cache_dir=cache_dir if use_cache else None)
    notes = []
    if k > len(db["files"]):
        notes.append(f"--k {k} is more than the {len(db['files'])} readable training images; showing "
                     f"{len(db['files'])} per query")
        k = len(db["files"])
    distances, indices = nearest(query_feats, db["features"], k)
    listing = split.dataset.source
    position = {f: i for i, f in enumerate(listing.files)}
    query_tiles, neighbor_tiles, results = [], [], []
    for qi, q in enumerate(queries):
        found = []
        query_tiles.append(_tile(stored[qi], tile))
        for d, i in zip(distances[qi].tolist(), indices[qi].tolist()):
            rel = db["files"][i]
            found.append({"path": str(listing.root / rel), "class": listing.classes[db["labels"][i]], "distance": d})
            neighbor_tiles.append(_tile(split.dataset.image(position[rel]), tile))
        results.append({"query": str(q), "neighbors": found})
    picture = out / "neighbors.png"
    save_image(neighbor_picture(query_tiles, neighbor_tiles, k), picture)
    return {
        "checkpoint": str(ck.path), "preset": ck.preset, "data": str(listing.root), "k": k,
        "images": len(db["files"]), "skipped": db["skipped"], "cached": cached,
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
