"""The trainer's epoch-end hooks, which ``twogpu-alexnet train`` wires in (``train(..., hooks=...)``).

- :class:`ColorStats` (``analysis.color_stats``): each tower's conv1 colour score and the fields of
  the specialization verdict, added to the epoch's ``metrics.jsonl`` line;
- :class:`KernelGrids` (``analysis.kernel_grid_epochs``, and always the last epoch): the Figure-3
  picture of conv1 as ``RUN/kernels/epoch_NNN.png`` and as the TensorBoard image ``kernels/conv1``.

Each hook is shown an ``engine.train.EpochEnd`` (rank 0, after validation) and returns the fields to
add to the epoch line. The two are independent: the grids are written with the colour statistics off.
"""
from __future__ import annotations

from ..engine.config import to_dict
from ..files import make_folder
from .kernels import epoch_color_fields, kernel_grid, run_specialization, save_kernel_grid


def epoch_hooks(config) -> list:
    """The hooks a run's config (``engine.config.Config``; its ``[analysis]`` section) asks for."""
    analysis = config.analysis
    hooks: list = [ColorStats(meta={"config": to_dict(config)})] if analysis.color_stats else []
    hooks.append(KernelGrids(analysis.kernel_grid_epochs))
    return hooks


class ColorStats:
    """The towers' colour statistics per epoch; ``summary`` keeps the last epoch's verdict (for the CLI's table)."""

    def __init__(self, meta: dict | None = None):
        self.meta = meta or {}  # what the verdict records about the run (its config)
        self.summary: dict | None = None

    def __call__(self, event) -> dict:
        self.summary = summary = color_verdict(event.weights, event.conv1_init, run_dir=event.run_dir,
                                               step=event.step, meta=self.meta)
        return {"color_score_tower0": summary["weights"]["towers"][0]["mean"],
                "color_score_tower1": summary["weights"]["towers"][1]["mean"],
                **epoch_color_fields(summary)}


def color_verdict(weights: dict, conv1_init: dict | None, *, run_dir=None, step: int | None = None,
                  meta: dict | None = None) -> dict:
    """The one call of the colour verdict at the trainer's epochs (of the learned part W - W0 when W0 is
    known); ``run_dir``, ``step`` and ``meta`` say where it was taken."""
    return run_specialization(weights, conv1_init, run_dir=run_dir, step=step, meta=meta)


class KernelGrids:
    """The Figure-3 kernel grid at the chosen epochs and the last one."""

    def __init__(self, epochs):
        self.epochs = set(epochs)

    def __call__(self, event) -> None:
        if event.epoch not in self.epochs and not event.last:
            return None
        folder = make_folder(event.run_dir / "kernels", "kernel grids")     # a planted link there is refused
        save_kernel_grid(event.weights, folder / f"epoch_{event.epoch:03d}.png")
        event.board.image("kernels/conv1", kernel_grid(event.weights), event.step)  # 3 x H x W in [0, 1]
        return None
