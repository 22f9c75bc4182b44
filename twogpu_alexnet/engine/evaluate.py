"""Top-1 / top-5 error of one network or an ensemble, with one view or the paper's ten.

Ten views: the four corner and the centre crops and their reflections; the network's softmax is
averaged over the views. Several checkpoints: their softmax outputs are averaged too (the paper's
"5 CNNs" row averages five networks' predictions). Each checkpoint may be a training checkpoint or a
plain state dict in either layout; it runs on one device as the grouped executor (the same function
as two towers).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UserError
from .inference import eval_split, load_network, read_checkpoint, torch_device
from .metrics import topk_correct


def default_device() -> str:
    return str(torch_device("auto"))


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
             batch_size: int = 64, workers: int | None = 0, images: int | None = None, seed: int = 0,
             progress=None, header=None) -> dict:
    """Top-1 and top-5 error (fractions) of the checkpoints' averaged softmax on ``data``: a store made by
    ``prepare`` or a folder of class subfolders, read as training reads its validation split.

    Each network sees the images minus its own training mean (stored in training checkpoints; a plain
    state dict gets the mean of ``data`` itself, and ``notes`` say so). ``images``: a fixed, seeded subset
    of that many images (the same subset as ``train.val_images`` with the same seed). ``header(dict)`` is
    called once everything is checked, before the first batch; ``progress(done, total)`` counts images.
    ``workers``: loader processes (None: every core). Returns ``{"top1_error", "top5_error", "images",
    "views", "checkpoints", "presets", "device", "skipped", "notes"}``.
    """
    from ..data import make_loader
    from ..data.pool import worker_count
    from ..data.split import take_subset
    from ..data.transforms import Pipeline
    from .inference import check_classes, class_names

    paths = [Path(c) for c in ([checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else checkpoints)]
    if not paths:
        raise UserError("pass at least one --checkpoint")
    if not Path(data).is_dir():
        raise UserError(f"--data {data} is not a folder; pass a store made by prepare or a folder whose "
                        "subfolders are the classes")
    device = torch_device(device)
    loaded = [load_network(read_checkpoint(p, preset), device=device) for p in paths]
    models = [m for m, _ in loaded]
    if len({(m.spec.input_size, m.spec.num_classes) for m in models}) > 1:
        raise UserError("the checkpoints disagree in input size or number of classes; an ensemble needs "
                        "networks trained for the same task")
    notes = [f"{ck.path} carries no training mean; using the mean of {data} itself"
             for _, ck in loaded if ck.stats is None]
    first = next((ck.stats for _, ck in loaded if ck.stats is not None), None)
    split = eval_split(data, models[0].spec.input_size, views=10 if ten_crop else 1, stats=first)
    for _, ck in loaded:
        check_classes(ck, split.classes, data)
    if all(class_names(ck) is None for _, ck in loaded):
        notes.append("the checkpoint carries no class names (an older run or a plain state dict): the class "
                     f"folders of {data} are taken to be the network's classes in sorted order")
    folder_mean = split.stats if first is None else None
    if folder_mean is not None and split.source == "imagefolder":       # say where the folder's mean is kept
        from ..data.stats import cache_path_for

        cached = cache_path_for(split.dataset.source.root, split.dataset.source.size)
        if cached.is_file():
            notes.append(f"the mean of {data} is cached in {cached} ({cached.stat().st_size / 2**20:.1f} MiB)")
    finishers = []
    for _, ck in loaded:  # each network sees its own training mean (a plain state dict: the data's)
        stats = ck.stats
        if stats is None:
            folder_mean = folder_mean or eval_split(data, split.input_size).stats   # computed once, cached
            stats = folder_mean
        pipe = split.pipeline if stats is split.stats else \
            Pipeline(stats, split.pipeline.geometry, train=False, views=split.views)
        finishers.append(pipe.finish)
    total = len(split.dataset)
    split = take_subset(split, images, seed)
    info = {"checkpoints": [str(p) for p in paths], "presets": [m.spec.name for m in models], "device": str(device),
            "views": split.views, "images_total": total, "images_chosen": len(split.dataset), "notes": notes}
    if header:
        header(info)
    loader = make_loader(split, batch_size=batch_size, shuffle=False,
                         workers=0 if workers == 0 else worker_count(workers), seed=0, drop_last=False,
                         device=device, finish=False)
    counts = _count(models, loader, finishers, progress, len(split.dataset), data)
    return counts | {k: info[k] for k in ("views", "checkpoints", "presets", "device", "notes")}


def _count(models, loader, finishers, progress, total: int, data) -> dict:
    """Top-1 / top-5 error of the ensemble over one pass of ``loader`` (uint8 views on the models' device)."""
    loader.set_epoch(0)
    top1 = top5 = images = skipped = 0
    for x, labels, bad in loader:
        skipped += int(bad)
        if len(labels):
            probs = ensemble_probabilities(models, x, finishers)
            c1, c5 = topk_correct(probs, labels.to(probs.device))
            top1, top5, images = top1 + c1, top5 + c5, images + len(labels)
        if progress:
            progress(images + skipped, total)
    if images == 0:
        raise UserError(f"{data} holds no readable images; pass a store made by prepare or a folder of class "
                        "subfolders with images")
    return {"top1_error": 1 - top1 / images, "top5_error": 1 - top5 / images, "images": images, "skipped": skipped}
