"""Every numeric config key bounded before anything is allocated, half a torchrun environment, and a run on
zero images: one sentence each, exit 2, no run folder made (engine/config.py, engine/distributed.py)."""
import pytest

from twogpu_alexnet.cli import main
from twogpu_alexnet.engine import distributed
from twogpu_alexnet.engine.config import allowed_keys, load_config
from twogpu_alexnet.errors import UserError

_TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

CASES = [  # (--set values, environment, words of the one sentence)
    (["model.num_classes=5000000"], {}, "model.num_classes is 5000000, above the largest value this program takes, "
                                        "100,000"),
    (["data.synthetic_images=2000000000"], {}, "data.synthetic_images is 2000000000, above the largest value"),
    (["data.synthetic_val_images=20000000"], {}, "data.synthetic_val_images is 20000000, above"),
    (["train.seed=9223372036854775807"], {}, "train.seed is 9223372036854775807, above the largest value this "
                                             "program takes, 4,294,967,295"),
    (["train.seed=-1"], {}, "train.seed must be 0 .. 4294967295, got -1"),
    (["data.workers=100000"], {}, "data.workers is 100000, above the largest value this program takes, 256"),
    (["train.batch_size=100000000"], {}, "train.batch_size is 100000000, above"),
    (["train.epochs=99999999999"], {}, "train.epochs is 99999999999, above"),
    (["train.log_every=99999999999999"], {}, "train.log_every is 99999999999999, above the largest value this "
                                             "program takes, 2,147,483,647"),
    (["schedule.milestones=[1, 99999999999]"], {}, "schedule.milestones is 99999999999, above"),
    (["analysis.kernel_grid_epochs=[0]"], {}, "analysis.kernel_grid_epochs lists epochs from 1, got [0]"),
    ([], {"WORLD_SIZE": "0"}, "WORLD_SIZE=0 and LOCAL_WORLD_SIZE=0 must be 1 or more"),
    ([], {"RANK": "1"}, "the environment has RANK=1 but no WORLD_SIZE (half a torchrun environment)"),
    ([], {"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 must be 0 .. WORLD_SIZE-1 (1)"),
    ([], {"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE=2 but MASTER_ADDR and MASTER_PORT are not set, so the "
                                           "processes cannot meet; launch with torchrun"),
]


@pytest.mark.parametrize("sets, env, words", CASES, ids=[" ".join(c[0]) or " ".join(f"{k}={v}" for k, v in c[1].items())
                                                          for c in CASES])
def test_each_out_of_bounds_key_or_environment_is_one_sentence_before_anything_is_made(
        tmp_path, capsys, monkeypatch, sets, env, words):
    for name in _TORCHRUN:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    run = tmp_path / "run"
    code = main(["train", "--out", str(run)] + [a for s in sets for a in ("--set", s)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"error: {words}" in err, err
    assert "Traceback" not in err
    assert not run.exists()  # refused before the run folder was made


def test_every_whole_number_key_has_an_upper_bound():
    import dataclasses

    from twogpu_alexnet.engine.config import Config

    config = load_config(None)
    whole = [k for k in allowed_keys()
             if {f.name: f.type for f in dataclasses.fields(getattr(Config(), k.split(".")[0]))}[k.split(".")[1]]
             in (int, list[int])]
    assert len(whole) >= 15
    for key in whole:
        section, name = key.split(".")
        value = [2**63] if isinstance(getattr(getattr(config, section), name), list) else 2**63
        with pytest.raises(UserError, match=f"{key} is {2**63}, above the largest value"):
            load_config(None, [f"{key}={value}"])


def test_a_complete_torchrun_environment_is_accepted():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29500"}
    ctx = distributed.context_from_env(env)
    assert (ctx.rank, ctx.world_size, ctx.local_rank) == (1, 2, 1)
    distributed.check_rendezvous(ctx, env)


def _photo_folders(root, data_write_images, *, seed: int, train: int, val: int) -> None:
    """root/data/{train,val}/{a,b}/*.png: ``train`` / ``val`` random 32 x 32 images a class, and the training
    split's statistics computed (before a test sets a pixel limit that would make them unreadable)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        data_write_images(root / "data" / split, {f"{c}/{i}.png": rng.integers(0, 255, (32, 32, 3))
                                                  for c in "ab" for i in range(count)})
    assert main(["stats", "--data", str(root / "data" / "train"), "--size", "32", "--workers", "1"]) == 0


def test_a_run_on_zero_readable_images_is_one_sentence(tmp_path, capsys, monkeypatch, data_write_images):
    """Every image over the pixel limit (its statistics computed before the limit was set): the run stops
    with a sentence, not "best error inf%"."""
    _photo_folders(tmp_path, data_write_images, seed=0, train=4, val=4)
    monkeypatch.setenv("TWOGPU_ALEXNET_MAX_PIXELS", "1")
    sets = ("data.source=imagefolder", f"data.root={tmp_path / 'data'}", "train.batch_size=4", "train.epochs=1",
            "data.workers=0", "analysis.color_stats=false")
    code = main(["train", "--out", str(tmp_path / "run")] + [a for s in sets for a in ("--set", s)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error: epoch 1 trained on no image: all 8 training images read were skipped" in err, err
    assert "inf%" not in err and "Traceback" not in err


def test_a_run_that_reads_no_image_stops_after_its_first_batches_not_the_epoch(tmp_path, capsys, monkeypatch,
                                                                                data_write_images):
    """The check runs after ZERO_CHECK_IMAGES training images (here 8 of the epoch's 24), not after the wasted
    epoch and its validation."""
    from twogpu_alexnet.engine import train as train_module

    _photo_folders(tmp_path, data_write_images, seed=0, train=12, val=2)
    monkeypatch.setenv("TWOGPU_ALEXNET_MAX_PIXELS", "1")
    monkeypatch.setattr(train_module, "ZERO_CHECK_IMAGES", 8)
    sets = ("data.source=imagefolder", f"data.root={tmp_path / 'data'}", "train.batch_size=4", "train.epochs=1",
            "data.workers=0", "analysis.color_stats=false")
    code = main(["train", "--out", str(tmp_path / "run")] + [a for s in sets for a in ("--set", s)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert ("error: epoch 1 trained on no image: all 8 training images read in its first 2 batches (stopped there) "
            "were skipped") in err, err



def test_a_run_resumed_in_mid_epoch_counts_what_the_epoch_trained_before(tmp_path, monkeypatch, data_write_images):
    """Stopped after 2 of 6 batches (8 images trained), resumed with every image now over the pixel limit: the
    early check at batch 4 sees the 8 images of before the resume and lets the epoch go on (it ends at the
    validation, which reads nothing either), instead of saying the epoch trained on no image."""
    import signal

    from twogpu_alexnet.engine import train as train_module
    from twogpu_alexnet.engine.progress import Reporter
    from twogpu_alexnet.engine.signals import StopRequest

    _photo_folders(tmp_path, data_write_images, seed=1, train=12, val=2)
    config = load_config(None, ["data.source=imagefolder", f"data.root={tmp_path / 'data'}", "train.batch_size=4",
                                "train.epochs=1", "data.workers=0", "analysis.color_stats=false",
                                "model.preset=cifar"])
    stop = StopRequest()

    class StopAfterTwo(Reporter):
        def step(self, epoch, batch, loss, lr, img_s):
            if batch + 1 == 2:
                stop.request(signal.SIGTERM)

    stopped = train_module.train(config, tmp_path / "run", stop=stop, reporter=StopAfterTwo())
    assert stopped.status == "interrupted"
    monkeypatch.setenv("TWOGPU_ALEXNET_MAX_PIXELS", "1")
    monkeypatch.setattr(train_module, "ZERO_CHECK_IMAGES", 16)  # checked after batch 4, in the resumed part
    with pytest.raises(UserError) as err:
        train_module.train(config, tmp_path / "run", resume=True)
    assert "validated on no image" in str(err.value), err.value


def test_kernel_grids_are_written_without_the_colour_statistics(tmp_path):
    run = tmp_path / "run"
    sets = ("data.synthetic_images=16", "data.synthetic_val_images=8", "train.batch_size=8", "train.epochs=1",
            "train.max_steps_per_epoch=1", "analysis.color_stats=false", "analysis.kernel_grid_epochs=[1]")
    assert main(["train", "--out", str(run)] + [a for s in sets for a in ("--set", s)]) == 0
    assert (run / "kernels" / "epoch_001.png").stat().st_size > 0


def test_the_error_that_stops_a_run_is_not_replaced_by_one_of_closing_tensorboard(tmp_path, monkeypatch,
                                                                                   data_write_images):
    """The run stops (no image readable) and TensorBoard's close then fails too (a full disk): the user sees the
    first error, the one that stopped the run."""
    from twogpu_alexnet.engine import tensorboard
    from twogpu_alexnet.engine import train as train_module

    class FullDisk:
        def __init__(self, log_dir, purge_step=None, filename_suffix=""):
            pass

        def close(self):
            raise OSError(28, "No space left on device")

    _photo_folders(tmp_path, data_write_images, seed=2, train=4, val=4)
    monkeypatch.setenv("TWOGPU_ALEXNET_MAX_PIXELS", "1")
    monkeypatch.setattr(tensorboard, "summary_writer_class", lambda: FullDisk)
    config = load_config(None, ["data.source=imagefolder", f"data.root={tmp_path / 'data'}", "train.batch_size=4",
                                "train.epochs=1", "data.workers=0", "analysis.color_stats=false",
                                "model.preset=cifar", "log.tensorboard=true"])
    with pytest.raises(UserError, match="epoch 1 trained on no image"):
        train_module.train(config, tmp_path / "run")
