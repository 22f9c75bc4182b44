"""``metrics.jsonl``: one JSON object per line, appended as training goes, and top-k error counting.

Step lines: ``{"kind": "step", "epoch", "step", "loss", "lr", "img_s"}``.
Epoch lines: ``{"kind": "epoch", "epoch", "train_loss", "val_top1_error", "val_top5_error", "lr",
"time_s", "skipped", "nonfinite_skipped", "color_score_tower0", "color_score_tower1"}`` (errors are
fractions 0..1; colour scores are null when the analysis package is not available).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from .. import files
from .rundir import resume_hint


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """How many rows of ``logits`` (or probabilities) have the label among their k highest, per k."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices  # N x k_max, best first
    hit = top == labels.view(-1, 1)
    return [int(hit[:, :min(k, k_max)].any(dim=1).sum()) for k in ks]


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


class MetricsLog:
    """Appends records to ``path`` (one JSON object a line, flushed each time); a no-op when
    ``enabled`` is False (distributed ranks other than 0)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        # appended without following a link planted at the name; a full disk is one sentence (the
        # checkpoints are intact; a resumed run writes these lines again)
        files.append_text(self.path, json.dumps({k: _clean(v) for k, v in record.items()}) + "\n",
                          then=resume_hint(self.path.parent), error_folder=self.path.parent)

    def truncate_after(self, epochs_done: int, step: int) -> None:
        """Drop records a resumed run will write again: step lines past ``step`` and epoch lines past
        ``epochs_done`` (when resuming from an earlier checkpoint than the last one written)."""
        if not self.enabled:
            return
        files.refuse_link(self.path, "the metrics")  # also a folder at the name
        if not self.path.exists():
            return
        kept = []
        if epochs_done or step:
            for line in files.read_plain_text(self.path, "the metrics").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if not isinstance(record, dict):
                    continue
                if record.get("kind") == "step" and _number(record.get("step")) > step:
                    continue
                if record.get("kind") == "epoch" and _number(record.get("epoch")) > epochs_done:
                    continue
                kept.append(line)
        files.write_atomic(self.path, "".join(line + "\n" for line in kept), then=resume_hint(self.path.parent),
                           error_folder=self.path.parent)


def _number(value) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def read_metrics(path: str | os.PathLike) -> tuple[list[dict], int]:
    """(records, unreadable lines) of a ``metrics.jsonl`` file, in file order.

    A line that is not a JSON object (e.g. the last one of a run killed mid-write) is counted and
    skipped, so a reader never fails on a file the trainer may still be appending to.
    """
    records, bad = [], 0
    for line in Path(path).read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            records.append(row)
        else:
            bad += 1
    return records, bad
