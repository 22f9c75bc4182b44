"""The one device checker (model/devices.py), as build_model, the trainer's placement, evaluation and the
benchmarks see it: the same sentence for the same mistake, whoever asks."""
import pytest
import torch

from twogpu_alexnet.engine.config import ModelConfig
from twogpu_alexnet.engine.inference import torch_device
from twogpu_alexnet.engine.placement import resolve
from twogpu_alexnet.errors import UserError
from twogpu_alexnet.model import build_model
from twogpu_alexnet.model.devices import check_device

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
ASKERS = {
    "build_model": lambda d: build_model("cifar", mode="grouped", device=d),
    "model.devices": lambda d: resolve(ModelConfig(mode="grouped", devices=[d])),
    "--device": torch_device,
}


@pytest.mark.parametrize("asker", ASKERS)
@pytest.mark.parametrize("name, says", [("bogus", "'bogus' is not a device name; use cpu, cuda or cuda:N"),
                                        (f"cuda:{GPUS + 3}", f"cuda:{GPUS + 3} does not exist (this machine has "
                                                             f"{GPUS} CUDA device")])
def test_every_asker_gets_the_same_sentence(asker, name, says):
    with pytest.raises(UserError) as err:
        ASKERS[asker](name)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_names_are_spelled_in_full_and_the_kinds_are_checked():
    assert check_device("cpu") == torch.device("cpu")
    assert check_device("cuda", count=1) == torch.device("cuda:0")
    assert check_device("meta").type == "meta"  # shapes without memory (model.load)
    with pytest.raises(UserError, match="--device 'meta' is not supported; use cpu, cuda or cuda:N"):
        check_device("meta", what="--device", kinds=("cpu", "cuda"))
    with pytest.raises(UserError, match=r"device cuda:2 does not exist \(this machine has 2 CUDA devices\); "
                                        r"use cuda:0 .. cuda:1 or cpu"):
        check_device("cuda:2", count=2)
    assert resolve(ModelConfig(mode="two-tower", devices=["cuda", "cpu"]), cuda_count=1).devices == ("cuda:0", "cpu")
