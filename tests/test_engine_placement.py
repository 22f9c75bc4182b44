"""Which executor and devices a process gets, for every GPU count, before anything is allocated."""
import pytest

from twogpu_alexnet.engine.config import ModelConfig
from twogpu_alexnet.engine.distributed import DistContext
from twogpu_alexnet.engine.placement import resolve
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
    with pytest.raises(UserError, match="model.devices names cuda:3 but this machine has 2 GPUs"):
        resolve(ModelConfig(mode="two-tower", devices=["cuda:0", "cuda:3"]), cuda_count=2)
    with pytest.raises(UserError, match="'tpu:0' is not a device"):
        resolve(ModelConfig(mode="grouped", devices=["tpu:0"]), cuda_count=0)
    with pytest.raises(UserError, match="must stay empty under torchrun"):
        resolve(ModelConfig(mode="grouped", devices=["cpu"]), DistContext(0, 2, 0, 2), cuda_count=0)
