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

Writing: a temporary file in the same folder, flushed and fsynced, then ``os.replace`` over the name
and an fsync of the folder. ``last.pt`` and ``best.pt`` are hard links to (or copies of) the epoch
file, replaced the same way. A write that fails (a full disk) removes its temporary file and raises a
UserError; the files written before stay as they were.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .rundir import write_error

FORMAT = "twogpu-alexnet/checkpoint-1"
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt$")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj, path: "str | os.PathLike") -> Path:
    """``torch.save(obj)`` to ``path`` via a temporary file, fsync and rename: ``path`` is either the
    old file or the complete new one, never a partial write."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def atomic_link(src: Path, dst: Path) -> None:
    """Make ``dst`` the same content as ``src`` (a hard link, or a copy), replacing it atomically."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        if tmp.exists():
            tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(dst.parent)


def load_checkpoint(path: "str | os.PathLike") -> dict:
    """A training checkpoint written by this package, loaded with ``weights_only=True`` on the cpu.

    A missing, truncated or foreign file raises UserError saying what it is.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a .pt file written by `twogpu-alexnet train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or pickled objects weights_only refuses
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable checkpoint (truncated or not a torch file: {reason}); "
                        "use another checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a twogpu-alexnet training checkpoint; "
                        "pass a checkpoints/*.pt file from a run folder")
    return payload


def epoch_files(folder: Path) -> list[Path]:
    """``epoch_NNN.pt`` files in ``folder``, newest epoch first."""
    found = [(int(m.group(1)), p) for p in folder.glob("epoch_*.pt") if (m := _EPOCH_FILE.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_latest(run_dir: "str | os.PathLike") -> tuple[dict, Path, list[str]]:
    """The newest good checkpoint of a run: ``last.pt``, else the newest readable ``epoch_NNN.pt``.

    Returns (payload, path, notes); ``notes`` says which files were unreadable and skipped.
    """
    folder = Path(run_dir) / "checkpoints"
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


def save_run_checkpoint(run_dir: "str | os.PathLike", payload: dict, *, epoch_done: int | None,
                        is_best: bool, keep_last: int) -> Path:
    """Write ``payload`` as the run's newest checkpoint.

    ``epoch_done``: the epoch just finished (writes ``epoch_NNN.pt`` and prunes all but the newest
    ``keep_last`` of them), or None for a mid-epoch save (``last.pt`` only). ``is_best`` also points
    ``best.pt`` at it. Returns the path of ``last.pt``.
    """
    try:
        return _save_run_checkpoint(Path(run_dir), payload, epoch_done, is_best, keep_last)
    except OSError as exc:  # a full disk, a quota, a file system gone read-only: the older files are intact
        raise write_error(exc, f"a checkpoint in {Path(run_dir) / 'checkpoints'}", run_dir) from None


def _save_run_checkpoint(run_dir: Path, payload: dict, epoch_done: int | None, is_best: bool,
                         keep_last: int) -> Path:
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "format": FORMAT}
    last = folder / "last.pt"
    if epoch_done is None:
        atomic_save(payload, last)
        if is_best:
            atomic_link(last, folder / "best.pt")
        return last
    epoch_path = atomic_save(payload, folder / f"epoch_{epoch_done:03d}.pt")
    atomic_link(epoch_path, last)
    if is_best:
        atomic_link(epoch_path, folder / "best.pt")
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
