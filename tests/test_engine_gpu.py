"""Training on GPUs: two towers on two GPUs, the grouped fallback, the speed options, GPU -> GPU resume.

Marked ``gpu``: skipped without CUDA; launch/gpu_check.sh runs them on a GPU machine.
"""
import pytest
import torch

from twogpu_alexnet.engine.checkpoint import load_checkpoint
from twogpu_alexnet.engine.config import load_config
from twogpu_alexnet.engine.train import train

pytestmark = pytest.mark.gpu

SMALL = ["data.synthetic_images=64", "data.synthetic_val_images=32", "train.batch_size=16", "train.epochs=1",
         "train.max_steps_per_epoch=2", "train.log_every=1"]


def _two_gpus():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")


def _run(tmp_path, *sets, resume=False, name="run"):
    config = load_config(tmp_path / name / "config.toml" if resume else None,
                         ([] if resume else SMALL) + list(sets))
    result = train(config, tmp_path / name, resume=resume)
    assert result.status == "done", result.message
    return result


def test_two_towers_on_two_gpus(tmp_path):
    _two_gpus()
    result = _run(tmp_path, "model.mode=two-tower")
    assert result.placement.devices == ("cuda:0", "cuda:1")
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["model"]["towers.1.conv1.weight"].device.type == "cpu"  # checkpoints hold cpu tensors
    assert torch.isfinite(torch.tensor(result.epochs[0]["train_loss"]))


def test_auto_mode_picks_by_gpu_count(tmp_path):
    result = _run(tmp_path, "model.mode=auto")
    assert result.placement.mode == ("two-tower" if torch.cuda.device_count() >= 2 else "grouped")
    assert result.placement.use_cuda


@pytest.mark.parametrize("sets", [
    ["speed.amp=bf16"], ["speed.amp=fp16"], ["speed.channels_last=true"], ["speed.cudnn_benchmark=false"],
    ["speed.compile=true"], ["speed.amp=bf16", "speed.channels_last=true", "speed.compile=true"],
])
def test_speed_options_on_one_gpu(tmp_path, sets):
    result = _run(tmp_path, "model.mode=grouped", "model.devices=['cuda:0']", *sets)
    assert result.placement.devices == ("cuda:0",)
    assert 0 <= result.epochs[0]["val_top1_error"] <= 1


def test_trained_on_two_gpus_resumes_on_one(tmp_path):
    _two_gpus()
    _run(tmp_path, "model.mode=two-tower", "speed.amp=fp16")
    _run(tmp_path, "train.epochs=2", "model.mode=grouped", "model.devices=['cuda:0']", resume=True)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["step"], saved["mode"]) == (2, 4, "grouped")


def test_gpu_resume_is_bit_identical_with_deterministic_algorithms(tmp_path):
    sets = ["model.mode=grouped", "model.devices=['cuda:0']", "train.deterministic=true",
            "speed.cudnn_benchmark=false"]
    _run(tmp_path, *sets, "train.epochs=2", name="a")
    _run(tmp_path, *sets, name="b")
    _run(tmp_path, "train.epochs=2", name="b", resume=True)
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("sets", [["model.mode=grouped", "model.devices=['cuda:0']"],
                                  ["model.mode=two-tower", "model.devices=['cuda:0', 'cuda:0']"]])
def test_a_training_step_between_log_points_never_waits_for_the_gpu(tmp_path, monkeypatch, sets):
    """Batch 2 of 3 (not a log point: log_every 3) runs under torch.cuda.set_sync_debug_mode("error"):
    the pinned batch's copies, forward, loss, backward and the update queue without a host sync."""
    from twogpu_alexnet.engine import step as step_module
    from twogpu_alexnet.engine import train as train_module

    real_iter, calls = train_module.rng_neutral_iter, []

    def strict_second_step(loader):
        first_loop = not calls  # the first loop is epoch 1's training; validation comes after
        calls.append(loader)
        for i, item in enumerate(real_iter(loader)):
            torch.cuda.set_sync_debug_mode("error" if first_loop and i == 1 else "default")
            try:
                yield item
            finally:
                torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(train_module, "rng_neutral_iter", strict_second_step)  # the epoch loop
    monkeypatch.setattr(step_module, "rng_neutral_iter", strict_second_step)  # validation
    _run(tmp_path, *sets, "train.max_steps_per_epoch=3", "train.log_every=3")
    assert len(calls) == 2  # the training loop and validation
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3
