"""`twogpu-alexnet report` and `kernels` on run folders and checkpoints (analysis/report.py, cli)."""
import base64
import html
import json
import re
import sys

import pytest
import torch

from twogpu_alexnet.analysis.kernels import save_kernel_grid
from twogpu_alexnet.analysis.report import build_report, run_metrics
from twogpu_alexnet.cli import main
from twogpu_alexnet.errors import UserError


def planted_state(preset="cifar", colour_tower=1):
    """A cifar model's state with a planted split: one tower's conv1 gray, the other's colour."""
    from twogpu_alexnet import build_model

    state = build_model(preset, mode="two-tower", devices=("cpu", "cpu")).state_dict()
    g = torch.Generator().manual_seed(0)
    w = state["towers.0.conv1.weight"]
    gray = torch.randn(w.shape[0], 1, *w.shape[2:], generator=g).expand_as(w).clone()
    colour = torch.randn(w.shape, generator=g)
    colour -= colour.mean(dim=1, keepdim=True)
    state[f"towers.{colour_tower}.conv1.weight"] = colour
    state[f"towers.{1 - colour_tower}.conv1.weight"] = gray
    return state


@pytest.fixture
def analysis_run_folder(tmp_path):
    """A short run's folder as the trainer writes it: metrics.jsonl, config.toml, kernels/, checkpoints/."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    lines = []
    for epoch in (1, 2, 3):
        for i in range(4):
            lines.append({"kind": "step", "epoch": epoch, "step": 4 * (epoch - 1) + i + 1,
                          "loss": 2.3 - 0.1 * epoch - 0.01 * i, "lr": 0.01 / epoch, "img_s": 120.0})
        lines.append({"kind": "epoch", "epoch": epoch, "train_loss": 2.3 - 0.1 * epoch,
                      "val_top1_error": 0.9 - 0.1 * epoch, "val_top5_error": 0.5 - 0.1 * epoch, "lr": 0.01 / epoch,
                      "time_s": 10.0, "skipped": 0, "color_score_tower0": 0.66 - 0.1 * epoch,
                      "color_score_tower1": 0.66 + 0.05 * epoch})
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "step", "epo'  # cut short by a kill
    (run / "metrics.jsonl").write_text(text)
    (run / "config.toml").write_text('[model]\npreset = "cifar"\n# <b>not markup</b>\n')
    state = planted_state()
    torch.save({"model": state, "preset": "cifar", "num_classes": 10, "epoch": 3, "step": 12},
               run / "checkpoints" / "last.pt")
    for epoch in (1, 3):
        save_kernel_grid(state, run / "kernels" / f"epoch_{epoch:03d}.png")
    return run


def _embedded_pngs(page):
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_read_metrics_skips_a_cut_line(analysis_run_folder):
    steps, epochs, bad = run_metrics(analysis_run_folder)
    assert len(steps) == 12 and [r["epoch"] for r in epochs] == [1, 2, 3] and bad == 1


def test_report_builds_from_a_run_folder(analysis_run_folder, tmp_path):
    pytest.importorskip("matplotlib")
    result = build_report(analysis_run_folder)
    assert result["epochs"] == 3 and result["steps"] == 12 and result["unreadable_lines"] == 1
    assert result["best_val_top1_error"] == pytest.approx(0.6) and result["best_top1_epoch"] == 3
    assert result["best_val_top5_error"] == pytest.approx(0.2)
    assert result["total_time_s"] == pytest.approx(30.0)
    assert set(result["plots"]) == {"loss", "error", "lr", "color_score"}
    assert result["plots_missing"] is None
    assert result["towers"]["color_specific_tower"] == 1  # the planted split in last.pt
    page = (analysis_run_folder / "report" / "report.html").read_text()
    pngs = _embedded_pngs(page)
    assert len(pngs) == 4 + 2 + 1  # four curves, the two kernel grids and last.pt's W-beside-L figure, all inline
    assert (analysis_run_folder / "report" / "kernels_last.png").read_bytes() in pngs
    assert result["preset"] == "cifar" and result["steps_done"] == 12
    assert "<td>cifar</td>" in page
    assert all(p.startswith(b"\x89PNG") for p in pngs)
    assert (analysis_run_folder / "kernels" / "epoch_003.png").read_bytes() in pngs
    assert "tower 1 is the colour-specific one" in page and "alpha 0.05 (alpha" not in page
    assert "&lt;b&gt;not markup&lt;/b&gt;" in page  # config shown escaped
    assert "60.00%" in page  # best top-1 error in the summary table
    assert "src=\"http" not in page and "href=" not in page  # self-contained


def test_report_without_matplotlib(analysis_run_folder, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    assert main(["report", "--run", str(analysis_run_folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plots"] == {} and "pip install 'twogpu-alexnet[plots]'" in out["plots_missing"]
    page = (analysis_run_folder / "report" / "report.html").read_text()
    assert "pip install &#x27;twogpu-alexnet[plots]&#x27;" in page
    assert len(_embedded_pngs(page)) == 2  # the kernel grids still come along
    assert "<td>60.00%</td>" in page
    assert not list((analysis_run_folder / "report").glob("*.png"))


def test_report_user_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="does not exist"):
        build_report(tmp_path / "nope")
    assert main(["report", "--run", str(tmp_path)]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


def test_report_on_a_run_without_checkpoint_or_grids(tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        json.dumps({"kind": "step", "epoch": 1, "step": 1, "loss": 2.3, "lr": 0.01}) + "\n"
    )
    result = build_report(run, tmp_path / "elsewhere")
    assert result["epochs"] == 0 and result["towers"] is None and result["best_val_top1_error"] is None
    page = (tmp_path / "elsewhere" / "report.html").read_text()
    assert "no checkpoints/last.pt" in page


# ---------------------------------------------------------------------------------------------
# the kernels command


@pytest.mark.parametrize("layout", ["checkpoint", "grouped"])
def test_kernels_command_json(tmp_path, capsys, layout):
    from twogpu_alexnet import to_grouped_state

    state = planted_state(colour_tower=0)
    path = tmp_path / "weights.pt"
    if layout == "checkpoint":
        torch.save({"model": state, "preset": "cifar", "num_classes": 10, "epoch": 5}, path)
    else:
        torch.save(to_grouped_state(state), path)
    out = tmp_path / "analysis"
    assert main(["kernels", "--checkpoint", str(path), "--out", str(out), "--json", "--permutations", "2000"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout holds exactly one JSON object
    assert result["color_specific_tower"] == 0 and result["p_value"] < 0.01
    assert result["preset"] == "cifar" and result["control"] is False
    assert [t["tower"] for t in result["towers"]] == [0, 1]
    assert {"mean", "median", "q1", "q3", "frac_above", "n"} <= set(result["towers"][0])
    assert result["towers"][0]["mean"] > 0.99 and result["towers"][1]["mean"] < 1e-9
    assert (out / "kernels.png").is_file()
    assert json.loads((out / "kernels.json").read_text())["p_value"] == result["p_value"]
    try:  # the per-tower score plot, drawn whenever matplotlib is there
        import matplotlib  # noqa: F401
    except ImportError:
        assert result["files"]["scores"] is None
    else:
        assert result["files"]["scores"] == str(out / "scores.png") and (out / "scores.png").stat().st_size > 0


def test_kernels_command_control_and_preset_mismatch(tmp_path, capsys):
    from twogpu_alexnet import build_model

    torch.manual_seed(0)  # random halves differ significantly for ~5% of seeds; seed 0 gives p = 0.9
    state = build_model("cifar-onetower", mode="two-tower", devices=("cpu", "cpu")).state_dict()
    path = tmp_path / "onetower.pt"
    torch.save(state, path)
    assert main(["kernels", "--checkpoint", str(path), "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "cifar-onetower" in printed and "arbitrary split" in printed
    assert "median" in printed and "no split; weights W" in printed  # the table and the verdict
    assert main(["kernels", "--checkpoint", str(path), "--preset", "paper", "--out", str(tmp_path / "b")]) == 2
    assert "expects (96, 3, 11, 11)" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["kernels", "--checkpoint", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "c")]) == 2


@pytest.mark.slow
def test_report_builds_from_a_real_short_training_run(tmp_path, capsys):
    """The trainer's own run folder (1 epoch, 2 steps of synthetic data) -> the report page."""
    run = tmp_path / "short"
    code = main(
        [
            "train",
            "--set",
            "train.epochs=1",
            "--set",
            "train.max_steps_per_epoch=2",
            "--set",
            "train.batch_size=16",
            "--set",
            "data.synthetic_images=32",
            "--set",
            "data.synthetic_val_images=16",
            "--set",
            "train.log_every=1",
            "--set",
            'model.mode="grouped"',
            "--set",
            "analysis.kernel_grid_epochs=[1]",
            "--out",
            str(run),
            "--json",
        ]
    )
    capsys.readouterr()
    assert code in (0, 3)  # 3: a non-finite loss stops the run, its folder is still complete up to there
    assert main(["report", "--run", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epochs"] == 1 and result["steps"] >= 1
    assert result["kernel_grids"] == [str(run / "kernels" / "epoch_001.png")]
    assert result["towers"] is not None and len(result["towers"]["towers"]) == 2
    steps, epochs, _ = run_metrics(run)
    towers = result["towers"]  # the trainer kept conv1 at step 0: the headline is the learned part W - W0
    assert towers["measured"] == "learned"
    assert epochs[0]["color_score_tower0"] == pytest.approx(towers["weights"]["towers"][0]["mean"])
    assert epochs[0]["learned_color_score_tower0"] == pytest.approx(towers["towers"][0]["mean"])
    assert epochs[0]["learned_color_score_tower1"] == pytest.approx(towers["learned"]["towers"][1]["mean"])
    # the one verdict: the trainer's epoch line and the report say the same words
    assert epochs[0]["color_verdict"] == towers["verdict"] and epochs[0]["color_split"] == towers["split"]
    page = (run / "report" / "report.html").read_text()
    assert "Do the towers specialize?" in page and len(_embedded_pngs(page)) >= 1
    assert html.escape(towers["verdict"]) in page


def test_kernels_command_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    path = tmp_path / "w.pt"
    torch.save({"model": planted_state(), "preset": "cifar", "num_classes": 10}, path)
    assert main(["kernels", "--checkpoint", str(path), "--out", str(tmp_path / "k"), "--permutations", "500"]) == 0
    printed = capsys.readouterr().out
    assert "tower 1 is the colour-specific one" in printed and "pip install" in printed
    assert (tmp_path / "k" / "kernels.png").is_file() and not (tmp_path / "k" / "scores.png").exists()


def test_unwritable_output_folders_are_one_line_errors(analysis_run_folder, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ckpt = analysis_run_folder / "checkpoints" / "last.pt"
    assert main(["kernels", "--checkpoint", str(ckpt), "--out", str(blocker / "k")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write to folder") and "--out" in err and "Traceback" not in err
    assert main(["report", "--run", str(analysis_run_folder), "--out", str(blocker / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write to folder") and "--out" in err


@pytest.mark.parametrize("line", [
    '{"kind": "epoch", "epoch": "2", "train_loss": 1.0}',  # crashed sorting str against int epochs
    '{"kind": "epoch", "epoch": [1]}',  # crashed: unhashable epoch
    '{"kind": "epoch", "epoch": null}',
    '{"kind": "epoch", "epoch": 1e400}',
    '{"kind": "epoch", "epoch": 2, "train_loss": "low", "time_s": "x"}',
    '{"kind": "step", "epoch": 1, "step": "x", "loss": "y"}',
    '[1, 2]',
])
def test_report_skips_a_malformed_metrics_line_with_a_note(line, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    good = {"kind": "epoch", "epoch": 1, "train_loss": 2.0, "val_top1_error": 0.5, "val_top5_error": 0.2}
    (run / "metrics.jsonl").write_text(json.dumps(good) + "\n" + line + "\n")
    assert main(["report", "--run", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable line(s) of metrics.jsonl" in printed
    steps, epochs, bad = run_metrics(run)
    assert bad == 1 and steps == [] and [e["epoch"] for e in epochs] == [1]
    assert "1 unreadable line(s) in metrics.jsonl were skipped" in (run / "report" / "report.html").read_text()


def test_report_shows_every_config_a_resumed_run_used(tmp_path, capsys):
    run = tmp_path / "resumed"
    common = ["--set", "train.max_steps_per_epoch=1", "--set", "train.batch_size=8", "--set",
              "data.synthetic_images=16", "--set", "data.synthetic_val_images=8", "--set", 'model.mode="grouped"',
              "--set", "analysis.kernel_grid_epochs=[]", "--json"]
    assert main(["train", "--out", str(run), "--set", "train.epochs=1", "--set", "train.lr=0.0001", *common]) in (0, 3)
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--set", "train.lr=0.0002",
                 "--json"]) in (0, 3)
    capsys.readouterr()
    result = build_report(run)
    assert "epoch_001.pt" in result["configs"][0]["checkpoints"] and result["configs"][0]["step"] == 1
    assert len(result["configs"]) == 2 and result["configs"][1]["step"] == 2
    page = (run / "report" / "report.html").read_text()
    assert "lr = 0.0001" in page and "lr = 0.0002" in page and "2 different configurations" in page
