"""Optional TensorBoard logging: the missing-package sentence, the records as scalars, off = nothing."""
import io
import sys

import pytest
from PIL import Image

from twogpu_alexnet.analysis.epoch_hooks import epoch_hooks
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

    def __init__(self, log_dir, purge_step=None, filename_suffix=""):
        self.log_dir, self.purge_step, self.scalars, self.images, self.closed = log_dir, purge_step, [], [], False
        self.filename_suffix = filename_suffix

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
    config = load_config(None, TINY + ["log.tensorboard=true"])
    train(config, run, hooks=epoch_hooks(config))  # the CLI's hooks: colour scores, kernel grid
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


def test_a_link_planted_at_the_event_folder_is_refused_and_event_names_cannot_be_predicted(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "tensorboard").symlink_to(outside)
    with pytest.raises(UserError, match="tensorboard is a symbolic link .*refusing to write TensorBoard events"):
        open_board(run, enabled=True, writer_class=_Writer)
    assert not any(outside.iterdir())
    (run / "tensorboard").unlink()
    suffixes = {open_board(run, enabled=True, writer_class=_Writer).writer.filename_suffix for _ in range(2)}
    assert len(suffixes) == 2 and all(len(x) == 17 for x in suffixes)  # "." + 16 random hex digits each


class _FullDisk(_Writer):
    """A writer whose file write fails as on a full disk (SummaryWriter's queue raises it at a later call)."""

    def flush(self):
        raise OSError(28, "No space left on device")

    def close(self):
        raise OSError(28, "No space left on device")


def test_a_full_disk_under_the_event_file_is_the_one_write_error_sentence(tmp_path):
    board = open_board(tmp_path / "run", enabled=True, writer_class=_FullDisk)
    for write in (lambda: board.record({"kind": "step", "loss": 1.0}, 1), lambda: board.image("k", _Image(), 1),
                  board.close):
        with pytest.raises(UserError) as err:
            write()
        text = str(err.value)
        assert text.startswith("could not write the TensorBoard events (the disk is full)") and "--resume" in text, text
    board.close()  # closed once: a second close does nothing


class _Image:
    shape = (3, 4, 4)


def test_a_real_event_file_gets_the_random_suffix(tmp_path):
    pytest.importorskip("tensorboard")
    board = open_board(tmp_path / "run", enabled=True)
    board.record({"kind": "step", "loss": 1.0}, 1)
    board.close()
    (event,) = (tmp_path / "run" / "tensorboard").iterdir()
    assert event.name.startswith("events.out.tfevents.") and len(event.name.rsplit(".", 1)[-1]) == 16
