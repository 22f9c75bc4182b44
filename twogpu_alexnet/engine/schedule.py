"""Learning-rate schedules, applied once per epoch (epochs count from 1).

- ``plateau`` (the paper): divide every lr by 10 when the validation top-1 error has stopped
  improving for ``patience`` epochs, at most ``max_drops`` (3) times.
- ``original`` (the 2012 code's log): weight lr / 10 from epochs 25, 51 and 79; conv1 alone / 10
  from 67 and 0 from 72 (colour noise was switched off at 67 too, see ``color_noise_off_epoch``).
  The log changes only ``epsW``: the biases of conv2 ... fc8 keep their initial rate (0.02 in
  ``layer-params-145.cfg``) for the whole run; conv1's bias follows conv1's own changes (its final
  rate in the file is 0).
- ``step``: every lr times ``factor`` from each of ``milestones`` on (a fixed schedule for short runs,
  e.g. ``configs/paper-cpu.toml``: nothing depends on the validation error).
- ``none``: the initial lr throughout.

A schedule sets ``group["lr"] = group["initial_lr"] * factor`` for each parameter group (see
:func:`twogpu_alexnet.engine.optim.param_groups`), so its whole state is a few numbers, saved in
every checkpoint.
"""
from __future__ import annotations

import math

from .config import ScheduleConfig


class Schedule:
    """Per-epoch lr factors for the optimizer's groups, from a :class:`ScheduleConfig`."""

    def __init__(self, config: ScheduleConfig):
        self.config = config
        self.drops = 0  # plateau: how many times the lr has been divided
        self.best = math.inf  # plateau: best validation top-1 error so far
        self.bad_epochs = 0  # plateau: epochs since the last improvement (or drop)

    def factor(self, epoch: int, layer: str, kind: str = "weight") -> float:
        """The multiplier of the initial lr of ``layer``'s ``kind`` ("weight" or "bias") during ``epoch``."""
        c = self.config
        if c.kind == "plateau":
            return c.factor ** self.drops
        if c.kind == "original":
            f = 0.1 ** sum(epoch >= m for m in c.milestones) if kind == "weight" else 1.0
            if layer == "conv1":
                reached = [cf for m, cf in zip(c.conv1_milestones, c.conv1_factors, strict=True) if epoch >= m]
                f *= reached[-1] if reached else 1.0  # the latest conv1 change in force
            return f
        if c.kind == "step":
            return c.factor ** sum(epoch >= m for m in c.milestones)
        return 1.0

    def apply(self, optimizer, epoch: int) -> None:
        """Set each group's lr for ``epoch``."""
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.factor(epoch, group["layer"], group.get("kind", "weight"))

    def color_noise_on(self, epoch: int) -> bool:
        """False from the epoch the original schedule switches colour noise off."""
        off = self.config.color_noise_off_epoch
        return not (self.config.kind == "original" and off and epoch >= off)

    def end_epoch(self, epoch: int, val_top1_error: float) -> bool:
        """Record ``epoch``'s validation error; True when the plateau schedule just dropped the lr."""
        if self.config.kind != "plateau":
            return False
        if val_top1_error < self.best - self.config.threshold:
            self.best = val_top1_error
            self.bad_epochs = 0
            return False
        self.best = min(self.best, val_top1_error)
        self.bad_epochs += 1
        if self.bad_epochs >= self.config.patience and self.drops < self.config.max_drops:
            self.drops += 1
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"kind": self.config.kind, "drops": self.drops, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.drops, self.best, self.bad_epochs = int(state["drops"]), float(state["best"]), int(state["bad_epochs"])
