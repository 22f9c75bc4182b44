"""The learned part of conv1: ``L(t) = W(t) - c(t) * W0``, with ``c(t)`` from the run's SGD history.

``torch.optim.SGD`` with momentum ``m``, weight decay ``d`` and learning rate ``lr_t`` (dampening 0,
no Nesterov: the trainer's optimizer) updates a weight as::

    v_t = m * v_{t-1} + g_t + d * w_{t-1}        (v_0 = 0: torch's first buffer is g_1 + d * w_0)
    w_t = w_{t-1} - lr_t * v_t

Everything here is linear in ``(w_0, g_1, g_2, ...)``, so ``w_t = c_t * w_0 + L_t`` exactly, where
``L_t`` is what the gradients wrote (the same recurrence started from ``w_0 = 0``) and ``(c_t, b_t)``
follow the recurrence with no gradient: ``b_t = m * b_{t-1} + d * c_{t-1}``, ``c_t = c_{t-1} - lr_t * b_t``,
``c_0 = 1``, ``b_0 = 0``. Within a stretch of steps with constant ``(lr, m, d)`` that is a 2 x 2 matrix
power. ``W - W0`` would hold ``(c_t - 1) * W0`` too, which over a long run is ``-W0`` at nearly full
strength; ``L`` does not.

The history comes from the run folder: ``metrics.jsonl``'s step lines (the trainer logs one at least at
the last step of every epoch, with its epoch and the lr in force) give the steps taken at each lr; the
schedule in the config turns the logged lr (fc8's) into conv1's; momentum and decay are the
checkpoint's optimizer settings for conv1's weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def init_scale(segments) -> float:
    """``c(t)``: the factor on ``W0`` after ``segments``, each ``(steps, lr, momentum, weight_decay)`` in order."""
    state = torch.tensor([1.0, 0.0], dtype=torch.float64)  # (c, b)
    for steps, lr, momentum, decay in segments:
        if steps <= 0:
            continue
        step = torch.tensor([[1 - lr * decay, -lr * momentum], [decay, momentum]], dtype=torch.float64)
        state = torch.linalg.matrix_power(step, int(steps)) @ state
    return float(state[0])


def learned_part(w, w0, scale: float) -> torch.Tensor:
    """``W - scale * W0`` in float64."""
    return torch.as_tensor(w, dtype=torch.float64) - scale * torch.as_tensor(w0, dtype=torch.float64)


def movement(learned, w0) -> torch.Tensor:
    """Per kernel ``||L|| / ||W0||`` (0 where ``W0`` is all zero)."""
    num = torch.as_tensor(learned, dtype=torch.float64).flatten(1).norm(dim=1)
    den = torch.as_tensor(w0, dtype=torch.float64).flatten(1).norm(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def _conv1_ratio(config: dict, epoch: int) -> float:
    """conv1's lr over the logged lr (fc8's weights) in ``epoch``: 1 except in the original schedule."""
    from ..engine.config import ScheduleConfig
    from ..engine.schedule import Schedule

    fields = {k: v for k, v in (config.get("schedule") or {}).items() if k in ScheduleConfig.__dataclass_fields__}
    schedule = Schedule(ScheduleConfig(**fields))
    fc8 = schedule.factor(epoch, "fc8")
    return schedule.factor(epoch, "conv1") / fc8 if fc8 else 1.0


def sgd_settings(meta: dict) -> tuple[float, float]:
    """(momentum, weight decay) of conv1's weights: the checkpoint's optimizer group, else its config."""
    for group in (meta.get("optimizer") or {}).get("groups", []):
        if group.get("layer") == "conv1" and group.get("kind") == "weight" and "momentum" in group:
            return float(group["momentum"]), float(group["weight_decay"])
    train = (meta.get("config") or {}).get("train") or {}
    return float(train.get("momentum", 0.9)), float(train.get("weight_decay", 5e-4))


def step_lines(metrics: Path) -> list[dict]:
    """The step lines of a metrics.jsonl (malformed lines skipped), in file order."""
    lines = []
    if not metrics.is_file():
        return lines
    for text in metrics.read_text().splitlines():
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("kind") == "step" and isinstance(record.get("step"), int):
            lines.append(record)
    return lines


def history(run_dir, step: int, config: dict, momentum: float, decay: float) -> tuple[list[tuple], bool]:
    """conv1's SGD history up to ``step``: (segments for :func:`init_scale`, exact?).

    Exact when the run's ``metrics.jsonl`` has step lines reaching ``step``. Otherwise the missing
    steps are taken at the config's lr (``train.lr`` times the schedule's conv1 factor for the last
    known epoch) and the history is marked inexact.
    """
    segments, done, epoch = [], 0, 1
    lines = step_lines(Path(run_dir) / "metrics.jsonl") if run_dir is not None else []
    for record in lines:
        s = record["step"]
        if s > step:
            break
        if s <= done:
            continue
        epoch = int(record.get("epoch") or epoch)
        lr = float(record["lr"]) * _conv1_ratio(config, epoch)
        segments.append((s - done, lr, momentum, decay))
        done = s
    exact = done == step
    if not exact:
        lr = float(((config.get("train") or {}).get("lr")) or 0.01) * _conv1_ratio(config, epoch)
        segments.append((step - done, lr, momentum, decay))
    return segments, exact


def run_folder_of(checkpoint) -> Path | None:
    """The run folder of ``RUN/checkpoints/NAME.pt``, else None."""
    path = Path(checkpoint)
    return path.parent.parent if path.parent.name == "checkpoints" else None


def checkpoint_scale(checkpoint, meta: dict) -> dict | None:
    """``{"init_scale", "exact", "steps"}`` for a training checkpoint's ``meta`` (None without a step count)."""
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    momentum, decay = sgd_settings(meta)
    segments, exact = history(run_folder_of(checkpoint) if checkpoint is not None else None, step,
                              meta.get("config") or {}, momentum, decay)
    return {"init_scale": init_scale(segments), "exact": exact, "steps": step}
