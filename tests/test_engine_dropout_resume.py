"""A checkpoint written before the dropout streams (torch generator states under ``dropout_rng``) resumes,
with one note that the masks start from the seed."""
import torch

from twogpu_alexnet.cli import main
from twogpu_alexnet.engine.config import load_config
from twogpu_alexnet.engine.train import train

TINY = ["data.synthetic_images=16", "data.synthetic_val_images=8", "train.batch_size=8", "train.lr=0.001",
        "train.max_steps_per_epoch=1", "analysis.kernel_grid_epochs=[]"]


def test_a_checkpoint_with_generator_states_resumes_with_a_note(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(load_config(None, TINY + ["train.epochs=1"]), run).status == "done"
    path = run / "checkpoints" / "last.pt"
    payload = torch.load(path, weights_only=True)
    assert [s.dtype for s in payload["dropout_rng"][0]] == [torch.int64, torch.int64]  # this version's states
    payload["dropout_rng"] = [[torch.Generator().get_state(), torch.Generator().get_state()]]  # as written before
    torch.save(payload, path)
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 0
    err = capsys.readouterr().err
    assert "dropout states come from an older version or another tower count" in err, err
    assert torch.load(path, weights_only=True)["step"] == 2
