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
from .inference import eval_split, load_network, read_checkpoint, torch_device
from .metrics import topk_correct
from .progress import Reporter


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
    from ..data.transforms import Pipeline

    reporter = reporter or Reporter()
    paths = [Path(c) for c in ([checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else checkpoints)]
    if not paths:
        raise UserError("pass at least one --checkpoint")
    if not Path(data).is_dir():
        raise UserError(f"--data {data} is not a folder; pass a folder whose subfolders are the classes")
    device = torch_device(device or default_device())
    loaded = [load_network(read_checkpoint(p, preset), device=device) for p in paths]
    models = [m for m, _ in loaded]
    if len({(m.spec.input_size, m.spec.num_classes) for m in models}) > 1:
        raise UserError("the checkpoints disagree in input size or number of classes; an ensemble needs "
                        "networks trained for the same task")
    for _, ck in loaded:
        if ck.stats is None:
            reporter.message(f"{ck.path} carries no training mean; using the mean of {data} itself")
    first = next((ck.stats for _, ck in loaded if ck.stats is not None), None)
    split = eval_split(data, models[0].spec.input_size, views=10 if ten_crop else 1, stats=first)
    if len(split.classes) != models[0].spec.num_classes:
        raise UserError(f"{data} has {len(split.classes)} class folders but the network has "
                        f"{models[0].spec.num_classes} outputs; pass the split the network was trained for")
    folder_mean = split.stats if first is None else None
    finishers = []
    for _, ck in loaded:  # each network sees its own training mean (a plain state dict: the folder's)
        stats = ck.stats
        if stats is None:
            folder_mean = folder_mean or eval_split(data, split.input_size).stats   # computed once, cached
            stats = folder_mean
        pipe = split.pipeline if stats is split.stats else \
            Pipeline(stats, split.pipeline.geometry, train=False, views=split.views)
        finishers.append(pipe.finish)
    loader = make_loader(split, batch_size=batch_size, shuffle=False, workers=workers, seed=0, drop_last=False,
                         device=device, finish=False)
    return _count(models, loader, finishers, reporter, data) | {
        "views": split.views, "checkpoints": [str(p) for p in paths], "presets": [m.spec.name for m in models]}


def _count(models, loader, finishers, reporter: Reporter, data) -> dict:
    """Top-1 / top-5 error of the ensemble over one pass of ``loader`` (uint8 views on the models' device)."""
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
    return {"top1_error": 1 - top1 / images, "top5_error": 1 - top5 / images, "images": images, "skipped": skipped}
