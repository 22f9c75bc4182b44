"""The training loop: the paper's recipe on two towers, one device, or many processes.

Read top to bottom, as nanoGPT's ``train.py``: :func:`train` checks everything it can before touching
data or a GPU and opens the run folder; :class:`_Run` sets up the model where :mod:`.placement` says,
one SGD over both towers (:mod:`.optim`), the data and the logs, then runs the epoch loop: steps
(:func:`.step.train_step`), a log point every ``train.log_every`` steps, and at each epoch's end
validation (:func:`.step.validate`), the schedule, the epoch-end hooks (the CLI wires the colour
statistics and kernel grids of :mod:`..analysis` in) and a checkpoint. SIGINT/SIGTERM finish the
current step, save and return. Helpers follow the loop.

Sync points (where the host waits for the device, or ranks for each other) are marked ``# sync:``;
a step itself queues its work and returns.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import files
from ..data.split import take_subset
from ..errors import UserError
from ..model import build_model
from ..model.load import canonical_layout, load_into, to_layout
from ..spec import get_spec
from . import checkpoint as ckpt
from . import distributed, tensorboard
from .config import Config, to_dict, to_toml, validate
from .distributed import DistContext
from .metrics import MetricsLog
from .optim import load_optimizer_state, make_optimizer, optimizer_state
from .placement import Placement, resolve
from .progress import Pace, Reporter
from .rundir import RunFolder, resume_hint
from .schedule import Schedule
from .signals import StopRequest
from .step import AMP_DTYPES, rng_neutral_iter, train_step
from .step import validate as validate_pass

EXIT_DONE, EXIT_NONFINITE = 0, 3  # user errors exit 2 (the CLI), signals 130 / 143 (signals.py)
# after this many training images of an epoch (whole batches, all processes), a run that could read none of
# them stops at once rather than at the epoch's end (shuffled data: the rest is no more readable)
ZERO_CHECK_IMAGES = 256


@dataclass
class EpochEnd:
    """What an epoch-end hook is shown (rank 0 only, after validation, before the epoch line is written).

    A hook returns a dict of fields to add to the epoch's ``metrics.jsonl`` line (or None).
    """

    epoch: int
    step: int  # SGD steps so far
    last: bool  # the run's last epoch (train.epochs)
    run_dir: Path
    weights: dict  # the model in the canonical layout (cpu copies)
    conv1_init: dict | None  # conv1 at step 0 (canonical layout), None for runs begun before it was kept
    board: tensorboard.Board  # TensorBoard (does nothing when log.tensorboard is off)


EpochHook = Callable[[EpochEnd], "dict | None"]


@dataclass
class RunResult:
    run_dir: Path
    status: str  # "done" | "interrupted" | "nonfinite"
    exit_code: int
    placement: Placement
    epochs: list[dict] = field(default_factory=list)  # epoch records written by this invocation
    checkpoint: Path | None = None  # the newest checkpoint written (or resumed from)
    best_val_top1_error: float = math.inf
    message: str = ""
    images_per_s: float = 0.0
    wall_s: float = 0.0
    nonfinite_skipped: int = 0


def train(config: Config, run_dir: str | os.PathLike, *, resume: bool = False, reporter: Reporter | None = None,
          stop: StopRequest | None = None, ctx: DistContext | None = None,
          hooks: Sequence[EpochHook] = (), from_epoch: int | None = None) -> RunResult:
    """Train per ``config`` into ``run_dir`` (or continue the run there with ``resume=True``; from the
    end of epoch ``from_epoch``'s checkpoint instead of the newest one when given).

    Returns a :class:`RunResult`; its ``exit_code`` is 0 when done, 130/143 after SIGINT/SIGTERM (a
    checkpoint saved), 3 after a non-finite loss. User mistakes raise UserError before any data is
    read or GPU memory taken. ``hooks`` run at each epoch's end on rank 0 (:class:`EpochEnd`).
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    reporter = reporter or Reporter()
    stop = stop or StopRequest()
    ctx = ctx or distributed.context_from_env()
    if not ctx.is_main:
        reporter = Reporter()  # only rank 0 shows progress
    validate(config)
    tc = config.train
    rank_batch = distributed.per_rank_batch(tc.batch_size, ctx)
    distributed.check_rendezvous(ctx)
    placement = resolve(config.model, ctx)
    check_speed(config, placement)
    check_data(config)
    tensorboard.check_available(config.log.tensorboard)
    with RunFolder(run_dir, resume=resume, owner=ctx.is_main) as folder:  # checked, made and locked for the run
        for note in folder.notes:
            reporter.message(note)
        payload, resumed_from, notes = None, None, []
        if resume:
            payload, resumed_from, notes = ckpt.load_latest(run_dir, from_epoch)
            for note in notes:
                reporter.message(f"{note}; resuming from {resumed_from.name}")
            if from_epoch is not None:
                reporter.message(f"rolling back to the end of epoch {from_epoch} ({resumed_from.name}): the run goes "
                                 "on from there; its later checkpoints and metrics lines are replaced as it goes")
        reporter.message(f"run folder: {run_dir}" + (f" (resuming from {resumed_from}: epoch {payload['epoch']} done, "
                                                     f"batch {payload['batch']}, step {payload['step']})"
                                                     if payload else " (resuming)" if resume else ""))
        reporter.message(placement.note)

        if placement.cuda_device is not None:
            torch.cuda.set_device(placement.cuda_device)
        ctx = distributed.init(ctx, placement.use_cuda)
        try:
            with torch_settings(tc.deterministic, config.speed.cudnn_benchmark):
                run = _Run(config, run_dir, placement, ctx, rank_batch, reporter, stop, payload, resumed_from,
                           hooks)
                try:
                    result = run.run()
                except BaseException:
                    with contextlib.suppress(UserError):  # the error on its way out is the one to show
                        run.board.close()
                    raise
                run.board.close()
        finally:
            reporter.close()
            distributed.shutdown(ctx)
    result.wall_s = time.perf_counter() - t_start
    return result


class _Run:
    """One process's training state (model, optimizer, schedule, data, counters) and its steps.

    Everything the run holds is set up here, in ``__init__``; the methods below only advance it.
    """

    def __init__(self, config: Config, run_dir: Path, placement: Placement, ctx: DistContext, rank_batch: int,
                 reporter: Reporter, stop: StopRequest, payload: dict | None, resumed_from: Path | None = None,
                 hooks: Sequence[EpochHook] = ()):
        c, tc = config, config.train
        self.config, self.run_dir, self.placement, self.ctx = config, run_dir, placement, ctx
        self.rank_batch, self.reporter, self.stop, self.hooks = rank_batch, reporter, stop, tuple(hooks)
        self.main = ctx.is_main
        self.device = placement.first_device
        self.amp_dtype = AMP_DTYPES[c.speed.amp]
        self.input_size = get_spec(c.model.preset).input_size
        self.schedule = Schedule(c.schedule)
        self.result = RunResult(run_dir, "done", EXIT_DONE, placement)
        # where the run stands: epochs done, the next batch of the epoch in progress, SGD steps taken
        self.epochs_done = payload["epoch"] if payload else 0
        self.start_batch = resume_batch(payload, tc.batch_size, reporter) if payload else 0
        self.step, self.best = 0, math.inf
        self.progress = _empty_progress()  # sums over the epoch in progress (saved by a mid-epoch stop)
        self.window: list[tuple[torch.Tensor, int, int, int]] = []  # (loss, images, step, batch) not yet read
        self.last_loss = math.nan  # the loss last read (shown on the progress bar)
        self.t_epoch = 0.0  # when this invocation's part of the epoch in progress began
        self.images_total, self.time_total = 0, 0.0  # training images and seconds in this invocation

        seed_everything(tc.seed)
        self.noise = None if self.schedule.color_noise_on(self.epochs_done + 1) else "none"
        self.train_split, self.val_split, self.num_classes = self._open_splits()
        p = self.placement
        self.model = build_model(c.model.preset, mode=p.mode, num_classes=self.num_classes,
                                 devices=p.devices if p.mode == "two-tower" else None,
                                 device=p.devices[0] if p.mode == "grouped" else None)
        if c.speed.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # conv1 at step 0, kept in every checkpoint: the colour statistics score what training added to it
        self.conv1_init = payload.get("conv1_init") if payload else conv1_state(self.model)
        self.optimizer = make_optimizer(self.model, tc.lr, tc.momentum, tc.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=c.speed.amp == "fp16")
        torch.manual_seed(tc.seed * 1000 + self.ctx.rank)  # dropout differs across ranks; init is the same on all
        self.model.seed_dropout(tc.seed, self.ctx.rank)  # each tower's own dropout stream
        if payload:
            self.restore(payload, resumed_from)
        net = distributed.wrap(self.model, self.ctx)
        self.forward = torch.compile(net) if c.speed.compile else net
        # two-tower mode: each tower's device gets the uint8 batch and finishes it (one device: a plain tensor)
        self.input_devices = p.devices if p.mode == "two-tower" else (self.device,)
        self.train_loader = make_data_loader(c, self.train_split, self.rank_batch, self.ctx, True, self.input_devices)
        self.val_loader = make_data_loader(c, self.val_split, self.rank_batch, self.ctx, False, self.input_devices)
        self.steps_per_epoch = len(self.train_loader)
        if tc.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, tc.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise UserError(f"the training split has fewer images than one batch ({self.rank_batch} per process); "
                            "lower train.batch_size or add images")
        self.pace = Pace(tc.log_every, self.steps_per_epoch, self.rank_batch * self.ctx.world_size)
        # the batch after which an epoch that read no image stops (the same on every process)
        self.zero_check_batch = min(self.steps_per_epoch,
                                    -(-ZERO_CHECK_IMAGES // (self.rank_batch * self.ctx.world_size)))
        self.read_in_epoch = 0  # training images read (decoded) in this invocation's part of the epoch
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.main)
        self.write_config()
        self.log.truncate_after(self.epochs_done, self.step)
        self.board = tensorboard.open_board(self.run_dir, c.log.tensorboard and self.main,
                                            purge_step=self.step + 1)  # a fresh start clears too

    # ----- the loop ------------------------------------------------------------------------------
    def run(self) -> RunResult:
        epochs = self.config.train.epochs
        if self.epochs_done >= epochs:
            return self.finish("done", EXIT_DONE, f"nothing to do: {self.epochs_done} of {epochs} epochs already "
                               "done (raise train.epochs to go on)")
        self.reporter.start(epochs, self.epochs_done + 1, self.steps_per_epoch)
        self.forward.train()
        for epoch in range(self.epochs_done + 1, epochs + 1):
            ended = self.train_epoch(epoch) or self.end_epoch(epoch)
            if ended:
                return ended
        return self.finish("done", EXIT_DONE,
                           f"done: {epochs} epochs, best validation top-1 error {100 * self.best:.2f}%")

    def train_epoch(self, epoch: int) -> RunResult | None:
        """The epoch's training steps; a RunResult when the run must end here (signal, non-finite loss)."""
        self.begin_epoch(epoch)
        batch, self.start_batch = self.start_batch, 0
        self.train_loader.set_epoch(epoch, start_batch=batch)
        self.reporter.begin_epoch(epoch, batch)
        for images, labels, skipped in rng_neutral_iter(self.train_loader):
            if batch >= self.steps_per_epoch:
                break
            batch += 1
            self.progress["skipped"] += int(skipped)
            self.read_in_epoch += len(labels)
            if batch == self.zero_check_batch:  # sync (ranks, host values): stop at once when nothing was readable
                self.check_images_read(epoch, batch)
            stopping = self.stopping()  # sync (ranks, host values): asked before the step, which then finishes
            if len(labels):  # else every image of this batch was unreadable (counted in skipped)
                # queued on the device; the loss is read at the next log point (read_window)
                loss = train_step(self.forward, self.optimizer, self.scaler, images, labels, device=self.device,
                                  amp_dtype=self.amp_dtype, channels_last=self.config.speed.channels_last,
                                  keep=self.finite_everywhere if self.config.train.nonfinite == "skip" else None)
                if loss is not None:
                    self.step += 1
                    self.window.append((loss, len(labels), self.step, batch))
                else:
                    self.progress["nonfinite"] += 1
                    self.reporter.message(f"step {self.step + 1} (epoch {epoch}, batch {batch}): non-finite loss, "
                                          f"batch skipped ({self.progress['nonfinite']} so far)")
                self.pace.tick(len(labels))
            if (self.pace.due(batch) or stopping) and (ended := self.read_window(epoch)):  # sync: the log point
                return ended
            self.reporter.step(epoch, batch - 1, self.last_loss, _lr_of(self.optimizer), self.pace.img_s)
            if stopping:
                self.progress["time_s"] += time.perf_counter() - self.t_epoch
                return self.interrupt(epoch, batch)
        return None

    def end_epoch(self, epoch: int) -> RunResult | None:
        """Validation, the schedule, the epoch-end hooks, the epoch record and the checkpoint.

        A stop during validation ends the run here (the training state saved; the resumed run
        validates again)."""
        c, ctx, p = self.config, self.ctx, self.progress
        t_val = time.perf_counter()
        p["time_s"] += t_val - self.t_epoch  # the epoch's training time, complete
        val = validate_pass(self.forward, self.val_loader, len(self.val_split.dataset), self.device, self.amp_dtype,
                            c.speed.channels_last, ctx, stopping=self.stopping,  # sync: the counts, once per pass
                            on_batch=lambda done, total: self.reporter.validating(epoch, done, total))
        if val is None:
            return self.interrupt(epoch, self.steps_per_epoch)
        top1, top5, _ = val
        train_time = p["time_s"]
        loss_total, images, skipped, nonfinite = distributed.sum_across(  # sync (ranks, host values)
            [p["loss_sum"], p["images"], p["skipped"], p["nonfinite"]], ctx)
        if images == 0 and nonfinite == 0:
            raise UserError(no_image_read(epoch, skipped))
        if val[2] == 0:
            raise UserError(f"epoch {epoch} validated on no image: no validation image could be read (unreadable, or "
                            "larger than TWOGPU_ALEXNET_MAX_PIXELS allows); check the images in data.root's val/")
        lr_used = _lr_of(self.optimizer)
        dropped = self.schedule.end_epoch(epoch, top1)
        is_best = top1 < self.best
        self.best = min(self.best, top1)
        weights = canonical_state(self.model) if self.main else None  # sync: the weights copied to the host
        record = {"kind": "epoch", "epoch": epoch, "train_loss": loss_total / max(images, 1),
                  "val_top1_error": top1, "val_top5_error": top5, "lr": lr_used,
                  "time_s": train_time + time.perf_counter() - t_val, "img_s": images / max(train_time, 1e-9),
                  "skipped": int(skipped), "nonfinite_skipped": int(nonfinite),
                  "color_score_tower0": None, "color_score_tower1": None}
        if self.main:  # the epoch-end hooks: colour statistics, kernel grids, ... (wired by the CLI)
            event = EpochEnd(epoch, self.step, epoch == c.train.epochs, self.run_dir, weights, self.conv1_init,
                             self.board)
            for hook in self.hooks:
                record.update(hook(event) or {})
        self.log.write(record)
        self.board.record(record, self.step)
        self.reporter.epoch(record)
        if dropped:
            self.reporter.message(f"epoch {epoch}: validation error stopped improving; lr divided by "
                                  f"{1 / c.schedule.factor:g} (drop {self.schedule.drops} of {c.schedule.max_drops})")
        r = self.result
        r.epochs.append(record)
        r.nonfinite_skipped += int(nonfinite)
        r.best_val_top1_error = self.best
        self.images_total += int(images)
        self.time_total += train_time
        self.progress = _empty_progress()
        epoch_file = epoch % c.checkpoint.every == 0 or epoch == c.train.epochs
        self.save(epochs_completed=epoch, batch=0, epoch_file=epoch_file, is_best=is_best, weights=weights)
        return None

    # ----- helpers of the loop ---------------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        """The schedule's lr (and, in the original schedule, the colour noise) for ``epoch``."""
        c = self.config
        self.schedule.apply(self.optimizer, epoch)
        if not self.schedule.color_noise_on(epoch) and self.noise != "none":  # the original schedule, epoch 67
            self.noise = "none"
            self.train_split = open_data(c, "train", input_size=self.input_size, num_classes=self.num_classes,
                                         color_noise="none")
            self.train_loader = make_data_loader(c, self.train_split, self.rank_batch, self.ctx, True,
                                                 self.input_devices)
            self.reporter.message(f"epoch {epoch}: colour noise switched off (original schedule)")
        self.t_epoch = time.perf_counter()
        self.read_in_epoch = 0
        self.pace.begin_epoch()

    def check_images_read(self, epoch: int, batch: int) -> None:
        """UserError when no training image of the epoch's first ``batch`` batches could be read (all processes)."""
        # progress["images"]: what the epoch trained before a resume in mid-epoch (and at log points since)
        read, skipped = distributed.sum_across([self.read_in_epoch + self.progress["images"],
                                                self.progress["skipped"]], self.ctx)
        if read == 0 and skipped > 0:
            raise UserError(no_image_read(epoch, skipped, batch if batch < self.steps_per_epoch else None))

    def stopping(self) -> bool:
        """Whether a stop was asked (SIGINT/SIGTERM) in any process; host values only."""
        return distributed.any_across([self.stop.requested], self.ctx)[0]

    def finite_everywhere(self, loss: torch.Tensor) -> bool:
        """train.nonfinite=skip: the loss of this step is finite in every process (reads it now)."""
        return not distributed.any_across([not math.isfinite(float(loss.detach()))], self.ctx)[0]  # sync: the loss

    def read_window(self, epoch: int) -> RunResult | None:
        """The log point: read the losses of the steps since the last one (one transfer), check them,
        add them to the epoch's sums and write the step line. A RunResult when one was not finite."""
        losses, self.window = self.window, []
        values = torch.stack([loss for loss, *_ in losses]).tolist() if losses else []  # sync: the one host read
        bad = next(((step, batch) for v, (_, _, step, batch) in zip(values, losses, strict=True)
                    if not math.isfinite(v)), None)
        loss_sum, any_bad = distributed.sum_across([values[-1] if values else math.nan, float(bad is not None)],
                                                   self.ctx)
        if any_bad:
            where = f"step {bad[0]} (epoch {epoch}, batch {bad[1]})" if bad else f"step {self.step} (epoch {epoch})"
            last = self.result.checkpoint
            return self.finish("nonfinite", EXIT_NONFINITE,
                               f"the loss became non-finite at {where}; training stopped; last good "
                               f"checkpoint: {last if last else 'none yet'} (lower train.lr, or set "
                               "train.nonfinite=skip to skip such batches)")
        if not values:
            return None
        for v, (_, n, _, _) in zip(values, losses, strict=True):
            self.progress["loss_sum"] += v * n
            self.progress["images"] += n
        self.last_loss = values[-1]
        record = {"kind": "step", "epoch": epoch, "step": self.step, "loss": loss_sum / self.ctx.world_size,
                  "lr": _lr_of(self.optimizer), "img_s": self.pace.window_rate(self.ctx.world_size)}
        self.log.write(record)
        self.board.record(record, self.step)
        return None

    def interrupt(self, epoch: int, batch: int) -> RunResult:
        """Save the training state after ``batch`` of ``epoch`` (batch = the last one: validation is left
        to the resumed run) and end with the signal's exit code."""
        path = self.save(epochs_completed=epoch - 1, batch=batch)
        where = f"epoch {epoch}, batch {batch}" + (", before its validation" if batch == self.steps_per_epoch else "")
        return self.finish("interrupted", self.stop.exit_code,
                           f"{self.stop.name or 'stop'} received: saved {path} after step {self.step} ({where}); "
                           f"continue with --resume {self.run_dir}")

    def save(self, epochs_completed: int, batch: int, epoch_file: bool = False, is_best: bool = False,
             weights: dict | None = None) -> Path:
        """Write the run's state (rank 0; every rank contributes its generator states)."""
        rngs = distributed.gather(ckpt.rng_state(), self.ctx)  # sync (ranks); taken last: nothing random after
        dropout_rngs = distributed.gather(self.model.dropout_rng_state(), self.ctx)
        path = self.run_dir / "checkpoints" / "last.pt"
        if self.main:
            c = self.config
            state = {
                "model": weights if weights is not None else canonical_state(self.model),
                "preset": c.model.preset, "num_classes": self.num_classes,
                "epoch": epochs_completed, "batch": batch, "step": self.step,
                "optimizer": optimizer_state(self.optimizer, self.model), "scheduler": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {}, "rng": rngs,
                "dropout_rng": dropout_rngs,
                "data": {"seed": c.train.seed, "epoch": epochs_completed + 1, "batch": batch},
                "progress": dict(self.progress), "best_val_top1_error": self.best, "config": to_dict(c),
                "mode": self.placement.mode, "world_size": self.ctx.world_size,
                "data_stats": self.train_split.stats.to_dict(),  # the training mean and RGB PCA, for evaluation
                "class_names": list(self.train_split.classes),  # folder names / wnids, checked by evaluate, predict
                "conv1_init": self.conv1_init,  # conv1 at step 0 (None for runs begun before it was kept)
            }
            path = ckpt.save_run_checkpoint(self.run_dir, state, epoch_done=epochs_completed if epoch_file else None,
                                            is_best=is_best, keep_last=c.checkpoint.keep_last)
        self.result.checkpoint = path
        return path

    def finish(self, status: str, exit_code: int, message: str) -> RunResult:
        r = self.result
        r.status, r.exit_code, r.message = status, exit_code, message
        r.images_per_s = self.images_total / self.time_total if self.time_total > 0 else 0.0
        self.reporter.message(message)
        return r

    def _open_splits(self):
        """The training and validation splits and the number of classes (checked against the config)."""
        c = self.config
        requested = c.model.num_classes or None
        train_split = open_data(c, "train", input_size=self.input_size, num_classes=requested, color_noise=self.noise)
        val_split = take_subset(open_data(c, "val", input_size=self.input_size, num_classes=requested),
                                c.train.val_images, c.train.seed)     # train.val_images: a fixed, seeded subset
        for split in (train_split, val_split):
            if split.walk_skipped:
                n, first = len(split.walk_skipped), split.walk_skipped[0]
                self.reporter.message(f"{split.name}: {n} entr{'y' if n == 1 else 'ies'} of the data folder "
                                      f"skipped (first: {first['path']}: {first['reason']})")
        return train_split, val_split, check_classes(train_split.classes, val_split.classes, requested)

    def restore(self, payload: dict, resumed_from: Path | None = None) -> None:
        load_into(self.model, payload["model"])
        load_optimizer_state(self.optimizer, self.model, payload["optimizer"])
        self.schedule.load_state_dict(payload["scheduler"])
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        self.step, self.best = int(payload["step"]), float(payload["best_val_top1_error"])
        self.result.best_val_top1_error = self.best
        self.result.checkpoint = resumed_from or self.run_dir / "checkpoints" / "last.pt"  # the file read
        if payload["batch"]:
            self.progress = dict(payload["progress"])
        rngs = payload["rng"]
        if len(rngs) == self.ctx.world_size:
            ckpt.set_rng_state(rngs[self.ctx.rank])
            try:  # the towers' dropout streams (absent or torch generator states in older checkpoints)
                if "dropout_rng" in payload:
                    self.model.set_dropout_rng_state(payload["dropout_rng"][self.ctx.rank])
                else:
                    self.reporter.message("the checkpoint has no dropout states (an older version): "
                                          "dropout masks start from the seed")
            except (IndexError, ValueError):
                self.reporter.message("the checkpoint's dropout states come from an older version or another "
                                      "tower count: dropout masks start from the seed")
        else:
            self.reporter.message(f"the checkpoint has random states for {len(rngs)} processes, this run has "
                                  f"{self.ctx.world_size}: augmentation order is kept, dropout masks will differ")

    def write_config(self) -> None:
        """config.toml: the resolved config (what --resume reads)."""
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            files.write_atomic(self.run_dir / "config.toml", to_toml(self.config), then=resume_hint(self.run_dir),
                               error_folder=self.run_dir)


# ---------------------------------------------------------------------------------------------
# Helpers: checks that run before any data is read or any GPU memory is taken, data, weights.

def no_image_read(epoch: int, skipped: float, batches: int | None = None) -> str:
    """The sentence for an epoch that could read none of its training images (``batches``: stopped after
    that many, before the epoch's end)."""
    early = f" in its first {batches} batches (stopped there)" if batches else ""
    return (f"epoch {epoch} trained on no image: all {int(skipped)} training images read{early} were skipped "
            "(unreadable, or larger than TWOGPU_ALEXNET_MAX_PIXELS allows); check the images in data.root or raise "
            "that limit")


def check_data(config: Config) -> None:
    d = config.data
    if d.source in ("imagefolder", "store", "cifar10"):
        root = Path(d.root).expanduser()
        if not root.is_dir():
            raise UserError(f"data.root {root} is not a folder; point it at the folder holding train/ and val/ "
                            "(--set data.root=DIR)")


def check_classes(train_classes, val_classes, requested: int | None) -> int:
    """The number of classes the model gets; UserError when the data cannot train a classifier."""
    n = len(train_classes)
    if n < 2:
        raise UserError(f"the training data has {n} class{'es' * (n != 1)} ({', '.join(map(str, train_classes))}); "
                        "a classifier needs at least 2 class folders in train/ and val/")
    if requested and requested != n:
        raise UserError(f"model.num_classes is {requested} but the training data has {n} "
                        "classes; set model.num_classes=0 to follow the data")
    if list(val_classes) != list(train_classes):
        raise UserError("the validation classes differ from the training classes; "
                        "train/ and val/ must hold the same class folders")
    return n


def check_speed(config: Config, placement: Placement) -> None:
    kinds = {torch.device(d).type for d in placement.devices}
    if config.speed.amp != "none" and len(kinds) > 1:
        raise UserError(f"speed.amp={config.speed.amp} needs both towers on one kind of device, but model.devices "
                        f"is {list(placement.devices)}; use speed.amp=none or put both towers on GPUs")
    if config.speed.amp == "fp16" and not placement.use_cuda:
        raise UserError("speed.amp=fp16 needs a GPU; use speed.amp=bf16 on the CPU or none")


@contextlib.contextmanager
def torch_settings(deterministic: bool, cudnn_benchmark: bool):
    """Set cuDNN / determinism flags for the run and restore them afterwards."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def open_data(config: Config, split: str, *, input_size: int, num_classes: int | None, color_noise: str | None = None):
    """The data package's split for ``split`` ("train" with augmentation, "val" with one centre view)."""
    from ..data import DataOptions, open_split

    d = config.data
    options = DataOptions(input_size=input_size, color_noise=color_noise or d.color_noise, crop_group=d.crop_group,
                          seed=config.train.seed, num_classes=num_classes or 0, decode=d.decode,
                          images=d.synthetic_images if split == "train" else d.synthetic_val_images)
    return open_split(d.source, d.root or None, split, options)


def value_off(key: str) -> str:
    return "none" if key == "data.cache" else "cpu"


def make_data_loader(config: Config, split, batch_size: int, ctx: DistContext, train: bool, device):
    """Batches finished on ``device``, where the model takes its input: one device, or the towers' devices
    (two-tower mode), each of which then gets the uint8 batch from the host and finishes its own copy."""
    from ..data import make_loader

    d = config.data
    first = torch.device(device) if isinstance(device, (str, torch.device)) else torch.device(device[0])
    use_cuda = first.type == "cuda"  # the GPU cache and nvJPEG decoding live on the first device
    for key, value in (("data.cache", d.cache), ("data.decode", d.decode)):
        if value == "gpu" and not use_cuda:
            raise UserError(f"{key}=gpu needs a GPU but this run is on the CPU; set {key}={value_off(key)}")
    cores = os.cpu_count() or 1
    workers = d.workers if d.workers >= 0 else max(1, cores - 2) if use_cuda else min(4, max(1, cores - 1))
    return make_loader(split, batch_size=batch_size, shuffle=train, workers=workers, seed=config.train.seed,
                       drop_last=train, distributed=ctx.enabled, rank=ctx.rank, world_size=ctx.world_size,
                       device=device, cache=d.cache == "gpu")


def canonical_state(model) -> dict:
    """The model's weights in the canonical layout (two-tower; a one-tower preset's own), contiguous cpu copies."""
    return to_layout({k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()},
                     canonical_layout(model.spec.name))


def conv1_state(model) -> dict:
    """The model's conv1 weights in the canonical layout (cpu copies), for the colour statistics."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()
             if k.endswith("conv1.weight")}
    return to_layout(state, canonical_layout(model.spec.name))


def _lr_of(optimizer) -> float:
    """The lr reported in logs: fc8's weights (the general rate; conv1 may differ in the original schedule)."""
    groups = [g for g in optimizer.param_groups if g["kind"] == "weight"]
    return groups[-1]["lr"]


def _empty_progress() -> dict:
    return {"loss_sum": 0.0, "images": 0, "skipped": 0, "nonfinite": 0, "time_s": 0.0}


def resume_batch(payload: dict, batch_size: int, reporter: Reporter) -> int:
    """The batch to resume the checkpoint's epoch at, with ``batch_size`` (train.batch_size now).

    A mid-epoch checkpoint records the batches done at the batch size it was trained with; the loader's
    order does not depend on the batch size, so a new size resumes at the same image when it divides
    the images seen, and is refused with a sentence when it does not.
    """
    batch = int(payload["batch"])
    before = int(payload["config"]["train"]["batch_size"])
    if batch == 0 or before == batch_size:
        return batch
    seen = batch * before
    epoch = payload["epoch"] + 1
    if seen % batch_size:
        raise UserError(f"the checkpoint stopped in epoch {epoch} after {seen} images ({batch} batches of {before}); "
                        f"train.batch_size={batch_size} does not divide that: resume with train.batch_size={before} "
                        "and change it after the epoch ends")
    reporter.message(f"train.batch_size changed from {before} to {batch_size} in mid-epoch: epoch {epoch} goes on "
                     f"after the {seen} images already seen (batch {seen // batch_size + 1})")
    return seen // batch_size
