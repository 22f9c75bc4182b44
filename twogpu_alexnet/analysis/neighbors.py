"""Nearest training images in fc7 space (the paper's Figure 4).

For each query image, the ``k`` training images whose fc7 vectors (the last hidden layer after its
ReLU, 4096-d for the paper's net) are closest in Euclidean distance. Images are preprocessed as
for evaluation (shorter side to the stored size, centre crop, the training split's mean image
subtracted; data/transforms.py), features are computed in batches in eval mode and cached on disk,
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

from ..data import Stats
from ..data.decode import CorruptImage, decode_rgb, read_bytes, resize_center_crop
from ..data.folders import list_split
from ..data.split import folder_stats
from ..data.transforms import Pipeline, geometry_for
from ..errors import UserError
from ..model import build_model
from ..model.load import infer_preset, load_into, load_weights
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


class _Preprocess:
    """Evaluation preprocessing as the data package does it: stored geometry (shorter side to S,
    centre crop), centre view, the training mean image subtracted -- the one the checkpoint carries
    (``data_stats``, written by the trainer), else the statistics of the searched folder ``listing``."""

    def __init__(self, listing, input_size: int, meta: dict):
        self.geometry = geometry_for(input_size)
        stats = _checkpoint_stats(meta)
        if stats is None or stats.size != self.geometry.image_size:
            stats = folder_stats(listing, self.geometry.image_size)  # cached beside the data (or the user cache)
        self.pipeline = Pipeline(stats, self.geometry, train=False)

    def stored(self, path) -> torch.Tensor:
        """uint8 3 x S x S as the store holds it; CorruptImage if the file cannot be decoded."""
        try:
            data = read_bytes(path)
        except OSError as exc:
            raise CorruptImage(f"unreadable ({exc.strerror or exc})") from None
        return resize_center_crop(decode_rgb(data), self.geometry.image_size)

    def network_input(self, stored: torch.Tensor) -> torch.Tensor:
        """float32 3 x s x s: the centre view minus the mean, 0..255 scale (data/transforms.py)."""
        return self.pipeline.finish(self.pipeline(stored)[0][None])[0]


def _checkpoint_stats(meta: dict):
    """The training statistics a training checkpoint carries, or None."""
    d = meta.get("data_stats")
    if not isinstance(d, dict):
        return None
    return Stats(d["mean_image"], d["channel_mean"], d["covariance"], d["eigenvalues"], d["eigenvectors"],
                 int(d["images"]), int(d["pixels"]))


class _FolderImages(torch.utils.data.Dataset):
    def __init__(self, root: Path, files: list[str], prep: _Preprocess):
        self.root, self.files, self.prep = root, files, prep

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            return self.prep.network_input(self.prep.stored(self.root / self.files[i])), True
        except CorruptImage:
            s = self.prep.geometry.input_size
            return torch.zeros(3, s, s), False


# ----------------------------------------------------------------------------------------------
# The cache


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
        fs = (listing.root / f).stat()
        h.update(f"{f}\t{fs.st_size}\t{fs.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def training_features(model, listing, prep: _Preprocess, *, checkpoint: Path, preset: str, batch_size: int,
                      workers: int, cache_dir: Path | None, device) -> tuple[dict, bool]:
    """fc7 features of every readable image of ``listing``: {"features", "files", "labels"}, and
    whether they came from the cache."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"fc7-{_cache_key(checkpoint, listing, prep.geometry.input_size, preset)}.pt"
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True), True
            except Exception:  # a cache file cut short: compute again
                pass
    loader = torch.utils.data.DataLoader(_FolderImages(listing.root, listing.files, prep), batch_size=batch_size,
                                         num_workers=workers)
    feats, ok = [], []
    for x, good in loader:
        feats.append(fc7_features(model, [x.to(device)]))
        ok.append(good)
    ok = torch.cat(ok)
    keep = ok.nonzero().flatten().tolist()
    entry = {
        "format": CACHE_FORMAT,
        "features": torch.cat(feats)[ok],
        "files": [listing.files[i] for i in keep],
        "labels": [listing.labels[i] for i in keep],
        "skipped": int((~ok).sum()),
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
    then its ``k`` neighbours, nearest first. Training features are cached in ``cache_dir``
    (default :func:`default_cache_dir`) unless ``use_cache`` is False.
    """
    if k < 1:
        raise UserError(f"--k must be a positive integer, got {k}")
    if not queries:
        raise UserError("no query images given; pass one or more image files with --queries")
    checkpoint = Path(checkpoint)
    state, meta = load_weights(checkpoint)
    name = preset or meta.get("preset") or infer_preset(state)
    model = build_model(name, mode="grouped", device=device, num_classes=meta["num_classes"])
    load_into(model, state)
    listing = list_split(data).images()
    if not listing.files:
        raise UserError(f"data folder {data} holds no image files in its class folders")
    prep = _Preprocess(listing, model.spec.input_size, meta)

    stored, query_inputs = [], []
    for q in queries:
        q = Path(q)
        if not q.is_file():
            what = "is a folder, not an image file" if q.is_dir() else "does not exist"
            raise UserError(f"query image {q} {what}; pass image files with --queries")
        try:
            img = prep.stored(q)
        except CorruptImage as exc:
            raise UserError(f"query image {q} cannot be read ({exc}); pass a JPEG or PNG file") from None
        stored.append(img)
        query_inputs.append(prep.network_input(img))
    # both folders are checked before the (long) feature pass, not after it
    out = output_folder(out_dir)
    if use_cache:
        cache_dir = output_folder(
            cache_dir or default_cache_dir(), "--cache DIR (or turn the cache off with --no-cache)"
        )
    query_feats = fc7_features(model, [torch.stack(query_inputs).to(device)])

    db, cached = training_features(model, listing, prep, checkpoint=checkpoint, preset=name, batch_size=batch_size,
                                   workers=workers, device=device, cache_dir=cache_dir if use_cache else None)
    distances, indices = nearest(query_feats, db["features"], k)

    query_tiles, neighbor_tiles, results = [], [], []
    blank = torch.ones(3, tile, tile)
    for qi, q in enumerate(queries):
        found = []
        query_tiles.append(_tile(stored[qi], tile))
        for d, i in zip(distances[qi].tolist(), indices[qi].tolist()):
            rel = db["files"][i]
            found.append({"path": str(listing.root / rel), "class": listing.classes[db["labels"][i]], "distance": d})
            neighbor_tiles.append(_tile(prep.stored(listing.root / rel), tile))
        neighbor_tiles.extend([blank] * (k - len(found)))  # fewer training images than k
        results.append({"query": str(q), "neighbors": found})
    picture = out / "neighbors.png"
    save_image(neighbor_picture(query_tiles, neighbor_tiles, k), picture)
    return {
        "checkpoint": str(checkpoint), "preset": name, "data": str(listing.root), "k": k,
        "images": len(db["files"]), "skipped": db["skipped"], "cached": cached,
        "feature_dim": int(db["features"].shape[1]),
        "queries": results, "files": {"neighbors": str(picture)},
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
