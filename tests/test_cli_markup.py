"""Paths, file names and reasons print as they are: rich markup is off for every command's console, so a
path holding ``[/x]`` cannot raise MarkupError and ``[red]`` does not vanish. Also the data commands' number
checks (one sentence, exit 2)."""
import numpy as np
import pytest

from twogpu_alexnet.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ODD = "da[/x]ta [red]x[/red] :smile:"


@pytest.fixture
def odd_split(tmp_path, data_write_images):
    rng = np.random.default_rng(0)
    files = {f"c[/x]{c}/im{i}.png": rng.integers(0, 255, (12, 12, 3)) for c in ("a", "b") for i in range(2)}
    files["c[/x]b/[red]broken[/x].png"] = b"not an image"
    return data_write_images(tmp_path / ODD / "train", files)


def test_prepare_and_stats_print_odd_paths_as_they_are(tmp_path, odd_split, capsys):
    out_dir = tmp_path / ODD / "st[/x]ore [red]"
    assert main(["prepare", "--data", str(odd_split), "--out", str(out_dir), "--size", "8", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert f"store {out_dir}\n" in out
    assert f"skipped {odd_split}/c[/x]b/[red]broken[/x].png: not an image" in out
    assert main(["stats", "--data", str(odd_split), "--size", "8", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert f"training statistics of {odd_split} (4 images, 8x8)\n" in out
    assert f"saved to {odd_split}/.twogpu-alexnet-stats-8.pt\n" in out


def test_error_sentences_keep_odd_paths(tmp_path, capsys):
    missing = tmp_path / "[red]missing[/x]"
    assert main(["stats", "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --data folder {missing} does not exist")


def test_train_out_with_markup_characters(tmp_path, capsys):
    run = tmp_path / "ru[/x]n [red]"
    sets = ["data.synthetic_images=16", "data.synthetic_val_images=8", "train.batch_size=8", "train.epochs=1",
            "train.max_steps_per_epoch=1", "train.log_every=1", "analysis.kernel_grid_epochs=[]"]
    assert main(["train", "--out", str(run)] + [a for s in sets for a in ("--set", s)]) == 0
    captured = capsys.readouterr()
    assert "MarkupError" not in captured.err and (run / "metrics.jsonl").exists()


@pytest.mark.parametrize("size", ["0", "-3", "100000"])
def test_stats_and_prepare_sizes_are_checked_first(tmp_path, odd_split, capsys, size):
    for argv in (["stats", "--data", str(odd_split), "--size", size],
                 ["prepare", "--data", str(odd_split), "--out", str(tmp_path / "s"), "--size", size]):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == f"error: --size {size} is outside 8..4096; use 256 for the " \
            "paper (224 crops) or 32 for CIFAR-style inputs.\n"
    assert not (tmp_path / "s").exists()


def test_prepare_with_nothing_readable_exits_2(tmp_path, data_write_images, capsys):
    src = data_write_images(tmp_path / "src", {"a/x.png": b"broken", "b/y.png": b"also broken"})
    for _ in range(2):                                # also when the (empty) store is found finished
        assert main(["prepare", "--data", str(src), "--out", str(tmp_path / "s"), "--size", "8", "--workers", "1"]) == 2
        err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("prepare: ")]
        assert len(err) == 1 and err[0].startswith(f"error: none of the 2 files under {src} could be stored (first: ")


def test_bad_pixel_limit_setting_is_one_sentence(monkeypatch, capsys):
    monkeypatch.setenv("TWOGPU_ALEXNET_MAX_PIXELS", "many")
    assert main(["info", "--preset", "cifar"]) == 2
    assert capsys.readouterr().err.startswith("error: TWOGPU_ALEXNET_MAX_PIXELS='many' is not a positive whole number")


def test_no_command_prints_markup_tags():
    """Markup is off in every console, so a ``[bold]`` written into a printed string would show literally:
    styles go in ``style=`` or rich Text. (Progress-bar ``TextColumn`` formats render their own markup.)"""
    import re
    from pathlib import Path

    import twogpu_alexnet.cli

    tag = re.compile(r"\[/?(bold|dim|italic|underline|red|green|yellow|blue|cyan|magenta|white)( [^\]]*)?\]")
    found = [f"{path.name}:{n}: {line.strip()}"
             for path in sorted(Path(twogpu_alexnet.cli.__file__).parent.glob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if tag.search(line) and "TextColumn(" not in line]
    assert found == []
