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


def read_checkpoint(path: str | os.PathLike, preset: str | None = None) -> Checkpoint:
    """The weights in ``path``; the preset is ``preset`` when given, else the checkpoint's, else the matching one."""
    from ..data import Stats

    state, meta = load_weights(path)
    name = preset or meta.get("preset") or infer_preset(state)
    get_spec(name)  # an unknown --preset is a UserError naming the choices
    d = meta.get("data_stats")
    return Checkpoint(Path(path), state, name, meta, Stats.from_dict(d) if isinstance(d, dict) else None)


def torch_device(device, option: str = "--device") -> torch.device:
    """``device`` (e.g. "cpu", "cuda:1") as a torch.device that exists here, or one sentence saying why not
    (naming ``option``, the command-line option that gave it): the one device checker, model.devices.

    None or ``"auto"``: cuda:0 when a GPU is present, else the CPU (the default of every command).
    """
    if device is None or device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return check_device(device, what=option, kinds=("cpu", "cuda"))


def load_network(checkpoint: str | os.PathLike | Checkpoint, preset: str | None = None,
                 device="cpu") -> tuple[torch.nn.Module, Checkpoint]:
    """The checkpoint's weights as a grouped model on ``device`` in eval mode (the same function as two towers)."""
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint, preset)
    model = build_model(ck.preset, mode="grouped", device=torch_device(device), num_classes=ck.meta["num_classes"])
    try:
        load_into(model, ck.state)
    except UserError as exc:
        raise UserError(f"{ck.path}: {exc}") from None
    return model.eval(), ck


def eval_split(data: str | os.PathLike, input_size: int, *, views: int = 1, stats=None):
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


def check_classes(ck: Checkpoint, classes: list[str], data, count: bool = True) -> None:
    """One sentence when the data's classes are not the ones the network was trained on: their names when the
    checkpoint carries them, else (with ``count``) their number against the network's outputs."""
    names = class_names(ck)
    if names is not None and list(classes) != names:
        extra = [c for c in classes if c not in names]
        differ = (f"{len(extra)} of its {len(classes)} class folders are unknown to the network (first: {extra[0]!r})"
                  if extra else f"its {len(classes)} class folders are not the network's {len(names)} classes "
                  "in the same order")
        raise UserError(f"{data} is not the data {ck.path} was trained on: {differ}; pass the split of the classes "
                        f"it was trained on (first of them: {names[0]!r}) or a checkpoint trained on these classes")
    if count and len(classes) != ck.meta["num_classes"]:
        raise UserError(f"{data} has {len(classes)} class folders but the network {ck.path} has "
                        f"{ck.meta['num_classes']} outputs; pass the split the network was trained for")


def open_for_inference(checkpoint, data, *, preset: str | None = None, device="cpu", views: int = 1,
                       count: bool = True):
    """(model, checkpoint, split): the network in eval mode on ``device`` and ``data`` as it must see it.

    ``split.stats is checkpoint.stats`` tells whether the training mean was used (else the data's own).
    A split whose classes are not the checkpoint's is refused in one sentence (``count``: also a split
    with another number of classes when the checkpoint names none).
    """
    model, ck = load_network(checkpoint, preset, device)
    split = eval_split(data, model.spec.input_size, views=views, stats=ck.stats)
    check_classes(ck, split.classes, data, count)
    return model, ck, split


# ------------------------------------------------------------------------------------ predict and export

@torch.no_grad()
def predict(checkpoint, images, *, preset: str | None = None, device=None, top: int = 5, data=None,
            ten_crop: bool = False) -> dict:
    """The ``top`` classes (with softmax probabilities) of each image file, as evaluation sees it.

    The images are centred with the checkpoint's training mean; weights without one (a plain state dict)
    need ``data``, the split they were trained on (its mean, and its class folder names). Class names come
    from the checkpoint, else from ``data``, else they are "class N". ``data`` of other classes than the
    checkpoint's is refused. Unreadable files are listed in ``skipped``.
    """
    from ..data.decode import CorruptImage, decode_rgb, read_bytes, resize_center_crop
    from ..data.transforms import Pipeline, geometry_for

    files = [Path(f) for f in images]
    if not files:
        raise UserError("pass at least one image file to predict")
    model, ck = load_network(read_checkpoint(checkpoint, preset), device=torch_device(device))
    stats, names = ck.stats, class_names(ck)
    if data is not None:
        split = eval_split(data, model.spec.input_size, stats=stats)
        check_classes(ck, split.classes, data)
        stats, names = split.stats, names or split.classes
    if stats is None:
        raise UserError(f"{ck.path} carries no training mean (a plain state dict); pass --data with the split it "
                        "was trained on (a store or class folders), so the images are centred as in training")
    names = names or [f"class {i}" for i in range(ck.meta["num_classes"])]
    geometry = geometry_for(model.spec.input_size)
    pipeline = Pipeline(stats, geometry, train=False, color_noise="none", views=10 if ten_crop else 1)
    device = next(model.parameters()).device
    k = min(top, len(names))
    results, skipped = [], []
    for f in files:
        try:
            if not f.is_file():
                raise CorruptImage("not a file")
            img = resize_center_crop(decode_rgb(read_bytes(f)), geometry.image_size)
        except (CorruptImage, OSError) as exc:
            skipped.append({"path": str(f), "reason": str(exc) or type(exc).__name__})
            continue
        view, _ = pipeline(img)
        x = pipeline.finish(view.unsqueeze(0).to(device))
        logits = model(x.flatten(0, 1) if x.dim() == 5 else x).float()
        probs = torch.softmax(logits, 1).mean(0)
        p, idx = probs.topk(k)
        results.append({"image": str(f), "top": [{"class": names[i], "index": int(i), "probability": float(q)}
                                                 for q, i in zip(p.tolist(), idx.tolist(), strict=True)]})
    if not results:
        first = skipped[0]
        raise UserError(f"none of the {len(files)} image files could be read (first: {first['path']}: "
                        f"{first['reason']}); pass JPEG or PNG photos")
    return {"checkpoint": str(ck.path), "preset": ck.preset, "device": str(device), "classes": len(names),
            "class_names_from": "checkpoint" if class_names(ck) else "data" if data is not None else "none",
            "predictions": results, "skipped": skipped}


def export_weights(checkpoint, out, *, layout: str = "two-tower", preset: str | None = None) -> dict:
    """Write ``checkpoint``'s weights alone (no optimizer, no random states) to ``out``: a dict with ``model``
    (the state dict in ``layout``), ``preset``, ``class_names``, ``num_classes``, ``layout`` and
    ``data_stats`` (the training mean and RGB PCA, so ``predict`` centres images as in training). The
    file loads with ``torch.load(..., weights_only=True)`` and every command that takes a checkpoint reads it.
    """
    from ..model.load import to_layout
    from ..spec import get_spec

    if layout not in ("two-tower", "grouped"):
        raise UserError(f"--layout {layout!r} is not one of two-tower, grouped")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name the file to write, e.g. {out / 'weights.pt'}")
    ck = read_checkpoint(checkpoint, preset)
    if layout == "two-tower" and get_spec(ck.preset).towers == 1:
        raise UserError(f"preset {ck.preset} has one tower and no two-tower layout; use --layout grouped")
    state = {k: v.detach().cpu().contiguous() for k, v in to_layout(ck.state, layout).items()}
    payload = {"model": state, "preset": ck.preset, "num_classes": ck.meta["num_classes"], "layout": layout,
               "class_names": class_names(ck), "data_stats": ck.stats.to_dict() if ck.stats is not None else None}
    _save_atomic(payload, out)
    params = sum(v.numel() for v in state.values())
    return {"out": str(out), "checkpoint": str(ck.path), "preset": ck.preset, "layout": layout, "parameters": params,
            "bytes": out.stat().st_size, "class_names": payload["class_names"] is not None,
            "data_stats": payload["data_stats"] is not None}


def _save_atomic(obj, path: Path) -> None:
    """torch.save through the one writer (a temporary file in the same folder, renamed over ``path``)."""
    from .. import files

    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}); choose a folder you can write to") from None
    files.write_atomic(path, lambda f: torch.save(obj, f), then="choose another --out or run the command again")
