"""DistributedDataParallel around the two-tower model, on the CPU with gloo.

Two processes, each stepping on its half of a batch, must end with the same weights on both ranks,
equal to one process stepping on the whole batch (DDP averages gradients; the single process uses
the mean loss over the union).
"""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from twogpu_alexnet.engine import distributed
from twogpu_alexnet.engine.distributed import DistContext
from twogpu_alexnet.engine.optim import make_optimizer
from twogpu_alexnet.engine.step import train_step
from twogpu_alexnet.errors import UserError
from twogpu_alexnet.model import build_model

CPU = torch.device("cpu")
STEPS, BATCH = 2, 8  # per rank; the union batch is 16


def _batches():
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(2 * BATCH, 3, 32, 32, generator=g), torch.randint(0, 10, (2 * BATCH,), generator=g))
            for _ in range(STEPS)]


def _model():
    torch.manual_seed(0)
    # eval(): no dropout, so one process and two see the same function; gradients still flow
    return build_model("cifar", mode="two-tower", devices=("cpu", "cpu"), num_classes=10).eval()


def _worker(rank: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = DistContext(rank=rank, world_size=2, local_rank=rank, local_world_size=2)
    distributed.init(ctx, use_cuda=False)
    try:
        model = _model()
        model.seed_dropout(0, rank)  # each rank's own dropout keys: DDP must not overwrite them with rank 0's
        net = distributed.wrap(model, ctx)
        opt = make_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        for x, y in _batches():
            part = slice(rank * BATCH, (rank + 1) * BATCH)  # this rank's half of the union batch
            train_step(net, opt, scaler, x[part], y[part], device=CPU)
        total = distributed.sum_across([float(rank + 1)], ctx)
        torch.save({"state": model.state_dict(), "sum": total, "dropout": model.dropout_rng_state()},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        distributed.shutdown(ctx)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_on_the_union_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["sum"] == ranks[1]["sum"] == [3.0]  # metrics reduce across ranks
    assert not torch.equal(ranks[0]["dropout"][0], ranks[1]["dropout"][0])  # other ranks, other masks
    for k, v in ranks[0]["state"].items():
        assert torch.equal(v, ranks[1]["state"][k]), k  # identical on both ranks, bit for bit

    torch.set_num_threads(1)
    model = _model()
    opt = make_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for x, y in _batches():
        train_step(model, opt, scaler, x, y, device=CPU)
    start = _model().state_dict()
    for k, v in model.state_dict().items():
        assert not torch.equal(v, start[k]) or k.endswith("bias"), k  # the steps did move the weights
        torch.testing.assert_close(ranks[0]["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)


def _train_worker(rank: int, port: int, run_dir: str, out: str):
    from twogpu_alexnet.engine.config import load_config
    from twogpu_alexnet.engine.train import train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    config = load_config(None, ["data.synthetic_images=32", "data.synthetic_val_images=10", "train.batch_size=8",
                                "train.epochs=1", "train.max_steps_per_epoch=2", "train.log_every=1", "train.lr=0.001"])
    result = train(config, run_dir, ctx=DistContext(rank=rank, world_size=2, local_rank=rank, local_world_size=2))
    assert (result.status, result.placement.devices) == ("done", ("cpu",))
    torch.save({"val_top1_error": result.epochs[0]["val_top1_error"]}, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
def test_full_training_run_on_two_gloo_processes(tmp_path):
    run = tmp_path / "run"
    mp.spawn(_train_worker, args=(_free_port(), str(run), str(tmp_path)), nprocs=2, join=True)
    from twogpu_alexnet.engine.metrics import read_metrics

    records = read_metrics(run / "metrics.jsonl")[0]  # only rank 0 writes: one line per step, one epoch line
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1]
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2 and saved["step"] == 2
    # validation counts are summed over both ranks' shards (5 + 5 of 10 images), so both report the same error
    errors = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["val_top1_error"] for r in (0, 1)]
    assert errors[0] == errors[1] == records[-1]["val_top1_error"]


def test_batch_must_divide_across_ranks():
    assert distributed.per_rank_batch(128, DistContext(world_size=4, local_world_size=4)) == 32
    with pytest.raises(UserError, match="train.batch_size 128 does not divide across 3 processes"):
        distributed.per_rank_batch(128, DistContext(world_size=3, local_world_size=3))


def test_context_from_torchrun_variables():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert distributed.context_from_env(env) == DistContext(3, 4, 1, 2)
    assert distributed.context_from_env({}) == DistContext()
