"""The training step: no host read of device values between log points, labels copied without
waiting, a stop during validation, and a mid-epoch resume at another batch size."""
import math
import signal

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from twogpu_alexnet.engine import step as step_module
from twogpu_alexnet.engine import train as train_module
from twogpu_alexnet.engine.checkpoint import load_checkpoint
from twogpu_alexnet.engine.config import load_config
from twogpu_alexnet.engine.metrics import read_metrics
from twogpu_alexnet.engine.progress import Reporter
from twogpu_alexnet.engine.signals import StopRequest
from twogpu_alexnet.engine.train import train
from twogpu_alexnet.errors import UserError

# 4 steps of 8 images per epoch, 16 validation images
TINY = ["data.synthetic_images=32", "data.synthetic_val_images=16", "train.batch_size=8", "train.lr=0.001",
        "train.log_every=2", "train.deterministic=true", "train.epochs=1", "analysis.color_stats=false"]
# ops that wait for the device on a GPU: a value read back (.item(), float(t), if t:) or a tensor made from
# a Python value (torch.tensor, a new_tensor)
HOST_READS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.is_nonzero.default",
              "aten.equal.default", "aten.nonzero.default", "aten.lift_fresh.default"}


def tiny(*sets):
    return load_config(None, TINY + list(sets))


class _Ops(TorchDispatchMode):
    def __init__(self, names: set):
        super().__init__()
        self.names = names

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


class _Losses(Reporter):
    def __init__(self):
        self.losses = []

    def step(self, epoch, batch, loss, lr, img_s):
        self.losses.append(loss)


def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch):
    """The ops of each step (the loader's work excluded), recorded over a whole epoch: forward, backward
    and the update, and no host read; the losses reach the host only at the log points (every 2 steps)."""
    steps: list[set] = []
    label_copies = []
    real_iter, real_to = train_module.rng_neutral_iter, torch.Tensor.to

    def recorded(loader):
        for item in real_iter(loader):  # the batch is fetched outside the recording
            steps.append(set())
            with _Ops(steps[-1]):
                yield item  # the trainer's work on it runs inside

    def spy(self, *args, **kwargs):
        if self.dtype == torch.int64 and args and isinstance(args[0], (str, torch.device)):
            label_copies.append(kwargs.get("non_blocking", False))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(train_module, "rng_neutral_iter", recorded)  # the epoch loop's batches
    monkeypatch.setattr(step_module, "rng_neutral_iter", recorded)  # validation's
    monkeypatch.setattr(torch.Tensor, "to", spy)
    reporter = _Losses()
    result = train(tiny(), tmp_path / "run", reporter=reporter)
    monkeypatch.undo()
    assert result.status == "done" and len(steps) == 4 + 2  # 4 training steps, then 2 validation batches
    for i, names in enumerate(steps[:4]):
        assert {"aten.convolution_backward.default", "aten._fused_sgd_.default"} <= names, i  # a whole step
        assert not names & HOST_READS, (i, names & HOST_READS)
    assert label_copies and all(label_copies)  # every label copy to the device is non-blocking
    lines = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")[0] if r["kind"] == "step"]
    assert len(lines) == 2 and all(math.isfinite(v) for v in lines)
    # the bar shows the loss last read: nothing before the first log point, then the log points' values
    assert math.isnan(reporter.losses[0]) and reporter.losses[1:] == [lines[0], lines[0], lines[1]]


class _StopInValidation(Reporter):
    """Asks for a stop at the first validation batch, as a SIGTERM arriving then would."""

    def __init__(self, stop: StopRequest):
        self.stop, self.batches = stop, []

    def validating(self, epoch, batch, batches):
        self.batches.append(batch)
        self.stop.request(signal.SIGTERM)


def test_stop_during_validation_saves_and_the_resumed_run_validates_again(tmp_path):
    straight = train(tiny("data.synthetic_val_images=64"), tmp_path / "a")
    stop = StopRequest()
    reporter = _StopInValidation(stop)
    stopped = train(tiny("data.synthetic_val_images=64"), tmp_path / "b", stop=stop, reporter=reporter)
    assert (stopped.status, stopped.exit_code) == ("interrupted", 143)
    assert reporter.batches == [1]  # validation ended at the next batch: 1 of 8 done
    assert "before its validation" in stopped.message
    mid = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert (mid["epoch"], mid["batch"], mid["step"]) == (0, 4, 4)  # every training step of epoch 1 done
    assert not [r for r in read_metrics(tmp_path / "b" / "metrics.jsonl")[0] if r["kind"] == "epoch"]

    resumed = train(tiny("data.synthetic_val_images=64"), tmp_path / "b", resume=True)
    assert resumed.status == "done"
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert (b["epoch"], b["batch"], b["step"]) == (1, 0, 4)  # no step taken twice
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ea, eb = straight.epochs[0], resumed.epochs[0]
    assert (eb["val_top1_error"], eb["val_top5_error"]) == (ea["val_top1_error"], ea["val_top5_error"])
    assert eb["train_loss"] == pytest.approx(ea["train_loss"], rel=1e-12)


class _StopAfter(Reporter):
    def __init__(self, stop: StopRequest, batch: int):
        self.stop, self.batch = stop, batch

    def step(self, epoch, batch, loss, lr, img_s):
        if batch + 1 == self.batch:
            self.stop.request(signal.SIGTERM)


def test_resume_in_mid_epoch_with_another_batch_size_goes_on_from_the_images_seen(tmp_path, monkeypatch):
    """Stopped after 16 of the epoch's 32 images at batch 8, resumed at batch 16: one step on exactly the
    16 images (same order, same augmentation) that batches 3 and 4 of the straight run trained on."""
    fed = []
    real_layout = step_module.model_layout
    monkeypatch.setattr(step_module, "model_layout", lambda images, *a: fed.append(images.clone()) or
                        real_layout(images, *a))
    train(tiny(), tmp_path / "a")
    straight, fed[:] = list(fed), []
    stop = StopRequest()
    train(tiny(), tmp_path / "b", stop=stop, reporter=_StopAfter(stop, 1))  # the step in flight: batch 2
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["batch"] == 2
    with pytest.raises(UserError, match="train.batch_size=12 does not divide that: resume with train.batch_size=8"):
        train(tiny("train.batch_size=12"), tmp_path / "b", resume=True)
    fed.clear()
    notes = []

    class Notes(Reporter):
        def message(self, text):
            notes.append(text)

    result = train(tiny("train.batch_size=16"), tmp_path / "b", resume=True, reporter=Notes())
    assert result.status == "done"
    assert any("goes on after the 16 images already seen (batch 2)" in n for n in notes), notes
    training = fed[: len(fed) - 1]  # the last batch prepared is validation's (16 images at batch 16)
    assert len(training) == 1 and torch.equal(training[0], torch.cat(straight[2:4]))
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["step"] == 3


def test_the_run_state_is_set_up_in_one_place():
    """Every attribute of the trainer's run object is first set in its __init__ (methods only advance it)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(train_module._Run))
    assigned: dict[str, set] = {}
    for method in tree.body[0].body:
        if isinstance(method, ast.FunctionDef):
            for node in ast.walk(method):
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                        isinstance(node.value, ast.Name) and node.value.id == "self":
                    assigned.setdefault(method.name, set()).add(node.attr)
    elsewhere = set().union(*(names for name, names in assigned.items() if name != "__init__"))
    assert elsewhere - assigned["__init__"] == set()
    assert {"model", "optimizer", "train_loader", "window", "pace", "board"} <= assigned["__init__"]
