"""The trainer in two-tower mode feeds each tower the batch its own device finished: the run is the run fed one
tensor, number for number."""
import pytest
import torch

from twogpu_alexnet.data import TowerInputs
from twogpu_alexnet.data import loader as loader_module
from twogpu_alexnet.engine import step as step_module
from twogpu_alexnet.engine.checkpoint import load_checkpoint
from twogpu_alexnet.engine.config import load_config
from twogpu_alexnet.engine.metrics import read_metrics
from twogpu_alexnet.engine.step import first_rows, model_layout
from twogpu_alexnet.engine.train import train

# 4 steps of 8 images per epoch, 12 validation images (batches of 8 and 4)
TINY = ["data.synthetic_images=32", "data.synthetic_val_images=12", "train.batch_size=8", "train.lr=0.01",
        "train.log_every=2", "train.deterministic=true", "train.epochs=1", "analysis.color_stats=false",
        "model.mode=two-tower", "model.devices=['cpu', 'cpu']"]


def _every_entry_its_own_device(device):
    """device_slots as if each entry were another device: the loader delivers and finishes once per tower."""
    entries = [torch.device(d) for d in device] if isinstance(device, (list, tuple)) else [torch.device(device)]
    return tuple(entries), tuple(range(len(entries)))


def test_model_layout_lays_out_each_tower_on_its_own():
    x, y = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    out = model_layout(TowerInputs((x, y, x)), torch.device("cpu"), channels_last=True)
    assert type(out) is tuple and len(out) == 3 and out[0] is out[2]
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in out)
    assert torch.equal(out[0], x) and torch.equal(out[1], y)
    rows = first_rows(TowerInputs((x, y)), 3)
    assert isinstance(rows, TowerInputs) and torch.equal(rows[0], x[:3]) and torch.equal(rows[1], y[:3])
    assert torch.equal(first_rows(x, 3), x[:3])


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_run_fed_per_tower_batches_equals_the_run_fed_one_tensor(tmp_path, monkeypatch, channels_last):
    config = load_config(None, TINY + [f"speed.channels_last={str(channels_last).lower()}"])
    train(config, tmp_path / "one")
    fed = []
    real_layout = step_module.model_layout
    monkeypatch.setattr(step_module, "model_layout", lambda images, *a: fed.append(type(images)) or
                        real_layout(images, *a))
    monkeypatch.setattr(loader_module, "device_slots", _every_entry_its_own_device)
    result = train(config, tmp_path / "pair")
    assert result.status == "done"
    assert fed == [TowerInputs] * 6                     # 4 training batches, 2 validation batches
    one, pair = (read_metrics(tmp_path / run / "metrics.jsonl")[0] for run in ("one", "pair"))
    drop = ("time_s", "img_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in one] == \
        [{k: v for k, v in r.items() if k not in drop} for r in pair]
    assert [r["kind"] for r in one] == ["step", "step", "epoch"] and 0 <= one[-1]["val_top1_error"] <= 1
    a = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "pair" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
