"""Checkpoint + folder -> model + evaluation pipeline: the one way evaluation, ``neighbors`` and ``kernels``
read a network and the images it is shown.

A checkpoint is a training checkpoint (its ``model`` is the two-tower state, ``data_stats`` the training
mean and RGB PCA) or a plain state dict in either layout. Images are evaluated as the trainer validates:
shorter side to the stored size, centre crop, the centre view (or the 10 views), minus the training mean
image -- the checkpoint's; for a plain state dict, the folder's own (cached beside it; ``own_mean`` says so).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..model import build_model
from ..model.devices import check_device
from ..model.load import infer_preset, load_into, load_weights
from ..spec import get_spec


@dataclass
class Checkpoint:
    """A checkpoint file read once: the two-tower state, the preset, its metadata and training statistics."""

    path: Path
    state: dict
    preset: str
    meta: dict
    stats: object = None     # data.Stats of the training split, or None for a plain state dict


def read_checkpoint(path: "str | os.PathLike", preset: str | None = None) -> Checkpoint:
    """The weights in ``path``; the preset is ``preset`` when given, else the checkpoint's, else the matching one."""
    from ..data import Stats

    state, meta = load_weights(path)
    name = preset or meta.get("preset") or infer_preset(state)
    get_spec(name)  # an unknown --preset is a UserError naming the choices
    d = meta.get("data_stats")
    return Checkpoint(Path(path), state, name, meta, Stats.from_dict(d) if isinstance(d, dict) else None)


def torch_device(device) -> torch.device:
    """``device`` (e.g. "cpu", "cuda:1") as a torch.device that exists here, or one sentence saying why not."""
    return check_device(device, what="--device", kinds=("cpu", "cuda"))


def load_network(checkpoint: "str | os.PathLike | Checkpoint", preset: str | None = None,
                 device="cpu") -> tuple[torch.nn.Module, Checkpoint]:
    """The checkpoint's weights as a grouped model on ``device`` in eval mode (the same function as two towers)."""
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint, preset)
    model = build_model(ck.preset, mode="grouped", device=torch_device(device), num_classes=ck.meta["num_classes"])
    try:
        load_into(model, ck.state)
    except UserError as exc:
        raise UserError(f"{ck.path}: {exc}") from None
    return model.eval(), ck


def eval_split(data: "str | os.PathLike", input_size: int, *, views: int = 1, stats=None):
    """One folder of class subfolders (``D/<class>/*.JPEG``) as an evaluation split; ``stats`` (the training
    mean) defaults to the statistics of the folder itself."""
    from ..data.folders import list_split
    from ..data.split import FolderSource, Split, SplitDataset, folder_stats
    from ..data.transforms import Pipeline, geometry_for

    geometry = geometry_for(input_size)
    listing = list_split(data, "--data folder").images()     # a folder without image files is a UserError there
    if stats is None or stats.size != geometry.image_size:
        stats = folder_stats(listing, geometry.image_size)     # cached beside the data (or in the user cache)
    pipeline = Pipeline(stats, geometry, train=False, color_noise="none", views=views)
    source = FolderSource(listing, geometry.image_size)
    return Split(list(listing.classes), SplitDataset(source, pipeline), stats, pipeline, "val", "imagefolder",
                 str(data))


def open_for_inference(checkpoint, data, *, preset: str | None = None, device="cpu", views: int = 1):
    """(model, checkpoint, split): the network in eval mode on ``device`` and ``data`` as it must see it.

    ``split.stats is checkpoint.stats`` tells whether the training mean was used (else the folder's own).
    """
    model, ck = load_network(checkpoint, preset, device)
    return model, ck, eval_split(data, model.spec.input_size, views=views, stats=ck.stats)
