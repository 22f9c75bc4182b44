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
        self.t0, self.done0 = None, None

    def step(self, epoch, batch, loss, lr, img_s):
        done = (epoch - 1) * self.steps_per_epoch + batch + 1        # steps of the whole run
        if self.t0 is None:
            self.t0, self.done0 = time.perf_counter(), done
        if log_due(batch + 1, self.every, self.steps_per_epoch):
            elapsed, new = time.perf_counter() - self.t0, done - self.done0
            left = (self.epochs * self.steps_per_epoch - done) * elapsed / new if new > 0 else float("nan")
            self.console.print(f"epoch {epoch}/{self.epochs} step {batch + 1}/{self.steps_per_epoch}: "
                               f"loss {loss:.4f}, lr {lr:.2g}, {img_s:.0f} images/s, run ETA {clock(left)}",
                               soft_wrap=True)

    def epoch(self, record):
        self.console.print(_epoch_line(record), soft_wrap=True)

    def message(self, text):
        self.console.print(text, soft_wrap=True)


class RichReporter(Reporter):
    """Two live bars: the whole run (epochs, with an ETA from the steps done) and the steps of the current epoch
    with images/s, loss, lr and ETA."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.epochs_task = self.steps_task = None
        self.epochs = self.steps_per_epoch = 0
        self.last_update = 0.0

    def start(self, epochs, first_epoch, steps_per_epoch):
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.progress.start()
        # the run's bar counts steps (so its ETA moves with every step), and shows epochs
        self.epochs_task = self.progress.add_task("run", total=epochs * steps_per_epoch,
                                                  completed=(first_epoch - 1) * steps_per_epoch,
                                                  count=f"epoch {first_epoch - 1}/{epochs}", stats="")
        self.steps_task = self.progress.add_task("steps", total=steps_per_epoch, count="", stats="")

    def begin_epoch(self, epoch, first_batch):
        self.progress.reset(self.steps_task, completed=first_batch, description=f"epoch {epoch}",
                            count=f"{first_batch}/{self.steps_per_epoch}", stats="")
        self.progress.update(self.epochs_task, completed=(epoch - 1) * self.steps_per_epoch + first_batch)

    def step(self, epoch, batch, loss, lr, img_s):
        stats = f"{img_s:6.0f} img/s" + (f"  loss {loss:.4f}  lr {lr:.2g}" if loss == loss else "")  # nan: no loss
        self.progress.update(self.steps_task, completed=batch + 1, count=f"{batch + 1}/{self.steps_per_epoch}",
                             stats=stats)
        self.progress.update(self.epochs_task, completed=(epoch - 1) * self.steps_per_epoch + batch + 1)

    def validating(self, epoch, batch, batches):
        self.progress.update(self.steps_task, stats=f"validation {batch}/{batches}")

    def epoch(self, record):
        self.progress.update(self.epochs_task, completed=record["epoch"] * self.steps_per_epoch,
                             count=f"epoch {record['epoch']}/{self.epochs}",
                             stats=f"val top-1 {100 * record['val_top1_error']:.1f}%")
        self.progress.console.print(_epoch_line(record), soft_wrap=True)

    def message(self, text):
        self.progress.console.print(text, soft_wrap=True)

    def close(self):
        self.progress.stop()


def reporter_for(console: Console, every: int = 50) -> Reporter:
    """Rich bars when ``console`` is a terminal, plain periodic lines otherwise."""
    return RichReporter(console) if console.is_terminal else PlainReporter(console, every)


def clock(seconds: float) -> str:
    """``H:MM:SS`` (``-:--:--`` when unknown)."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Counter:
    """``counter(done, total)``: progress of a long count (images evaluated, features computed) with the rate
    and an ETA taken from the items done (not from work handed out), timed from the first report on: the
    start-up before the first batch (loading the network, starting loader processes) is not a rate.

    On a terminal a rich bar; elsewhere a plain line at every tenth of the total. Nothing shows before the
    first call, so an error raised before the work starts prints alone.
    """

    def __init__(self, console: Console, label: str, unit: str = "images", rate_unit: str = "img/s"):
        self.console, self.label, self.unit, self.rate_unit = console, label, unit, rate_unit
        self.t0 = None
        self.done0 = 0
        self.bar = self.task = None
        self.next_line = 0

    def start(self, total: int | None = None) -> None:
        """The work begins: the next report is the baseline of the rate."""
        self.t0 = None

    def numbers(self, done: int, total: int) -> tuple[float, float]:
        """(items/s, seconds left) from the items done since the first report; nan at the first."""
        if self.t0 is None:
            self.t0, self.done0 = time.perf_counter(), done
        elapsed = time.perf_counter() - self.t0
        new = done - self.done0
        rate = new / elapsed if new > 0 and elapsed > 0 else float("nan")
        return rate, (total - done) / rate if rate == rate and rate > 0 else float("nan")

    def text(self, done: int, total: int) -> str:
        rate, left = self.numbers(done, total)
        shown = "-" if rate != rate else f"{rate:,.0f}" if rate >= 10 else f"{rate:.1f}"
        return f"{shown} {self.rate_unit}, ETA {clock(left)}"

    def __call__(self, done: int, total: int) -> None:
        stats = self.text(done, total)
        if self.console.is_terminal:
            if self.bar is None:
                self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn(self.unit), TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                                    console=self.console, transient=False)
                self.bar.start()
                self.task = self.bar.add_task(self.label, total=total, stats=stats)
            self.bar.update(self.task, completed=done, total=total, stats=stats)
        elif done >= self.next_line or done >= total:
            self.console.print(f"{self.label}: {done:,}/{total:,} {self.unit}, {stats}", soft_wrap=True)
            step = max(1, total // 10)
            self.next_line = (done // step + 1) * step if done < total else float("inf")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
