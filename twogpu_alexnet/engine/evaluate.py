"""Top-1 / top-5 error of one network or an ensemble, with one view or the paper's ten.

Ten views: the four corner and the centre crops and their reflections; the network's softmax is
averaged over the views. Several checkpoints: their softmax outputs are averaged too (the paper's
"5 CNNs" row averages five networks' predictions). Each checkpoint may be a training checkpoint or a
plain state dict in either layout; it runs on one device as the grouped executor (the same function
as two towers).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from ..errors import UserError
from ..model import build_model
from ..model.load import infer_preset, load_into, load_weights
from ..spec import get_spec
from .metrics import topk_correct
from .progress import Reporter


def load_network(path: "str | os.PathLike", preset: str | None, device) -> tuple[torch.nn.Module, dict]:
    """The weights in ``path`` as a grouped model on ``device`` in eval mode, and the file's metadata.

    The preset is ``preset`` when given, else the checkpoint's, else the one whose shapes match.
    """
    state, meta = load_weights(path)
    name = preset or meta.get("preset") or infer_preset(state)
    get_spec(name)  # an unknown --preset is a UserError naming the choices
    model = build_model(name, mode="grouped", device=device, num_classes=meta["num_classes"])
    try:
        load_into(model, state)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    return model.eval(), meta


def _stats_of(meta: dict):
    """The training statistics a checkpoint carries (None for a plain state dict)."""
    from ..data import Stats

    d = meta.get("data_stats")
    if not isinstance(d, dict):
        return None
    return Stats(d["mean_image"], d["channel_mean"], d["covariance"], d["eigenvalues"], d["eigenvectors"],
                 int(d["images"]), int(d["pixels"]))


def open_eval_split(data: "str | os.PathLike", input_size: int, ten_crop: bool, stats=None):
    """One folder of class subfolders (``D/<class>/*.JPEG``) as an evaluation split yielding uint8
    views; ``stats`` (the training mean) defaults to the statistics of the folder itself."""
    from ..data.folders import list_split
    from ..data.split import FolderSource, Split, SplitDataset, folder_stats
    from ..data.transforms import Pipeline, geometry_for

    geometry = geometry_for(input_size)
    listing = list_split(data, "--data folder").images()
    if not listing.files:
        raise UserError(f"--data {data} has no image files (.jpg, .jpeg, .png, ...); put them in {data}/<class>/")
    if stats is None:
        stats = folder_stats(listing, geometry.image_size)
    pipeline = Pipeline(stats, geometry, train=False, color_noise="none", views=10 if ten_crop else 1)
    source = FolderSource(listing, geometry.image_size)
    return Split(list(listing.classes), SplitDataset(source, pipeline), stats, pipeline, "val", "imagefolder",
                 str(data))


def _pipeline(stats, split):
    from ..data.transforms import Pipeline

    return Pipeline(stats, split.pipeline.geometry, train=False, color_noise="none", views=split.views)


def _folder_stats(split):
    from ..data.folders import FolderListing
    from ..data.split import folder_stats

    src = split.dataset.source
    return folder_stats(FolderListing(src.root, src.classes, src.files, src.labels), split.pipeline.geometry.image_size)


def default_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


@torch.no_grad()
def ensemble_probabilities(models, x: torch.Tensor, finishers=None) -> torch.Tensor:
    """Softmax averaged over the views and the models: x is N x 3 x S x S or N x V x 3 x S x S.

    ``finishers[i]`` turns the batch as loaded into model i's input (its own training mean); by
    default ``x`` is used as it is.
    """
    n = x.shape[0]
    total = None
    for i, model in enumerate(models):
        xi = finishers[i](x) if finishers else x
        views = xi.flatten(0, 1) if xi.dim() == 5 else xi
        p = torch.softmax(model(views).float(), dim=1)
        p = p.view(n, -1, p.shape[1]).mean(1)  # average over the views of each image
        total = p if total is None else total + p
    return total / len(models)


def evaluate(checkpoints, data, *, preset: str | None = None, ten_crop: bool = False, device=None,
             batch_size: int = 64, workers: int = 2, reporter: Reporter | None = None) -> dict:
    """Top-1 and top-5 error (fractions) of the checkpoints' averaged softmax on the folder ``data``.

    Each network sees the images minus its own training mean (stored in training checkpoints; a
    plain state dict gets the mean of ``data`` itself, and a note says so). Returns ``{"top1_error",
    "top5_error", "images", "views", "checkpoints", "presets", "skipped"}``.
    """
    from ..data import make_loader

    reporter = reporter or Reporter()
    paths = [Path(c) for c in ([checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else checkpoints)]
    if not paths:
        raise UserError("pass at least one --checkpoint")
    if not Path(data).is_dir():
        raise UserError(f"--data {data} is not a folder; pass a folder whose subfolders are the classes")
    device = torch.device(device or default_device())
    loaded = [load_network(p, preset, device) for p in paths]
    models = [m for m, _ in loaded]
    specs = {(m.spec.input_size, m.spec.num_classes) for m in models}
    if len(specs) > 1:
        raise UserError("the checkpoints disagree in input size or number of classes; an ensemble needs "
                        "networks trained for the same task")
    input_size, num_classes = specs.pop()
    stats = [_stats_of(meta) for _, meta in loaded]
    for path, st in zip(paths, stats):
        if st is None:
            reporter.message(f"{path} carries no training mean; using the mean of {data} itself")
    split = open_eval_split(data, input_size, ten_crop, next((st for st in stats if st is not None), None))
    if len(split.classes) != num_classes:
        raise UserError(f"{data} has {len(split.classes)} class folders but the network has {num_classes} outputs; "
                        "pass the split the network was trained for")
    finishers, own_mean = [], None
    for st in stats:
        if st is None:  # the folder's own mean (computed once, cached beside the data)
            if own_mean is None:
                own_mean = split.pipeline if split.stats is not None and all(x is None for x in stats) else \
                    _pipeline(_folder_stats(split), split)
            finishers.append(own_mean.finish)
        else:
            finishers.append((split.pipeline if st is split.stats else _pipeline(st, split)).finish)
    loader = make_loader(split, batch_size=batch_size, shuffle=False, workers=workers, seed=0, drop_last=False,
                         device=device, finish=False)
    loader.set_epoch(0)
    reporter.start(1, 1, len(loader))
    reporter.begin_epoch(1, 0)
    top1 = top5 = images = skipped = 0
    t0 = time.perf_counter()
    for i, (x, labels, bad) in enumerate(loader):
        skipped += int(bad)
        if len(labels) == 0:
            continue
        probs = ensemble_probabilities(models, x, finishers)
        c1, c5 = topk_correct(probs, labels.to(probs.device))
        top1, top5, images = top1 + c1, top5 + c5, images + len(labels)
        reporter.step(1, i, math.nan, math.nan, images / max(time.perf_counter() - t0, 1e-9))
    reporter.close()
    if images == 0:
        raise UserError(f"{data} holds no readable images; pass a folder of class subfolders with images")
    return {"top1_error": 1 - top1 / images, "top5_error": 1 - top5 / images, "images": images,
            "views": 10 if ten_crop else 1, "checkpoints": [str(p) for p in paths],
            "presets": [m.spec.name for m in models], "skipped": skipped}
