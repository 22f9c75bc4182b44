"""The one checkpoint reader (model/load.py read_file / load_weights, engine/checkpoint.load_checkpoint):
no numbers from NaN or infinite weights, no pickled objects, one sentence each, in every command."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from twogpu_alexnet import build_model
from twogpu_alexnet.cli import main
from twogpu_alexnet.errors import UserError
from twogpu_alexnet.model.load import load_weights


def _state(nan_key: str | None = None, value=float("nan")) -> dict:
    torch.manual_seed(0)
    state = build_model("cifar", mode="grouped", device="cpu", num_classes=2).state_dict()
    if nan_key:
        state[nan_key] = state[nan_key].clone()
        state[nan_key].view(-1)[1] = value
    return state


@pytest.fixture
def images(tmp_path):
    """A split folder of 2 classes of 32x32 PNGs, and one query image."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    return tmp_path / "data"


@pytest.mark.parametrize("key, value, kind", [("conv2.weight", float("nan"), "NaN"),
                                              ("fc8.bias", float("inf"), "infinite values")])
def test_load_weights_names_the_first_non_finite_tensor(tmp_path, key, value, kind):
    torch.save(_state(key, value), tmp_path / "w.pt")
    with pytest.raises(UserError) as err:
        load_weights(tmp_path / "w.pt")
    assert str(err.value) == (f"{tmp_path / 'w.pt'}: {key} holds {kind}; these weights are broken (the training "
                              "diverged): use an earlier checkpoint")


def test_every_command_refuses_nan_weights_in_one_sentence(tmp_path, images, capsys):
    torch.save(_state("conv1.weight"), tmp_path / "nan.pt")
    torch.save({"features.0.weight": torch.full((8, 3, 3, 3), float("nan"))}, tmp_path / "conv1.pt")
    commands = {
        "evaluate": ["evaluate", "--checkpoint", str(tmp_path / "nan.pt"), "--data", str(images), "--workers", "0"],
        "kernels": ["kernels", "--checkpoint", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "k")],
        "kernels --weights": ["kernels", "--weights", str(tmp_path / "conv1.pt"), "--out", str(tmp_path / "kw")],
        "neighbors": ["neighbors", "--checkpoint", str(tmp_path / "nan.pt"), "--data", str(images), "--queries",
                      str(images / "a" / "0.png"), "--out", str(tmp_path / "n"), "--no-cache"],
    }
    for name, args in commands.items():
        assert main(args) == 2, name
        err = capsys.readouterr().err
        bad = "features.0.weight" if name == "kernels --weights" else "conv1.weight"
        assert f"{bad} holds NaN; these weights are broken" in err, (name, err)
        assert "Traceback" not in err and "top1" not in err and "%" not in err, (name, err)


def test_resume_refuses_nan_weights_naming_the_tensor(tmp_path, capsys):
    from twogpu_alexnet.engine import checkpoint as ckpt

    run = tmp_path / "run"
    tiny = [a for s in ("data.synthetic_images=16", "data.synthetic_val_images=8", "train.batch_size=8",
                        "train.epochs=1", "train.max_steps_per_epoch=1", "analysis.color_stats=false")
            for a in ("--set", s)]
    assert main(["train", "--out", str(run)] + tiny) == 0
    for path in (run / "checkpoints").glob("*.pt"):
        payload = torch.load(path, weights_only=True)
        payload["model"]["towers.1.fc6.weight"][0, 0] = float("nan")
        torch.save(payload, path)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "skipped last.pt: " in err and "towers.1.fc6.weight holds NaN" in err, err
    assert "Traceback" not in err
    with pytest.raises(UserError, match="towers.1.fc6.weight holds NaN"):
        ckpt.load_checkpoint(run / "checkpoints" / "epoch_001.pt")


class _Payload:
    pass


def test_pickled_objects_are_one_sentence_in_every_reader(tmp_path, capsys):
    from twogpu_alexnet.engine import checkpoint as ckpt

    torch.save({"model": _Payload()}, tmp_path / "p.pt")
    sentence = f"{tmp_path / 'p.pt'} holds pickled Python objects, which are not loaded because loading them can run"
    with pytest.raises(UserError, match="holds pickled Python objects"):
        load_weights(tmp_path / "p.pt")
    with pytest.raises(UserError, match="holds pickled Python objects"):
        ckpt.load_checkpoint(tmp_path / "p.pt")
    assert main(["kernels", "--checkpoint", str(tmp_path / "p.pt"), "--out", str(tmp_path / "k")]) == 2
    assert sentence in capsys.readouterr().err


def test_a_training_checkpoint_without_what_resume_needs_is_one_sentence(tmp_path):
    from twogpu_alexnet.engine import checkpoint as ckpt

    torch.save({"model": _state(), "format": ckpt.FORMAT, "epoch": 1, "batch": 0, "step": 3}, tmp_path / "c.pt")
    with pytest.raises(UserError, match="c.pt is a damaged training checkpoint \\(its 'optimizer' entry is missing"):
        ckpt.load_checkpoint(tmp_path / "c.pt")
    shutil.copy(tmp_path / "c.pt", tmp_path / "d.pt")
    assert load_weights(tmp_path / "d.pt")[1]["epoch"] == 1  # lenient: its weights still evaluate


def test_a_two_tower_state_with_towers_of_different_shapes_is_one_sentence(tmp_path, capsys):
    state = build_model("cifar", mode="two-tower", devices=("cpu", "cpu")).state_dict()
    state["towers.1.conv1.weight"] = state["towers.1.conv1.weight"][:5].clone()
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(UserError, match=r"towers.1.conv1.weight is of shape \(5, 3, 5, 5\) but towers.0.conv1.weight "
                                        r"has shape \(48, 3, 5, 5\); the two towers of a layer must match"):
        load_weights(tmp_path / "w.pt")
    assert main(["kernels", "--checkpoint", str(tmp_path / "w.pt"), "--out", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert "the two towers of a layer must match" in err and "Traceback" not in err
