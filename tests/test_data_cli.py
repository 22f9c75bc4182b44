"""The data commands: prepare, stats and bench data print one JSON object with --json, and a user mistake
exits 2 with one sentence."""
import json

import numpy as np
import pytest

from twogpu_alexnet.cli import main


@pytest.fixture
def data_split(tmp_path, data_write_images):
    rng = np.random.default_rng(0)
    files = {f"{c}/im{i}.jpg": rng.integers(0, 255, (48, 64, 3)) for c in ("cat", "dog") for i in range(3)}
    files["dog/broken.jpg"] = b"\xff\xd8\xff not really"
    return data_write_images(tmp_path / "train", files)


def _json(capsys):
    out = capsys.readouterr().out
    assert out.count("\n") == 1                      # one JSON object and nothing else on stdout
    return json.loads(out)


def test_prepare_and_stats_json(tmp_path, data_split, capsys):
    assert main(["prepare", "--data", str(data_split), "--out", str(tmp_path / "store"), "--size", "32",
                 "--workers", "1", "--json"]) == 0
    result = _json(capsys)
    assert result["written"] == 6
    assert [s["path"].endswith("dog/broken.jpg") for s in result["skipped"]] == [True]
    assert result["skipped"][0]["reason"]
    assert main(["stats", "--data", str(tmp_path / "store"), "--json"]) == 0
    stats = _json(capsys)
    assert stats["images"] == 6 and stats["size"] == 32 and len(stats["eigenvalues"]) == 3
    assert stats["eigenvalues"] == sorted(stats["eigenvalues"], reverse=True)
    assert main(["stats", "--data", str(data_split), "--size", "32", "--workers", "1", "--json"]) == 0
    folder = _json(capsys)
    assert folder["images"] == 6 and folder["path"].endswith(".twogpu-alexnet-stats-32.pt")


def test_bench_data_json(data_split, capsys):
    assert main(["bench", "data", "--data", str(data_split), "--images", "4", "--seconds", "0.05",
                 "--input-size", "32", "--json"]) == 0
    result = _json(capsys)
    for key in ("reference_img_s", "raw_img_s", "prepared_img_s"):
        assert result[key] > 0
    assert result["images"] == 3        # 4 evenly spaced files, one of which does not decode


def test_user_mistakes_exit_2_with_one_sentence(tmp_path, data_split, capsys):
    missing = ["--data", str(tmp_path / "missing")]
    for argv in (["prepare", *missing, "--out", str(tmp_path / "s")], ["stats", *missing]):
        assert main(argv) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()                      # nothing but the sentence (no progress bar)
        assert captured.out == "" and len(lines) == 1 and lines[0].startswith("error: ")
        assert str(tmp_path / "missing") in lines[0] and lines[0].endswith(".")
    assert (
        main(["prepare", "--data", str(data_split), "--out", str(tmp_path / "s"), "--size", "32", "--workers", "1"])
        == 0
    )
    capsys.readouterr()
    assert main(["prepare", "--data", str(data_split), "--out", str(tmp_path / "s"), "--size", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "different settings" in err and str(tmp_path / "s") in err
    assert main(["stats", "--data", str(tmp_path / "nothing")]) == 2


def test_bench_data_rows_and_bad_numbers(data_split, capsys):
    assert main(["bench", "data", "--data", str(data_split), "--images", "4", "--seconds", "0.05",
                 "--input-size", "32", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "(d) this pipeline, raw store" in out
    for source in ("JPEG store", "raw store", "raw files"):              # each source through the loader
        assert f"{source}, 1 workers, batches of 3 finished on the CPU" in out, out
    assert "shared memory per image: 3,072 bytes" in out                 # 3 x 32 x 32 uint8
    for flag, value in (("--seconds", "0"), ("--seconds", "-1"), ("--images", "0"), ("--workers", "-1"),
                        ("--batch", "0"), ("--device", "banana"), ("--device", "cpu")):
        assert main(["bench", "data", "--data", str(data_split), flag, value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and flag in err[0]
