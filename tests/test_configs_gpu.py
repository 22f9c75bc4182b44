"""The GPU configs default to bf16 autocast and channels-last (and keep cudnn.benchmark)."""
from pathlib import Path

import pytest

from twogpu_alexnet.engine.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*gpu.toml")), ids=lambda p: p.name)
def test_gpu_configs_use_bf16_and_channels_last(path, tmp_path):
    speed = load_config(path, [f"data.root={tmp_path}"]).speed
    assert (speed.amp, speed.channels_last, speed.cudnn_benchmark, speed.compile) == ("bf16", True, True, False)


def test_every_gpu_config_is_checked():
    assert sorted(p.name for p in CONFIGS.glob("*gpu.toml")) == ["original-2gpu.toml", "paper-1gpu.toml",
                                                                  "paper-2gpu.toml", "paper-half-1gpu.toml"]
