"""Config files, --set overrides and the errors a user sees for bad keys and values."""
from pathlib import Path

import pytest
import torch

from twogpu_alexnet.cli import main
from twogpu_alexnet.engine.config import (
    DEMO_TOML,
    Config,
    allowed_keys,
    from_dict,
    load_config,
    parse_override,
    parse_toml,
    to_toml,
    validate,
)
from twogpu_alexnet.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_papers_recipe():
    c = Config()
    t = c.train
    assert (t.batch_size, t.lr, t.momentum, t.weight_decay, t.epochs) == (128, 0.01, 0.9, 5e-4, 90)
    assert (c.schedule.kind, c.schedule.factor, c.schedule.max_drops) == ("plateau", 0.1, 3)


def test_demo_file_matches_the_built_in_demo():
    assert (CONFIGS / "demo.toml").read_text() == DEMO_TOML
    assert load_config(CONFIGS / "demo.toml") == load_config(None)


@pytest.mark.parametrize("name", ["paper-2gpu", "original-2gpu", "paper-1gpu", "cifar10", "demo"])
def test_every_shipped_config_loads(name, tmp_path):
    c = load_config(CONFIGS / f"{name}.toml", [f"data.root={tmp_path}"])
    assert c.train.epochs >= 1
    if name != "demo":  # the recipe configs keep the paper's optimizer values
        assert (c.train.batch_size, c.train.lr, c.train.momentum, c.train.weight_decay) == (128, 0.01, 0.9, 5e-4)


def test_original_config_has_the_2012_schedule(tmp_path):
    c = load_config(CONFIGS / "original-2gpu.toml", [f"data.root={tmp_path}"])
    assert (c.model.preset, c.schedule.kind, c.schedule.milestones) == ("original", "original", [25, 51, 79])
    assert (c.schedule.conv1_milestones, c.schedule.conv1_factors) == ([67, 72], [0.1, 0.0])
    assert c.data.color_noise == "original"
    # colour noise off from epoch 67; the log's "stopped at 91" (counted like the milestones): 90 epochs run
    assert (c.schedule.color_noise_off_epoch, c.train.epochs) == (67, 90)


def test_overrides_parse_toml_values_and_fall_back_to_strings():
    assert parse_override("train.lr=0.1") == ("train", "lr", 0.1)
    assert parse_override("model.devices=['cpu', 'cpu']") == ("model", "devices", ["cpu", "cpu"])
    assert parse_override("model.preset=cifar") == ("model", "preset", "cifar")
    c = load_config(None, ["train.epochs=7", "train.lr=1", "data.root=2012", "speed.channels_last=true"])
    assert (c.train.epochs, c.train.lr, c.data.root, c.speed.channels_last) == (7, 1.0, "2012", True)
    assert isinstance(c.train.lr, float)


def test_toml_round_trip_is_exact():
    c = load_config(None, ["train.lr=1e-05", "model.devices=['cpu']", "model.mode=grouped", "data.root=a \"b\"\\c"])
    assert from_dict(parse_toml(to_toml(c), "x")) == c


@pytest.mark.parametrize("override, words", [
    ("train.lrr=0.1", ["train.lrr", "lr", "batch_size"]),
    ("trian.lr=0.1", ["[trian]", "train", "model"]),
    ("train.epochs=ten", ["train.epochs", "an integer", "'ten'"]),
    ("train.epochs=2.5", ["train.epochs", "an integer"]),
    ("train.batch_size=true", ["train.batch_size", "an integer"]),
    ("speed.channels_last=1", ["speed.channels_last", "true or false"]),
    ("speed.amp=fp8", ["speed.amp", "none, bf16, fp16", "'fp8'"]),
    ("model.mode=three-tower", ["model.mode", "auto, two-tower, grouped"]),
    ("model.preset=vgg", ["model.preset", "paper", "cifar"]),
    ("train.epochs=0", ["train.epochs", "at least 1"]),
    ("schedule.milestones=[1, 'x']", ["schedule.milestones", "a list of integers"]),
    ("trainlr=1", ["section.key=value"]),
    ("model.mode=two-tower", []),  # fine on its own (devices resolve later)
])
def test_bad_overrides_name_the_key_and_what_is_allowed(override, words):
    if not words:
        load_config(None, [override])
        return
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert all(w in message for w in words), message
    assert "\n" not in message


def test_unknown_key_in_a_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nepochz = 3\n")
    with pytest.raises(UserError, match=r"unknown config key train.epochz in .*c.toml; \[train\] takes: epochs"):
        load_config(path)
    path.write_text("[train\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(path)


def test_imagefolder_needs_a_root():
    with pytest.raises(UserError, match="data.root is empty"):
        load_config(CONFIGS / "paper-2gpu.toml")


def test_allowed_keys_include_the_contract_keys():
    assert {"train.epochs", "train.seed", "data.source", "data.root"} <= set(allowed_keys())


def test_validate_checks_device_counts():
    with pytest.raises(UserError, match=r"model.devices must list 2 device\(s\) for mode two-tower"):
        load_config(None, ["model.mode=two-tower", "model.devices=['cpu']"])
    c = load_config(None, ["model.mode=grouped", "model.devices=['cpu']"])
    c.model.devices = ["cpu", "cpu"]
    with pytest.raises(UserError, match="must list 1 device"):
        validate(c)


@pytest.mark.parametrize("argv, words", [
    (["train", "--set", "train.lrr=1"], ["error: unknown config key train.lrr"]),
    (["train", "--config", "no/such.toml"], ["error: config file no/such.toml does not exist"]),
    (["train", "--set", "data.source=imagefolder", "--set", "data.root=/no/such/folder"],
     ["error: data.root /no/such/folder is not a folder"]),
    (["train", "--set", "model.mode=two-tower"], ["error: two-tower mode needs two GPUs", "model.mode=grouped"]),
    (["train", "--resume", "/no/such/run"], ["error: /no/such/run is not a run folder"]),
])
def test_cli_user_errors_are_one_sentence_and_exit_2(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "model.mode=two-tower" in argv and torch.cuda.device_count() >= 2:
        argv = argv + ["--set", "model.devices=['cuda:0', 'cuda:99']"]
        words = ["error: model.devices names cuda:99"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert all(w in err for w in words), err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_cli_batch_not_divisible_across_torchrun_processes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, value in {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3"}.items():
        monkeypatch.setenv(name, value)
    code = main(["train", "--out", str(tmp_path / "run")])  # the demo's batch 64 over 3 processes
    err = capsys.readouterr().err
    assert code == 2
    assert "error: train.batch_size 64 does not divide across 3 processes; set it to a multiple of 3" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
