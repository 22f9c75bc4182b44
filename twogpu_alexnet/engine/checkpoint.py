"""Checkpoints that lose nothing, written so a crash never leaves a broken one in place.

A run folder keeps ``checkpoints/last.pt`` (the newest state: each epoch, and on SIGINT/SIGTERM mid
epoch), ``epoch_NNN.pt`` (the last ``keep_last`` epochs) and ``best.pt`` (the lowest validation top-1
error). Each is a dict loadable with ``torch.load(path, weights_only=True)``:

``model`` (two-tower state dict, cpu tensors), ``preset``, ``num_classes``, ``epoch`` (the epoch in
progress, from 1), ``batch`` (the next batch index in it; 0 with ``epoch`` + 1 after a finished
epoch), ``step`` (global), ``optimizer`` (:func:`~.optim.optimizer_state`), ``scheduler``, ``scaler``,
``rng`` (one entry per rank: Python, numpy, torch, CUDA states), ``data`` (seed, epoch, batch: the
loader's order and augmentation are functions of these), ``progress`` (the running epoch sums),
``best_val_top1_error``, ``config`` (the resolved config as nested dicts), ``format`` (this version).

Writing goes through :func:`twogpu_alexnet.files.write_atomic`: a temporary file made by
``mkstemp`` in the same folder, flushed and fsynced, then ``os.replace`` over the name and an fsync
of the folder; a symbolic link planted at a name is refused. ``last.pt``, ``best.pt`` and
``epoch_NNN.pt`` are separate files (copies, never hard links), so writing one name -- also ``cp
epoch_001.pt last.pt``, the manual roll-back -- changes no other. A write that fails (a full disk, a
read-only folder) removes its temporary file and raises a UserError; the files written before stay
as they were.

Reading: :func:`load_checkpoint` is strict (the entries a resume needs, finite weights) on top of
:func:`twogpu_alexnet.model.load.read_file`, the one place a checkpoint file is loaded.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .. import files
from ..errors import UserError
from ..model.load import check_finite, read_file
from .rundir import resume_hint, write_error

FORMAT = "twogpu-alexnet/checkpoint-1"
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt$")


def atomic_save(obj, path: str | os.PathLike, then: str | None = None) -> Path:
    """``torch.save(obj)`` to ``path`` via a temporary file, fsync and rename: ``path`` is either the
    old file or the complete new one, never a partial write."""
    return files.write_atomic(path, lambda f: torch.save(obj, f), what=f"a checkpoint in {Path(path).parent}",
                              then=then, error_folder=Path(path).parent.parent if then else None)


def atomic_copy(src: Path, dst: Path, then: str | None = None) -> Path:
    """Make ``dst`` a separate copy of ``src`` (never a hard link: no later write to one changes the
    other), replacing it atomically."""
    def copy(f) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, f, 16 << 20)

    return files.write_atomic(dst, copy, what=f"a checkpoint in {dst.parent}", then=then,
                              error_folder=dst.parent.parent if then else None)


# what a training checkpoint must hold to be resumed, and the types
REQUIRED = {"model": Mapping, "epoch": int, "batch": int, "step": int, "optimizer": Mapping, "scheduler": Mapping,
            "rng": list, "config": Mapping, "best_val_top1_error": (int, float)}


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A training checkpoint written by this package, loaded with ``weights_only=True`` on the cpu.

    A missing, truncated or foreign file, one without an entry a resume needs, and weights holding
    NaN or infinity raise UserError saying what it is.
    """
    path = Path(path)
    payload = read_file(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a twogpu-alexnet training checkpoint; "
                        "pass a checkpoints/*.pt file from a run folder")
    for key, kind in REQUIRED.items():
        if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
            raise UserError(f"{path} is a damaged training checkpoint (its {key!r} entry is missing or of the wrong "
                            "type); use another checkpoint of the run")
    if not all(isinstance(v, torch.Tensor) for v in payload["model"].values()):
        raise UserError(f"{path} is a damaged training checkpoint (its model holds values that are not tensors); "
                        "use another checkpoint of the run")
    check_finite(payload["model"], path)
    return payload


def epoch_files(folder: Path) -> list[Path]:
    """``epoch_NNN.pt`` files in ``folder``, newest epoch first."""
    found = [(int(m.group(1)), p) for p in folder.glob("epoch_*.pt") if (m := _EPOCH_FILE.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_latest(run_dir: str | os.PathLike, epoch: int | None = None) -> tuple[dict, Path, list[str]]:
    """The newest good checkpoint of a run: ``last.pt``, else the newest readable ``epoch_NNN.pt``;
    with ``epoch``, that epoch's file (the roll-back: ``--resume RUN --from-epoch N``).

    Returns (payload, path, notes); ``notes`` says which files were unreadable and skipped.
    """
    folder = Path(run_dir) / "checkpoints"
    if epoch is not None:
        return _load_epoch(folder, epoch), folder / f"epoch_{epoch:03d}.pt", []
    candidates = [folder / "last.pt"] + epoch_files(folder) if folder.is_dir() else []
    notes: list[str] = []
    for path in candidates:
        if not path.exists():
            continue
        try:
            return load_checkpoint(path), path, notes
        except UserError as exc:
            notes.append(f"skipped {path.name}: {exc}")
    if notes:
        raise UserError(f"no readable checkpoint in {folder} ({'; '.join(notes)}); start a new run instead")
    raise UserError(f"{run_dir} holds no checkpoints/last.pt; --resume takes a run folder written by "
                    "`twogpu-alexnet train`")


def _load_epoch(folder: Path, epoch: int) -> dict:
    path = folder / f"epoch_{epoch:03d}.pt"
    if not path.is_file():
        kept = sorted(int(m.group(1)) for p in epoch_files(folder) if (m := _EPOCH_FILE.search(p.name)))
        have = ", ".join(map(str, kept)) if kept else "none"
        raise UserError(f"--from-epoch {epoch}: {folder} has no epoch_{epoch:03d}.pt (epochs kept: {have}); "
                        "choose one of those")
    payload = load_checkpoint(path)
    if payload["epoch"] != epoch or payload["batch"] != 0:
        raise UserError(f"{path} holds epoch {payload['epoch']}, batch {payload['batch']}, not the end of epoch "
                        f"{epoch}; it was renamed or replaced: choose another --from-epoch")
    return payload


def save_run_checkpoint(run_dir: str | os.PathLike, payload: dict, *, epoch_done: int | None,
                        is_best: bool, keep_last: int) -> Path:
    """Write ``payload`` as the run's newest checkpoint.

    ``epoch_done``: the epoch just finished (writes ``epoch_NNN.pt`` and prunes all but the newest
    ``keep_last`` of them), or None for a mid-epoch save (``last.pt`` only). ``is_best`` also writes
    ``best.pt``. Every name is a separate file. Returns the path of ``last.pt``.
    """
    run_dir = Path(run_dir)
    try:
        return _save_run_checkpoint(run_dir, payload, epoch_done, is_best, keep_last, resume_hint(run_dir))
    except OSError as exc:  # pruning, or making the folder: the older files are intact
        raise write_error(exc, f"a checkpoint in {run_dir / 'checkpoints'}", run_dir) from None


def _save_run_checkpoint(run_dir: Path, payload: dict, epoch_done: int | None, is_best: bool,
                         keep_last: int, then: str) -> Path:
    folder = files.make_folder(run_dir / "checkpoints", "checkpoints")
    payload = {**payload, "format": FORMAT}
    last = folder / "last.pt"
    if epoch_done is None:
        atomic_save(payload, last, then)
        if is_best:
            atomic_copy(last, folder / "best.pt", then)
        return last
    epoch_path = atomic_save(payload, folder / f"epoch_{epoch_done:03d}.pt", then)
    atomic_copy(epoch_path, last, then)
    if is_best:
        atomic_copy(epoch_path, folder / "best.pt", then)
    for old in epoch_files(folder)[max(keep_last, 1):]:
        old.unlink()
    return last


# ---------------------------------------------------------------------------------------------
# Random number generator states (Python, numpy, torch, CUDA), as weights_only-loadable values.

def rng_state() -> dict:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
