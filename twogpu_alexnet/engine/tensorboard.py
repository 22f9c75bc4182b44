"""Optional TensorBoard logging (``log.tensorboard = true``) into ``RUN/tensorboard/``.

The records that go to ``metrics.jsonl`` go here too, as scalars at the global step: per log point
``train/loss``, ``train/lr``, ``train/img_s``; per epoch ``epoch/train_loss``, ``epoch/val_top1_error``,
``epoch/val_top5_error``, ``epoch/lr``, ``epoch/img_s``, ``epoch/color_score_tower0/1`` (of W) and the
colour verdict's numbers (``epoch/learned_color_score_tower0/1``, ``epoch/color_effect_size``,
``epoch/color_p_value``, ``epoch/color_split``; its sentence as the text ``epoch/color_verdict``); images
that epoch-end hooks add (the Figure-3 kernel grid as ``kernels/conv1``). Off, nothing is imported
and nothing is written. ``tensorboard --logdir RUN`` shows a run (or ``--logdir runs`` all of them).

TensorBoard appends to its event file as the run goes, so the file cannot be written whole like the
others (:mod:`..files`); what the one writer guarantees holds here too: the folder is made by
``files.make_folder`` (a link planted at ``RUN/tensorboard`` is refused in one sentence), the event
file's name ends in a random token (nobody can plant a link at it beforehand), and a write the disk
refuses (full, read-only, no permission) is the one ``files.write_error`` sentence.
"""
from __future__ import annotations

import math
import os
import secrets
from pathlib import Path

from .. import files
from ..errors import UserError
from .rundir import resume_hint

INSTALL = "pip install 'twogpu-alexnet[tensorboard]'"
_STEP_KEYS = ("loss", "lr", "img_s")
_EPOCH_KEYS = ("train_loss", "val_top1_error", "val_top5_error", "lr", "img_s",
               "color_score_tower0", "color_score_tower1",  # of W
               # the one colour verdict (analysis.kernels.run_specialization): of the learned part L
               "learned_color_score_tower0", "learned_color_score_tower1", "color_effect_size", "color_p_value",
               "color_split")


def summary_writer_class():
    """torch's ``SummaryWriter``, or a UserError naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(f"log.tensorboard = true needs the tensorboard package; install it with {INSTALL} "
                        "or set log.tensorboard=false") from None
    return SummaryWriter


def check_available(enabled: bool) -> None:
    """Fail before any data is read when TensorBoard is asked for and missing."""
    if enabled:
        summary_writer_class()


class Board:
    """Writes run records to a TensorBoard writer; without one (logging off) every call does nothing.

    ``folder`` (the event files' folder) and ``then`` (what to do after a failed write) complete the
    :func:`files.write_error` sentence."""

    def __init__(self, writer=None, folder: str | os.PathLike | None = None, then: str | None = None):
        self.writer, self.folder, self.then = writer, folder, then

    def record(self, record: dict, step: int) -> None:
        """A ``metrics.jsonl`` record (``kind`` step or epoch) as scalars at the global ``step``."""
        if self.writer is None:
            return
        prefix, keys = ("train", _STEP_KEYS) if record["kind"] == "step" else ("epoch", _EPOCH_KEYS)
        with self._writing():
            for key in keys:
                value = record.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)
            if isinstance(record.get("color_verdict"), str):  # the same sentence as metrics.jsonl and kernels
                self.writer.add_text("epoch/color_verdict", record["color_verdict"], step)
            self.writer.flush()

    def image(self, tag: str, image, step: int) -> None:
        """A 3 x H x W image with values in [0, 1] (the epoch-end kernel grid: ``kernels/conv1``)."""
        if self.writer is None:
            return
        with self._writing():
            self.writer.add_image(tag, image, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            with self._writing():
                writer.close()

    def _writing(self):
        return _WriteErrors(self.folder, self.then)


class _WriteErrors:
    """Turns an OSError of the event writer (which may surface at a later call) into files.write_error."""

    def __init__(self, folder, then):
        self.folder, self.then = folder, then

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, OSError):
            raise files.write_error(exc, "the TensorBoard events", self.folder or "the run folder", self.then) from None
        return False


def open_board(run_dir: str | os.PathLike, enabled: bool, purge_step: int | None = None, writer_class=None) -> Board:
    """A :class:`Board` writing to ``run_dir/tensorboard`` (``enabled``), else one that does nothing.

    ``purge_step``: a resumed run's first step; TensorBoard hides what an earlier invocation logged
    from there on (the resumed run logs it again). ``writer_class`` replaces ``SummaryWriter``.
    """
    if not enabled:
        return Board()
    writer_class = writer_class or summary_writer_class()
    folder = Path(run_dir) / "tensorboard"
    then = resume_hint(run_dir)
    with _WriteErrors(folder, then):
        files.make_folder(folder, "TensorBoard events")  # a link planted at the folder is refused
        writer = writer_class(log_dir=str(folder), purge_step=purge_step,
                              filename_suffix=f".{secrets.token_hex(8)}")  # a name nobody can plant a link at
    return Board(writer, folder, then)
