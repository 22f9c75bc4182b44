"""Which executor and devices a process gets, for every GPU count, before anything is allocated."""
import pytest
import torch

from twogpu_alexnet.engine.config import ModelConfig, load_config
from twogpu_alexnet.engine.distributed import DistContext
from twogpu_alexnet.engine.placement import Placement, resolve
from twogpu_alexnet.errors import UserError


@pytest.mark.parametrize("gpus, mode, devices, words", [
    (0, "grouped", ("cpu",), "model.mode auto (0 GPUs visible, running on the CPU) -> grouped: both towers on cpu"),
    (1, "grouped", ("cuda:0",), "model.mode auto (1 GPU visible, two-tower needs 2 per process) -> grouped"),
    (2, "two-tower", ("cuda:0", "cuda:1"), "model.mode auto (2 GPUs visible) -> two-tower: tower 0 on cuda:0"),
])
def test_auto_says_what_it_chose(gpus, mode, devices, words):
    p = resolve(ModelConfig(mode="auto"), cuda_count=gpus)
    assert (p.mode, p.devices) == (mode, devices)
    assert p.note.startswith(words), p.note


def test_each_torchrun_process_owns_two_gpus():
    ctx = DistContext(rank=5, world_size=8, local_rank=1, local_world_size=4)
    assert resolve(ModelConfig(mode="two-tower"), ctx, cuda_count=8).devices == ("cuda:2", "cuda:3")
    assert resolve(ModelConfig(mode="auto"), ctx, cuda_count=8).mode == "two-tower"
    assert resolve(ModelConfig(mode="auto"), ctx, cuda_count=4).devices == ("cuda:1",)  # 4 GPUs, 4 processes
    assert resolve(ModelConfig(mode="grouped"), ctx, cuda_count=0).devices == ("cpu",)  # gloo on the CPU


def test_two_tower_without_two_gpus_is_one_sentence():
    with pytest.raises(UserError, match=r"two-tower mode needs two GPUs \(cuda:0 and cuda:1\) for this process but "
                                        r"this machine has 1 GPU; use --set model.mode=grouped"):
        resolve(ModelConfig(mode="two-tower"), cuda_count=1)


def test_named_devices():
    assert resolve(ModelConfig(mode="two-tower", devices=["cpu", "cpu"]), cuda_count=0).devices == ("cpu", "cpu")
    with pytest.raises(UserError, match=r"model.devices entry cuda:3 does not exist \(this machine has 2 CUDA "
                                        r"devices\); name devices that exist or use model.mode=grouped"):
        resolve(ModelConfig(mode="two-tower", devices=["cuda:0", "cuda:3"]), cuda_count=2)
    with pytest.raises(UserError, match="'tpu:0' is not a device"):
        resolve(ModelConfig(mode="grouped", devices=["tpu:0"]), cuda_count=0)
    with pytest.raises(UserError, match="must stay empty under torchrun"):
        resolve(ModelConfig(mode="grouped", devices=["cpu"]), DistContext(0, 2, 0, 2), cuda_count=0)


@pytest.mark.parametrize("devices, named, current", [
    (["cpu", "cuda:0"], ("cpu", "cuda:0"), "cuda:0"),
    (["cuda:1", "cpu"], ("cuda:1", "cpu"), "cuda:1"),
    (["cuda", "cuda"], ("cuda:0", "cuda:0"), "cuda:0"),
    (["cpu", "cpu"], ("cpu", "cpu"), None),
])
def test_any_pair_the_model_takes_resolves_with_the_gpu_to_make_current(devices, named, current):
    p = resolve(ModelConfig(mode="two-tower", devices=devices), cuda_count=2)
    assert p.devices == named
    assert p.cuda_device == (torch.device(current) if current else None)


def test_mixed_devices_refuse_autocast_in_one_sentence():
    from twogpu_alexnet.engine.train import check_speed

    mixed = Placement("two-tower", ("cpu", "cuda:0"), "")
    for amp in ("bf16", "fp16"):
        with pytest.raises(UserError, match=rf"speed.amp={amp} needs both towers on one kind of device, but "
                                            r"model.devices is \['cpu', 'cuda:0'\]; use speed.amp=none"):
            check_speed(load_config(None, [f"speed.amp={amp}"]), mixed)
    check_speed(load_config(None, []), mixed)
    check_speed(load_config(None, ["speed.amp=bf16"]), Placement("two-tower", ("cuda:0", "cuda:0"), ""))


def test_the_trainer_makes_the_pairs_gpu_current_not_its_cpu(tmp_path, monkeypatch):
    """model.devices=["cpu", "cuda:0"] used to reach torch.cuda.set_device(cpu) and end in a traceback.
    Here (no GPU needed) the device set is recorded; the model then cannot be built without a GPU."""
    from twogpu_alexnet.engine import train as train_module

    current = []
    monkeypatch.setattr(train_module, "resolve", lambda *a, **k: Placement("two-tower", ("cpu", "cuda:0"), "mixed"))
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = load_config(None, ["data.synthetic_images=16", "data.synthetic_val_images=8", "train.batch_size=8"])
    with pytest.raises(UserError, match="cuda:0 does not exist"):
        train_module.train(config, tmp_path / "run")
    assert current == [torch.device("cuda:0")]
    assert not (tmp_path / "run").exists()  # the folder made for the run is gone again: nothing was written


@pytest.mark.gpu
@pytest.mark.parametrize("devices", ["['cpu', 'cuda:0']", "['cuda:0', 'cpu']"])
def test_a_run_with_one_tower_on_the_cpu_and_one_on_a_gpu(tmp_path, devices):
    from twogpu_alexnet.engine.train import train

    config = load_config(None, ["data.synthetic_images=32", "data.synthetic_val_images=16", "train.batch_size=8",
                                "train.epochs=1", "train.max_steps_per_epoch=2", "model.mode=two-tower",
                                f"model.devices={devices}"])
    result = train(config, tmp_path / "run")
    assert (result.status, result.exit_code, result.placement.devices) == ("done", 0, tuple(eval(devices)))
