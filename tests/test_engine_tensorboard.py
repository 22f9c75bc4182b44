"""Optional TensorBoard logging: the missing-package sentence, the records as scalars, off = nothing."""
import io
import sys

import pytest
from PIL import Image

from twogpu_alexnet.engine import train as train_module
from twogpu_alexnet.engine.config import load_config
from twogpu_alexnet.engine.metrics import read_metrics
from twogpu_alexnet.engine.tensorboard import open_board
from twogpu_alexnet.engine.train import train
from twogpu_alexnet.errors import UserError

TINY = ["data.synthetic_images=32", "data.synthetic_val_images=16", "train.batch_size=8", "train.lr=0.001",
        "train.log_every=2", "train.epochs=1", "analysis.kernel_grid_epochs=[1]"]


def test_missing_tensorboard_is_one_sentence_naming_the_extra_before_any_data_is_read(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    monkeypatch.setattr(train_module, "open_data", lambda *a, **k: pytest.fail("data read"))
    with pytest.raises(UserError) as err:
        train(load_config(None, TINY + ["log.tensorboard=true"]), tmp_path / "run")
    assert "pip install 'twogpu-alexnet[tensorboard]'" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_the_key_takes_true_or_false():
    assert load_config(None, ["log.tensorboard=true"]).log.tensorboard is True
    assert load_config(None, []).log.tensorboard is False
    with pytest.raises(UserError, match="log.tensorboard must be true or false"):
        load_config(None, ["log.tensorboard=1"])


class _Writer:
    """Keeps what a SummaryWriter would write."""

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step, self.scalars, self.images, self.closed = log_dir, purge_step, [], [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_image(self, tag, image, step):
        self.images.append((tag, tuple(image.shape), step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_records_become_scalars_at_the_global_step(tmp_path):
    assert open_board(tmp_path, enabled=False).writer is None and not any(tmp_path.iterdir())  # off: no files
    board = open_board(tmp_path / "run", enabled=True, purge_step=7, writer_class=_Writer)
    w = board.writer
    assert (w.log_dir, w.purge_step) == (str(tmp_path / "run" / "tensorboard"), 7)
    board.record({"kind": "step", "epoch": 1, "step": 8, "loss": 2.5, "lr": 0.01, "img_s": 100.0}, 8)
    board.record({"kind": "epoch", "epoch": 1, "train_loss": 2.4, "val_top1_error": 0.5, "val_top5_error": 0.25,
                  "lr": 0.01, "img_s": 90.0, "time_s": 3.0, "color_score_tower0": 0.3,
                  "color_score_tower1": None, "skipped": 0}, 8)
    assert w.scalars == [("train/loss", 2.5, 8), ("train/lr", 0.01, 8), ("train/img_s", 100.0, 8),
                         ("epoch/train_loss", 2.4, 8), ("epoch/val_top1_error", 0.5, 8),
                         ("epoch/val_top5_error", 0.25, 8), ("epoch/lr", 0.01, 8), ("epoch/img_s", 90.0, 8),
                         ("epoch/color_score_tower0", 0.3, 8)]  # a missing score is left out
    texts = []
    w.add_text = lambda tag, text, step: texts.append((tag, text, step))
    board.record({"kind": "epoch", "epoch": 2, "color_verdict": "no split; learned part L = W - W0, ..."}, 9)
    assert texts == [("epoch/color_verdict", "no split; learned part L = W - W0, ...", 9)]
    board.close()
    assert w.closed


def test_a_run_writes_an_event_file_tensorboard_reads_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(load_config(None, TINY + ["log.tensorboard=true"]), run)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    records = read_metrics(run / "metrics.jsonl")[0]
    steps = [r for r in records if r["kind"] == "step"]
    epoch = [r for r in records if r["kind"] == "epoch"][0]
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [r["step"] for r in steps] == [2, 4]
    assert [e.value for e in logged] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    for key in ("val_top1_error", "val_top5_error", "train_loss", "color_score_tower0", "color_score_tower1",
                "learned_color_score_tower0", "color_effect_size", "color_p_value"):  # the one colour verdict's
        (e,) = events.Scalars(f"epoch/{key}")
        assert e.step == 4 and e.value == pytest.approx(epoch[key], rel=1e-6), key
    assert {"train/lr", "train/img_s", "epoch/img_s", "epoch/lr"} <= set(events.Tags()["scalars"])
    (image,) = events.Images("kernels/conv1")
    png = Image.open(io.BytesIO(image.encoded_image_string))
    assert image.step == 4 and png.mode == "RGB" and png.size == (image.width, image.height) and image.height > 50
