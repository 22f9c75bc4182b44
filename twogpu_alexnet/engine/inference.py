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
    """``device`` (e.g. "cpu", "cuda:1") as a torch.device that exists here, or one sentence saying why not.

    None or ``"auto"``: cuda:0 when a GPU is present, else the CPU (the default of every command).
    """
    if device is None or device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} needs a CUDA GPU and none is available here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s); use cuda:0 .. "
                        f"cuda:{torch.cuda.device_count() - 1}")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device} is not supported; use cpu, cuda or cuda:N")
    return device


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
    """ONE split (a store made by ``prepare`` or a folder of class subfolders) as the network must see it:
    data/ builds it (:func:`twogpu_alexnet.data.split.inference_split`); ``stats`` (the training mean)
    defaults to the data's own."""
    from ..data.split import inference_split

    return inference_split(data, input_size, views=views, stats=stats)


def class_names(ck: Checkpoint) -> list[str] | None:
    """The class names the checkpoint was trained on (folder names / wnids), or None (an older checkpoint or a
    plain state dict)."""
    names = ck.meta.get("class_names")
    return [str(n) for n in names] if isinstance(names, (list, tuple)) and names else None


def check_classes(ck: Checkpoint, classes: list[str], data) -> None:
    """One sentence when the data's classes are not the ones the network was trained on (names when the
    checkpoint carries them, else the count)."""
    names = class_names(ck)
    if names is not None and list(classes) != names:
        extra = [c for c in classes if c not in names]
        differ = (f"{len(extra)} of its {len(classes)} class folders are unknown to the network (first: {extra[0]!r})"
                  if extra else f"its {len(classes)} class folders are not the network's {len(names)} classes "
                  "in the same order")
        raise UserError(f"{data} is not the data {ck.path} was trained on: {differ}; pass the split of the classes "
                        f"it was trained on (first of them: {names[0]!r}) or a checkpoint trained on these classes")
    if len(classes) != ck.meta["num_classes"]:
        raise UserError(f"{data} has {len(classes)} class folders but the network {ck.path} has "
                        f"{ck.meta['num_classes']} outputs; pass the split the network was trained for")


def open_for_inference(checkpoint, data, *, preset: str | None = None, device="cpu", views: int = 1):
    """(model, checkpoint, split): the network in eval mode on ``device`` and ``data`` as it must see it.

    ``split.stats is checkpoint.stats`` tells whether the training mean was used (else the data's own).
    A split whose classes are not the checkpoint's is refused in one sentence.
    """
    model, ck = load_network(checkpoint, preset, device)
    split = eval_split(data, model.spec.input_size, views=views, stats=ck.stats)
    check_classes(ck, split.classes, data)
    return model, ck, split
