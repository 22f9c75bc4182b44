"""What a training run shows while it runs: rich progress bars on a terminal, plain lines elsewhere.

The trainer calls a reporter's ``start``/``step``/``validating``/``epoch``/``message``/``close``;
:class:`Reporter` itself shows nothing (library use, tests, distributed ranks other than 0). The CLI
picks :func:`reporter_for` its console. :class:`Pace` owns the rhythm of the steps: when values are
read and logged (:func:`log_due`), and the images/s averages.
"""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Reporter:
    """Shows nothing."""

    def start(self, epochs: int, first_epoch: int, steps_per_epoch: int) -> None: ...
    def begin_epoch(self, epoch: int, first_batch: int) -> None: ...
    def step(self, epoch: int, batch: int, loss: float, lr: float, img_s: float) -> None: ...
    def validating(self, epoch: int, batch: int, batches: int) -> None: ...
    def epoch(self, record: dict) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


def log_due(batch: int, every: int, steps_per_epoch: int) -> bool:
    """Whether the epoch's ``batch`` (counted from 1) is a log point: every ``every`` batches and the last."""
    return batch % every == 0 or batch == steps_per_epoch


class Pace:
    """Images/s of the training steps, and when the trainer reads and logs the step values.

    The step itself never waits for the device; the trainer reads the losses at the log points
    (:func:`log_due`), so the time between two log points holds whole steps of device work.
    ``tick`` gives the moving average shown on the bar; ``window_rate`` the mean rate since the
    previous log point (the ``img_s`` of a step line).
    """

    def __init__(self, every: int, steps_per_epoch: int, images_per_step: int):
        self.every, self.steps_per_epoch, self.images_per_step = max(1, every), steps_per_epoch, images_per_step
        self.img_s = 0.0
        self.t_prev = self.t_log = time.perf_counter()
        self.images_log = 0

    def begin_epoch(self) -> None:
        self.img_s, self.images_log = 0.0, 0
        self.t_prev = self.t_log = time.perf_counter()

    def due(self, batch: int) -> bool:
        return log_due(batch, self.every, self.steps_per_epoch)

    def tick(self, images: int) -> float:
        """Count a step of ``images`` (this process's); the moving average of all processes' images/s."""
        now = time.perf_counter()
        rate = self.images_per_step / max(now - self.t_prev, 1e-9)
        self.img_s = rate if self.img_s == 0 else 0.9 * self.img_s + 0.1 * rate
        self.t_prev, self.images_log = now, self.images_log + images
        return self.img_s

    def window_rate(self, world_size: int = 1) -> float:
        """Images/s of all processes since the previous call (or the epoch's start)."""
        now = time.perf_counter()
        rate = self.images_log * world_size / max(now - self.t_log, 1e-9)
        self.t_log, self.images_log = now, 0
        return rate


def _epoch_line(r: dict) -> str:
    line = (f"epoch {r['epoch']}: train loss {r['train_loss']:.4f}, val top-1 error {100 * r['val_top1_error']:.2f}%, "
            f"top-5 {100 * r['val_top5_error']:.2f}%, lr {r['lr']:.2g}, {r['time_s']:.1f} s")
    if r.get("skipped"):
        line += f", {r['skipped']} unreadable image{'s' * (r['skipped'] != 1)} skipped"
    if r.get("nonfinite_skipped"):
        line += f", {r['nonfinite_skipped']} non-finite batch{'es' * (r['nonfinite_skipped'] != 1)} skipped"
    if r.get("color_score_tower0") is not None:
        line += f", colour score of W tower 0 {r['color_score_tower0']:.3f} / tower 1 {r['color_score_tower1']:.3f}"
    if r.get("color_verdict"):  # the one colour verdict's sentence (analysis.kernels.verdict_sentence)
        line += f"; colour: {r['color_verdict']}"
    return line


class PlainReporter(Reporter):
    """Periodic plain lines (every ``every`` steps and each epoch) for logs and pipes."""

    def __init__(self, console: Console, every: int = 50):
        self.console, self.every = console, max(1, every)
        self.steps_per_epoch = 0
        self.epochs = 0

    def start(self, epochs, first_epoch, steps_per_epoch):
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch

    def step(self, epoch, batch, loss, lr, img_s):
        if log_due(batch + 1, self.every, self.steps_per_epoch):
            self.console.print(f"epoch {epoch}/{self.epochs} step {batch + 1}/{self.steps_per_epoch}: "
                               f"loss {loss:.4f}, lr {lr:.2g}, {img_s:.0f} images/s", soft_wrap=True)

    def epoch(self, record):
        self.console.print(_epoch_line(record), soft_wrap=True)

    def message(self, text):
        self.console.print(text, soft_wrap=True)


class RichReporter(Reporter):
    """Two live bars: epochs, and steps in the current epoch with images/s, loss, lr and ETA."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.epochs_task = self.steps_task = None
        self.last_update = 0.0

    def start(self, epochs, first_epoch, steps_per_epoch):
        self.progress.start()
        self.epochs_task = self.progress.add_task("epochs", total=epochs, completed=first_epoch - 1, stats="")
        self.steps_task = self.progress.add_task("steps", total=steps_per_epoch, stats="")

    def begin_epoch(self, epoch, first_batch):
        self.progress.reset(self.steps_task, completed=first_batch, description=f"epoch {epoch}", stats="")

    def step(self, epoch, batch, loss, lr, img_s):
        stats = f"{img_s:6.0f} img/s" + (f"  loss {loss:.4f}  lr {lr:.2g}" if loss == loss else "")  # nan: no loss
        self.progress.update(self.steps_task, completed=batch + 1, stats=stats)

    def validating(self, epoch, batch, batches):
        self.progress.update(self.steps_task, stats=f"validation {batch}/{batches}")

    def epoch(self, record):
        self.progress.update(self.epochs_task, completed=record["epoch"],
                             stats=f"val top-1 {100 * record['val_top1_error']:.1f}%")
        self.progress.console.print(_epoch_line(record), soft_wrap=True)

    def message(self, text):
        self.progress.console.print(text, soft_wrap=True)

    def close(self):
        self.progress.stop()


def reporter_for(console: Console, every: int = 50) -> Reporter:
    """Rich bars when ``console`` is a terminal, plain periodic lines otherwise."""
    return RichReporter(console) if console.is_terminal else PlainReporter(console, every)
