"""Evaluation: 1 and 10 views, ensembles, either layout, grayscale photos, and the CLI's answers."""
import json

import pytest
import torch
from torchvision.io import write_jpeg

from twogpu_alexnet import UserError
from twogpu_alexnet.cli import main
from twogpu_alexnet.engine.evaluate import ensemble_probabilities, evaluate
from twogpu_alexnet.engine.inference import eval_split
from twogpu_alexnet.model import build_model
from twogpu_alexnet.model.load import to_layout

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision's image-io notice

CLASSES = 6
LABELS = [0, 0, 1, 1, 1, 2, 3, 4, 5, 5, 5, 5]  # 12 photos; class 5 has 4, class 0 has 2


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A split folder of 12 JPEGs in 6 class folders, sizes vary, two of them grayscale."""
    root = tmp_path_factory.mktemp("eval") / "val"
    g = torch.Generator().manual_seed(0)
    for i, label in enumerate(LABELS):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        size = 32 + 8 * (i % 3)
        channels = 1 if i in (3, 8) else 3
        img = torch.randint(0, 256, (channels, size, size + 4), generator=g, dtype=torch.uint8)
        write_jpeg(img, str(folder / f"img{i}.jpg"), quality=90)
    return root


def _bias_only(path, bias, layout="two-tower"):
    """A cifar net whose fc8 ignores its input: every image gets softmax(bias), so the answer is known."""
    torch.manual_seed(1)
    model = build_model("cifar", mode="grouped", device="cpu", num_classes=CLASSES)
    state = model.state_dict()
    state["fc8.weight"] = torch.zeros_like(state["fc8.weight"])
    state["fc8.bias"] = torch.tensor(bias, dtype=torch.float32)
    torch.save(to_layout(state, layout), path)  # a plain state dict, no preset recorded
    return path


@pytest.mark.parametrize("ten_crop", [False, True])
def test_known_answer_with_one_and_ten_views(photos, tmp_path, ten_crop):
    ckpt = _bias_only(tmp_path / "m.pt", [0.0, 0.1, 0.2, 0.3, 3.0, 0.4])  # top-1: class 4; top-5 misses class 0
    result = evaluate(ckpt, photos, ten_crop=ten_crop, workers=0)
    assert result["images"] == 12 and result["views"] == (10 if ten_crop else 1) and result["presets"] == ["cifar"]
    assert result["top1_error"] == pytest.approx(11 / 12)  # one photo of class 4
    assert result["top5_error"] == pytest.approx(2 / 12)  # the two photos of class 0


def test_ensemble_averages_softmax_either_layout(photos, tmp_path):
    # model a: class 5 at 2.0; model b: class 1 at 5.0 -> mean softmax picks class 1 (checked below)
    a = _bias_only(tmp_path / "a.pt", [0, 0, 0, 0, 0, 2.0], layout="grouped")
    b = _bias_only(tmp_path / "b.pt", [0, 5.0, 0, 0, 0, 0], layout="two-tower")
    pa = torch.softmax(torch.tensor([0, 0, 0, 0, 0, 2.0]), 0)
    pb = torch.softmax(torch.tensor([0, 5.0, 0, 0, 0, 0]), 0)
    assert int(((pa + pb) / 2).argmax()) == 1 and int(pa.argmax()) == 5
    alone = evaluate(a, photos, workers=0)
    both = evaluate([a, b], photos, workers=0)
    assert alone["top1_error"] == pytest.approx(8 / 12)  # class 5: 4 of 12
    assert both["top1_error"] == pytest.approx(9 / 12)  # class 1: 3 of 12
    assert both["checkpoints"] == [str(a), str(b)]


def test_ten_views_average_the_softmax_of_each_view(photos):
    torch.manual_seed(3)
    model = build_model("cifar", mode="grouped", device="cpu", num_classes=CLASSES).eval()
    split = eval_split(photos, 32, views=10)
    x = torch.stack([split.dataset[i][0] for i in range(3)])  # 3 photos x 10 uint8 views
    assert x.shape == (3, 10, 3, 32, 32)
    got = ensemble_probabilities([model], x, [split.pipeline.finish])
    with torch.no_grad():
        want = torch.stack([torch.softmax(model(split.pipeline.finish(x[i])), 1).mean(0) for i in range(3)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    first_view = split.pipeline.finish(x[:1])[0, :1]
    assert not torch.allclose(want[0], torch.softmax(model(first_view), 1)[0])  # views do differ


def test_cli_json_and_bad_inputs(photos, tmp_path, capsys):
    ckpt = _bias_only(tmp_path / "m.pt", [0.0, 0.1, 0.2, 0.3, 3.0, 0.4])
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(photos), "--workers", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["images"], out["top1_error"], out["top5_error"]) == (12, pytest.approx(11 / 12), pytest.approx(2 / 12))
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    cases = [
        (["--checkpoint", str(tmp_path / "notes.pt"), "--data", str(photos)], "notes.pt is not a readable checkpoint"),
        (["--checkpoint", str(tmp_path / "none.pt"), "--data", str(photos)], "none.pt does not exist"),
        (["--checkpoint", str(ckpt), "--data", str(tmp_path / "nowhere")], "is not a folder"),
        (["--checkpoint", str(ckpt), "--data", str(photos), "--preset", "paper"], "do not fit preset 'paper'"),
        (["--checkpoint", str(ckpt), "--data", str(photos), "--preset", "vgg"], "unknown preset 'vgg'"),
        (["--checkpoint", str(ckpt), "--data", str(photos), "--device", "bogus"], "--device 'bogus' is not a device"),
        (["--checkpoint", str(ckpt), "--data", str(photos), "--device", "cuda:7"], "--device cuda:7"),
    ]
    for args, words in cases:
        assert main(["evaluate", "--workers", "0"] + args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and "Traceback" not in err, err


def test_training_checkpoint_brings_its_training_mean(photos, tmp_path):
    from twogpu_alexnet.engine.config import load_config
    from twogpu_alexnet.engine.train import train

    config = load_config(None, ["model.num_classes=6", "data.synthetic_images=16", "data.synthetic_val_images=12",
                                "train.batch_size=8", "train.epochs=1", "train.lr=0.001"])
    train(config, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    payload = torch.load(ckpt, weights_only=True)
    assert "data_stats" in payload and len(payload["class_names"]) == 6
    # trained on synthetic classes: the photo folders are other classes, refused in one sentence
    with pytest.raises(UserError, match=f"^{photos} is not the data {ckpt} was trained on: 6 of its 6 class folders "
                       "are unknown to the network \\(first: 'class0'\\)"):
        evaluate([ckpt], photos, workers=0)
    payload["class_names"] = [f"class{i}" for i in range(6)]      # as if trained on these folders
    torch.save(payload, ckpt)

    result = evaluate([ckpt, _bias_only(tmp_path / "plain.pt", [0.0] * 6)], photos, workers=0)
    assert result["images"] == 12 and result["presets"] == ["cifar", "cifar"]
    assert result["notes"][0] == f"{tmp_path / 'plain.pt'} carries no training mean; using the mean of {photos} itself"
    assert result["notes"][1:] == []           # the first network's training mean is the split's: no folder mean
    plain = evaluate([_bias_only(tmp_path / "plain.pt", [0.0] * 6)], photos, workers=0)
    cached = f"the mean of {photos} is cached in {photos.resolve() / '.twogpu-alexnet-stats-32.pt'} ("
    assert sum(note.startswith(cached) for note in plain["notes"]) == 1
    # each network saw its own mean: the trained one its training mean, the plain one the folder's
    from twogpu_alexnet.engine.inference import load_network

    model, ck = load_network(ckpt)
    mine = evaluate([ckpt], photos, workers=0)
    split = eval_split(photos, 32, stats=ck.stats)
    x = torch.stack([split.dataset[i][0] for i in range(len(split.dataset))])
    probs = ensemble_probabilities([model], x, [split.pipeline.finish])
    labels = torch.tensor(split.dataset.labels)
    assert mine["top1_error"] == pytest.approx(1 - (probs.argmax(1) == labels).float().mean().item())
