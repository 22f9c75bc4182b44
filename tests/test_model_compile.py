"""torch.compile captures the whole training forward in one graph, dropout included, in both executors.

The towers' dropout masks come from integer tensors the model carries (a key and a counter per tower),
so nothing in the forward pass leaves the graph. The compiled step is checked against eager with
AOTAutograd (the part of the compiler that functionalizes the counter's update and builds the
backward) on the CPU, and with Inductor's generated kernels on a GPU.
"""
import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

from twogpu_alexnet import build_model

EXECUTORS = {"grouped": {"mode": "grouped", "device": "cpu"},
             "two-tower": {"mode": "two-tower", "devices": ("cpu", "cpu")}}


def _loss(model, x, labels):
    return F.cross_entropy(model(x), labels)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_paper_training_forward_and_loss_is_one_graph(executor):
    torch.manual_seed(0)
    model = build_model("paper", **EXECUTORS[executor]).train()
    x, labels = torch.randn(2, 3, 224, 224), torch.tensor([3, 7])
    torch._dynamo.reset()
    explained = torch._dynamo.explain(_loss)(model, x, labels)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    # the graph draws the masks: the counters advanced, as in eager
    assert [s[:, 1].tolist() for s in model.dropout_rng_state()] == [[1, 1], [1, 1]]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_compiled_training_steps_match_eager_and_advance_the_same_masks(executor):
    torch.manual_seed(0)
    eager = build_model("cifar", **EXECUTORS[executor]).train().double()  # float64: differences are the compiler's
    torch.manual_seed(0)
    model = build_model("cifar", **EXECUTORS[executor]).train().double()
    for m in (eager, model):
        m.seed_dropout(5)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    gen = torch.Generator().manual_seed(1)
    for step in range(2):  # the second step reuses the graph: the counter is a tensor, not a constant
        x = torch.randn(8, 3, 32, 32, generator=gen, dtype=torch.float64) * 50
        labels = torch.randint(0, 10, (8,), generator=gen)
        want = _loss(eager, x, labels)
        got = _loss(compiled, x, labels)
        want.backward()
        got.backward()
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
        grads = dict(model.named_parameters())
        for name, p in eager.named_parameters():
            assert p.grad.abs().max() > 0, name
            torch.testing.assert_close(grads[name].grad, p.grad, rtol=0, atol=1e-10 * p.grad.abs().max().item(),
                                       msg=name)
        for m in (eager, model):
            m.zero_grad()
        assert all(torch.equal(a, b) for a, b in zip(eager.dropout_rng_state(), model.dropout_rng_state(), strict=True))
        assert model.dropout_rng_state()[0][0, 1] == step + 1
    assert counter.frame_count == 1


@pytest.mark.gpu
@pytest.mark.parametrize("executor", ["grouped", "two-tower"])
def test_gpu_inductor_compiled_step_matches_eager(executor):
    kwargs = {"mode": "grouped", "device": "cuda:0"} if executor == "grouped" else \
        {"mode": "two-tower", "devices": ("cuda:0", "cuda:0")}
    torch.manual_seed(0)
    eager = build_model("cifar", **kwargs).train()
    torch.manual_seed(0)
    model = build_model("cifar", **kwargs).train()
    for m in (eager, model):
        m.seed_dropout(5)
    torch._dynamo.reset()
    compiled = torch.compile(model)
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(32, 3, 32, 32, generator=gen) * 50).cuda()
    labels = torch.randint(0, 10, (32,), generator=gen).cuda()
    for _ in range(2):
        want, got = _loss(eager, x, labels), _loss(compiled, x, labels)
        want.backward()
        got.backward()
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(model.fc8.weight.grad, eager.fc8.weight.grad, rtol=1e-2,
                                   atol=1e-3 * eager.fc8.weight.grad.abs().max().item())
    assert all(torch.equal(a, b) for a, b in zip(eager.dropout_rng_state(), model.dropout_rng_state(), strict=True))
