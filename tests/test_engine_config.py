"""Config files, --set overrides and the errors a user sees for bad keys and values."""
import ast
import configparser
import os
import subprocess
import sys
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


def test_strings_with_control_and_non_ascii_characters_round_trip(tmp_path):
    """A data.root with a carriage return (or any control or non-ASCII character) is written as TOML
    that reads back to the same config, whatever the locale."""
    root = "".join(chr(i) for i in range(32)) + "\x7f quote\" back\\slash é 東京 🙂 \u2028"
    c = load_config(None, ["model.mode=grouped", "model.devices=['cpu']"])
    c.data.root = root
    text = to_toml(c)
    assert text.isascii()
    (tmp_path / "config.toml").write_bytes(text.encode("ascii"))
    assert load_config(tmp_path / "config.toml") == c
    assert load_config(tmp_path / "config.toml").data.root == root


def test_a_root_that_is_not_utf8_is_one_sentence():
    with pytest.raises(UserError, match="data.root holds bytes that are not UTF-8 text"):
        load_config(None, ["data.source=imagefolder", "data.root=/data/caf\udce9"])  # a Latin-1 name from argv


@pytest.mark.parametrize("content", [b"[train]\nepochs = 2\n# caf\xe9\n", b"\xff\xfe[\x00t\x00"])
def test_a_config_file_that_is_not_utf8_is_one_sentence(tmp_path, content, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"latin1.toml is not UTF-8 text \(byte 0x[0-9a-f]{2} at offset \d+\); "
                                        "save it as UTF-8"):
        load_config(path)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text" in err and "Traceback" not in err
    (tmp_path / "run").mkdir()
    path.rename(tmp_path / "run" / "config.toml")  # a run's config.toml, edited in another encoding
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "config.toml is not UTF-8 text" in err and "Traceback" not in err


@pytest.mark.parametrize("override, words", [
    ("schedule.factor=5", "schedule.factor must be between 0 and 1 (the lr is multiplied by it at each drop), got 5"),
    ("schedule.factor=1", "schedule.factor must be between 0 and 1"),
    ("schedule.factor=0", "schedule.factor must be between 0 and 1"),
    ("model.num_classes=1", "model.num_classes must be 0 (follow the data) or at least 2, got 1"),
])
def test_values_that_would_train_silently_wrong_are_refused(override, words):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert words in str(err.value)
    load_config(None, ["schedule.factor=0.5", "model.num_classes=2"])


def test_a_config_path_that_is_a_folder(tmp_path):
    with pytest.raises(UserError, match="is a folder; pass --config"):
        load_config(tmp_path)


REPO = Path(__file__).resolve().parents[1]


def test_python_310_is_supported_as_setup_cfg_says():
    """setup.cfg promises Python 3.10 with tomli there: every module parses as 3.10 syntax, and the
    config loader works where the standard library has no tomllib (tomli stands in for it here)."""
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert setup["options"]["python_requires"] == ">=3.10"
    assert 'tomli>=2; python_version < "3.11"' in setup["options"]["install_requires"]
    for path in sorted((REPO / "twogpu_alexnet").rglob("*.py")):
        ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 10))
    script = (
        "import sys, tomllib\n"
        "sys.modules['tomli'] = tomllib  # the tomli package, as pip installs it on 3.10 (the same API)\n"
        "sys.modules['tomllib'] = None  # Python 3.10: `import tomllib` fails\n"
        "from twogpu_alexnet.engine import config\n"
        "assert config.tomllib is sys.modules['tomli']\n"
        "c = config.load_config(None, ['train.lr=0.5'])\n"
        "assert c.train.lr == 0.5 and config.from_dict(config.parse_toml(config.to_toml(c), 'x')) == c\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.strip() == "ok", done.stderr


def test_a_dataset_with_one_class_is_refused_before_training(tmp_path, data_write_images, capsys):
    """One class trains to "0.00% error"; the trainer refuses it in one sentence instead."""
    import numpy as np

    images = {f"{split}/only/{i}.png": np.full((32, 32, 3), 40 * i) for split in ("train", "val") for i in range(4)}
    data_write_images(tmp_path / "data", images)
    code = main(["train", "--out", str(tmp_path / "run"), "--set", "data.source=imagefolder", "--set",
                 f"data.root='{tmp_path / 'data'}'", "--set", "data.workers=0", "--set", "train.batch_size=2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: the training data has 1 class (only); a classifier needs at least 2 class folders" in err, err
    assert not (tmp_path / "run").exists()


def test_the_preset_key_names_every_preset():
    """model.preset's comment in engine/config.py lists the presets a user can choose (all of spec.PRESETS)."""
    import inspect

    from twogpu_alexnet.engine import config as config_module
    from twogpu_alexnet.spec import PRESETS

    source = inspect.getsource(config_module.ModelConfig)
    comment = source[source.index('preset: str = "paper"'):source.index("mode: str")]
    assert [name for name in PRESETS if f" {name} " not in comment.replace("|", " ").replace("\n", " ") + " "] == []
