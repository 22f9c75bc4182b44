"""Epoch-end hooks: the trainer shows each one the epoch (rank 0) and writes the fields it returns; the CLI's
hooks (analysis/epoch_hooks.py) write the kernel grid with the colour statistics off too."""
import torch

from twogpu_alexnet.analysis.epoch_hooks import ColorStats, KernelGrids, epoch_hooks
from twogpu_alexnet.engine.config import load_config
from twogpu_alexnet.engine.metrics import read_metrics
from twogpu_alexnet.engine.train import train

TINY = ["data.synthetic_images=16", "data.synthetic_val_images=8", "train.batch_size=8", "train.lr=0.001",
        "train.epochs=2", "train.max_steps_per_epoch=1", "model.mode=grouped"]


def test_hooks_see_each_epoch_and_add_to_its_line_and_grids_need_no_colour_statistics(tmp_path):
    config = load_config(None, TINY + ["analysis.color_stats=false", "analysis.kernel_grid_epochs=[1]"])
    hooks = epoch_hooks(config)
    assert [type(h) for h in hooks] == [KernelGrids]
    seen = []

    def record(event):
        seen.append((event.epoch, event.step, event.last, sorted(event.weights)[0], event.conv1_init is not None))
        return {"hook_epoch": event.epoch * 10}

    result = train(config, tmp_path / "run", hooks=[*hooks, record])
    assert result.status == "done"
    assert seen == [(1, 1, False, "fc8.bias", True), (2, 2, True, "fc8.bias", True)]
    epochs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl")[0] if r["kind"] == "epoch"]
    assert [e["hook_epoch"] for e in epochs] == [10, 20]
    assert [e["color_score_tower0"] for e in epochs] == [None, None]  # colour statistics off
    grids = sorted(p.name for p in (tmp_path / "run" / "kernels").iterdir())
    assert grids == ["epoch_001.png", "epoch_002.png"]  # the epoch asked for and the last one


def test_colour_statistics_score_the_learned_part_and_keep_the_verdict():
    torch.manual_seed(0)
    init = {f"towers.{t}.conv1.weight": torch.randn(8, 3, 5, 5) for t in (0, 1)}
    weights = {k: v + 0.1 * torch.randn_like(v) for k, v in init.items()}

    class Event:
        epoch, step, last, run_dir, conv1_init, board = 1, 1, False, None, init, None

    Event.weights = weights
    hook = ColorStats()
    fields = hook(Event)
    assert hook.summary["measured"] == "learned"
    assert fields["color_score_tower0"] == hook.summary["weights"]["towers"][0]["mean"]
    assert fields["learned_color_score_tower1"] == hook.summary["learned"]["towers"][1]["mean"]
    assert fields["color_specific_tower"] == hook.summary["color_specific_tower"]


def test_a_link_planted_at_the_kernels_folder_is_refused(tmp_path):
    """Grids go through the one writer into RUN/kernels; a symbolic link there (to a folder outside the
    run) is refused in one sentence and nothing is written outside."""
    import pytest

    from twogpu_alexnet.errors import UserError

    outside = tmp_path / "outside"
    outside.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "kernels").symlink_to(outside)
    event = type("Event", (), {"epoch": 1, "last": True, "run_dir": run, "step": 1, "board": None,
                               "weights": None})()
    with pytest.raises(UserError, match=r"kernels is a symbolic link .*refusing to write kernel grids"):
        KernelGrids([1])(event)
    assert list(outside.iterdir()) == []
