"""evaluate, neighbors, predict and export on what prepare and train write: stores read as training reads
them, fixed seeded subsets, checkpoints that carry their class names (a mismatch is one sentence), the
weights alone for sharing, and a resume that says where it resumed and shows every epoch."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from twogpu_alexnet.cli import main
from twogpu_alexnet.data.split import inference_split, subset_indices, take_subset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CLASSES = ["n01", "n02", "n03"]


def _folder(root, classes=CLASSES, per_class=6, seed=0):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)
            img[..., c % 3] = 200
            Image.fromarray(img).resize((40, 36), Image.BILINEAR).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Class folders, their stores (prepare) and a 1-epoch cifar run trained on the stores."""
    base = tmp_path_factory.mktemp("infer")
    for split, n in (("train", 8), ("val", 5)):
        _folder(base / "photos" / split, per_class=n, seed=len(split))
        assert main(["prepare", "--data", str(base / "photos" / split), "--out", str(base / "store" / split),
                     "--size", "32", "--workers", "0", "--json"]) == 0
    sets = ["model.preset='cifar'", "data.source='store'", f"data.root='{base / 'store'}'", "train.batch_size=8",
            "train.epochs=1", "train.lr=0.001", "train.log_every=1", "analysis.kernel_grid_epochs=[]",
            "data.workers=0", "train.val_images=9"]
    assert main(["train", "--out", str(base / "run"), "--json"] + [a for s in sets for a in ("--set", s)]) == 0
    return base


def test_checkpoints_carry_their_class_names(run):
    payload = torch.load(run / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert payload["class_names"] == CLASSES


def test_evaluate_reads_a_store_as_training_does_with_a_header_and_counts(run, capsys):
    ckpt = run / "run" / "checkpoints" / "last.pt"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(run / "store" / "val"), "--workers", "0",
                 "--batch-size", "4", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["images"] == 15 and out["device"] == "cpu" and out["presets"] == ["cifar"]
    counts = [line.split(",")[0] for line in captured.err.splitlines()[1:]]
    assert counts == ["evaluate: 4/15 images", "evaluate: 8/15 images", "evaluate: 12/15 images",
                      "evaluate: 15/15 images"]
    assert captured.err.startswith(f"evaluating {ckpt} (cifar) on {run / 'store' / 'val'}: 15 images, centre view, "
                                   "device cpu\n")
    assert "evaluate: 15/15 images, " in captured.err and "ETA 0:00:00" in captured.err
    # the same images as class folders: the same answer
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(run / "photos" / "val"), "--workers", "0",
                 "--json"]) == 0
    folders = json.loads(capsys.readouterr().out)
    assert folders["images"] == 15
    assert abs(folders["top1_error"] - out["top1_error"]) <= 2 / 15       # JPEG re-encoding in the store


def test_images_is_the_same_seeded_subset_as_train_val_images(run, capsys):
    ckpt = run / "run" / "checkpoints" / "last.pt"
    split = inference_split(run / "store" / "val", 32)
    sub = take_subset(split, 9, seed=0)
    assert len(sub.dataset) == 9 and sub.dataset.source.indices == subset_indices(15, 9, 0)
    store = split.dataset.source                # record sizes follow the subset (data.decode=gpu sizes buffers by them)
    assert sub.dataset.source.length.tolist() == [int(store.length[i]) for i in subset_indices(15, 9, 0)]
    assert subset_indices(15, 9, 0) == subset_indices(15, 9, 0) != subset_indices(15, 9, 1)
    assert take_subset(split, 20).dataset is split.dataset and take_subset(split, None).dataset is split.dataset
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(run / "store" / "val"), "--workers", "0",
                 "--images", "9", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["images"] == 9 and "9 of 15 images (seed 0)" in captured.err
    # the trainer validated on that subset: its last epoch's error is evaluate's on it
    epoch = [json.loads(line) for line in (run / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("kind") == "epoch"][-1]
    assert epoch["val_top1_error"] == pytest.approx(out["top1_error"])


def test_other_classes_are_refused_in_one_sentence(run, tmp_path, capsys):
    other = _folder(tmp_path / "other", classes=["n01", "n02", "n99"], per_class=2)
    ckpt = run / "run" / "checkpoints" / "last.pt"
    for argv in (["evaluate", "--checkpoint", str(ckpt), "--data", str(other)],
                 ["neighbors", "--checkpoint", str(ckpt), "--data", str(other), "--queries",
                  str(other / "n01" / "00.png"), "--out", str(tmp_path / "nn"), "--no-cache"],
                 ["predict", "--checkpoint", str(ckpt), str(other / "n01" / "00.png"), "--data", str(other)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == (f"error: {other} is not the data {ckpt} was trained on: 1 of its 3 class folders are "
                       "unknown to the network (first: 'n99'); pass the split of the classes it was trained on "
                       "(first of them: 'n01') or a checkpoint trained on these classes\n"), argv


def test_predict_names_the_top_classes(run, capsys):
    ckpt = run / "run" / "checkpoints" / "last.pt"
    photo = run / "photos" / "val" / "n02" / "01.png"
    assert main(["predict", "--checkpoint", str(ckpt), str(photo), str(run / "missing.jpg"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (pred,) = out["predictions"]
    assert [t["class"] for t in pred["top"]] and {t["class"] for t in pred["top"]} == set(CLASSES)   # k clamped to 3
    probs = [t["probability"] for t in pred["top"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert out["skipped"][0]["path"].endswith("missing.jpg") and out["class_names_from"] == "checkpoint"
    # the same numbers as evaluation's pipeline
    from twogpu_alexnet.engine.inference import eval_split, load_network

    model, ck = load_network(ckpt)
    split = eval_split(run / "photos" / "val", 32, stats=ck.stats)
    i = [str(f) for f in split.dataset.source.files].index("n02/01.png")
    with torch.no_grad():
        want = torch.softmax(model(split.pipeline.finish(split.dataset[i][0][None])), 1)[0]
    assert probs[0] == pytest.approx(float(want.max()), rel=1e-5)
    assert main(["predict", "--checkpoint", str(ckpt), str(photo), "--top", "2"]) == 0
    assert "n0" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["two-tower", "grouped"])
def test_export_writes_the_weights_alone_and_every_reader_takes_it(run, tmp_path, capsys, layout):
    ckpt = run / "run" / "checkpoints" / "last.pt"
    out = tmp_path / "w.pt"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--layout", layout, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == "cifar" and info["class_names"] and info["data_stats"]
    (tmp_path / "plain").write_text("x")
    assert out.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777    # not mkstemp's 0600
    payload = torch.load(out, weights_only=True)
    assert set(payload) == {"model", "preset", "num_classes", "layout", "class_names", "data_stats"}
    assert ("towers.0.conv1.weight" in payload["model"]) == (layout == "two-tower")
    assert payload["class_names"] == CLASSES and out.stat().st_size < ckpt.stat().st_size   # no optimizer state
    results = []
    for c in (ckpt, out):
        assert main(["evaluate", "--checkpoint", str(c), "--data", str(run / "store" / "val"), "--workers", "0",
                     "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out)["top1_error"])
    assert results[0] == results[1]
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_names_its_checkpoint_and_the_table_shows_every_epoch(run, tmp_path, capsys):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(run / "run", folder)
    assert main(["train", "--resume", str(folder), "--set", "train.epochs=2"]) == 0
    captured = capsys.readouterr()
    assert f"run folder: {folder} (resuming from {folder / 'checkpoints' / 'last.pt'}: epoch 1 done, batch 0, " \
           "step " in captured.err
    table = captured.out.split("conv1 colour")[0]
    rows = [line for line in table.splitlines() if line.strip().startswith(("│ ", "┃ ")) and "%" in line]
    assert [row.split("│")[1].strip() for row in rows] == ["1", "2"]


def test_neighbors_reads_a_store_and_keeps_its_cache_under_the_run(run, tmp_path, monkeypatch, capsys):
    ckpt = run / "run" / "checkpoints" / "last.pt"
    query = run / "photos" / "train" / "n02" / "03.png"
    argv = ["neighbors", "--checkpoint", str(ckpt), "--data", str(run / "store" / "train"), "--queries", str(query),
            "--k", "2", "--out", str(tmp_path / "nn"), "--workers", "0", "--json"]
    monkeypatch.delenv("TWOGPU_ALEXNET_CACHE", raising=False)
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    cache = out["cache"]["path"]
    assert cache.startswith(str(run / "run" / "cache" / "neighbors" / "fc7-")) and not out["cached"]
    assert out["cache"]["bytes"] == (run / "run" / "cache" / "neighbors" / cache.split("/")[-1]).stat().st_size
    assert out["images"] == 24 and "fc7 features: 24/24 images" in captured.err and f"feature cache {cache} (new)" \
        in captured.err
    nearest = out["queries"][0]["neighbors"][0]
    assert nearest["path"] == f"{run / 'store' / 'train'}#11" and nearest["class"] == "n02"   # its own stored copy
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["cached"]
    monkeypatch.setenv("TWOGPU_ALEXNET_CACHE", str(tmp_path / "cache"))
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["cache"]["path"].startswith(str(tmp_path / "cache" / "neighbors"))
