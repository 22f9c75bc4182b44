"""Bad input to the model API: one clear sentence naming the problem and the fix."""
import pytest
import torch

from twogpu_alexnet import UserError, build_model
from twogpu_alexnet.model.load import infer_preset, load_into, load_weights, to_layout


@pytest.fixture(scope="module")
def model_cifar():
    return build_model("cifar", mode="two-tower", devices=("cpu", "cpu"))


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 1, 32, 32), (3, 32, 32), (2, 3, 32, 31)])
def test_wrong_input_shape_names_the_expected_shape(model_cifar, shape):
    with pytest.raises(ValueError, match=r"N x 3 x 32 x 32"):
        model_cifar(torch.zeros(shape))


def test_unknown_preset_lists_the_presets():
    with pytest.raises(UserError, match="paper, original, paper-onetower, paper-half, original-half, cifar"):
        build_model("alexnet-v9", mode="grouped", device="cpu")


def test_missing_device_is_named_and_grouped_suggested():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(UserError, match=rf"cuda:{count} does not exist.*mode='grouped'"):
        build_model("cifar", mode="two-tower", devices=("cpu", f"cuda:{count}"))


def test_bad_devices_and_modes():
    with pytest.raises(UserError, match="two devices"):
        build_model("cifar", mode="two-tower", devices=("cpu",))
    with pytest.raises(UserError, match="not a device name"):
        build_model("cifar", mode="grouped", device="gpu-zero")
    with pytest.raises(UserError, match="unknown mode"):
        build_model("cifar", mode="three-tower")


def test_auto_mode_without_two_gpus_is_grouped():
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has two GPUs")
    model = build_model("cifar", mode="auto")
    assert model.mode == "grouped"


def test_load_weights_accepts_every_layout_and_checkpoint(tmp_path, model_cifar):
    state = model_cifar.state_dict()
    grouped = to_layout(state, "grouped")
    torch.save(state, tmp_path / "towers.pt")
    torch.save({f"module.{k}": v for k, v in grouped.items()}, tmp_path / "grouped_ddp.pt")
    torch.save({"model": state, "preset": "cifar", "epoch": 3}, tmp_path / "ckpt.pt")
    for name in ("towers.pt", "grouped_ddp.pt", "ckpt.pt"):
        loaded, meta = load_weights(tmp_path / name)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
        assert meta["num_classes"] == 10
    assert load_weights(tmp_path / "ckpt.pt")[1]["preset"] == "cifar"
    assert load_weights(tmp_path / "towers.pt")[1]["preset"] is None
    assert infer_preset(grouped) == "cifar"
    target = build_model("cifar", mode="grouped", device="cpu")
    load_into(target, state)
    assert torch.equal(target.state_dict()["conv2.weight"][64:], state["towers.1.conv2.weight"])


def test_load_weights_rejects_non_checkpoints(tmp_path, model_cifar):
    with pytest.raises(UserError, match="does not exist"):
        load_weights(tmp_path / "nope.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_weights(tmp_path / "text.pt")
    torch.save(model_cifar.state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_weights(tmp_path / "cut.pt")
    torch.save({"layer.weight": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not an AlexNet state dict"):
        load_weights(tmp_path / "foreign.pt")


def test_load_into_a_different_preset_says_which(model_cifar):
    other = build_model("cifar", mode="grouped", device="cpu", num_classes=3)
    with pytest.raises(UserError, match="do not fit preset 'cifar' with 3 classes"):
        load_into(other, model_cifar.state_dict())
