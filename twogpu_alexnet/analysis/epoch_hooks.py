"""The trainer's epoch-end hooks, which ``twogpu-alexnet train`` wires in (``train(..., hooks=...)``).

- :class:`ColorStats` (``analysis.color_stats``): each tower's conv1 colour score and the fields of
  the specialization verdict, added to the epoch's ``metrics.jsonl`` line;
- :class:`KernelGrids` (``analysis.kernel_grid_epochs``, and always the last epoch): the Figure-3
  picture of conv1 as ``RUN/kernels/epoch_NNN.png`` and as the TensorBoard image ``kernels/conv1``.

Each hook is shown an ``engine.train.EpochEnd`` (rank 0, after validation) and returns the fields to
add to the epoch line. The two are independent: the grids are written with the colour statistics off.
"""
from __future__ import annotations

from .kernels import epoch_color_fields, kernel_grid, save_kernel_grid, specialization


def epoch_hooks(analysis) -> list:
    """The hooks an ``[analysis]`` config section (``engine.config.AnalysisConfig``) asks for."""
    hooks: list = [ColorStats()] if analysis.color_stats else []
    hooks.append(KernelGrids(analysis.kernel_grid_epochs))
    return hooks


class ColorStats:
    """The towers' colour statistics per epoch; ``summary`` keeps the last epoch's verdict (for the CLI's table)."""

    def __init__(self):
        self.summary: dict | None = None

    def __call__(self, event) -> dict:
        self.summary = summary = color_verdict(event.weights, event.conv1_init)
        return {"color_score_tower0": summary["weights"]["towers"][0]["mean"],
                "color_score_tower1": summary["weights"]["towers"][1]["mean"],
                **epoch_color_fields(summary)}


def color_verdict(weights: dict, conv1_init: dict | None) -> dict:
    """The one call of the colour verdict the trainer's epochs use (learned part W - W0 when W0 is known)."""
    return specialization(weights, conv1_init)


class KernelGrids:
    """The Figure-3 kernel grid at the chosen epochs and the last one."""

    def __init__(self, epochs):
        self.epochs = set(epochs)

    def __call__(self, event) -> None:
        if event.epoch not in self.epochs and not event.last:
            return None
        save_kernel_grid(event.weights, event.run_dir / "kernels" / f"epoch_{event.epoch:03d}.png")
        event.board.image("kernels/conv1", kernel_grid(event.weights), event.step)  # 3 x H x W in [0, 1]
        return None
