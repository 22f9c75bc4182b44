"""The two-tower executor takes one input per tower (a loader's TowerInputs) as well as one tensor: the same
logits, features and gradients; the grouped executor refuses per-tower input."""
import pytest
import torch

from twogpu_alexnet import UserError, build_model


@pytest.fixture()
def towers():
    torch.manual_seed(0)
    model = build_model("cifar", mode="two-tower", devices=("cpu", "cpu")).double()
    model.seed_dropout(5)
    return model


def _images(n=3, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 50


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("training", [False, True])
def test_one_input_per_tower_gives_the_same_logits_and_gradients(towers, training):
    towers.train(training)
    x = _images().requires_grad_()
    a, b = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    labels = torch.tensor([1, 4, 9])
    states = towers.dropout_rng_state()                 # training: both passes draw the same dropout masks
    one = towers(x)
    torch.nn.functional.cross_entropy(one, labels).backward()
    expected = _grads(towers)
    towers.zero_grad()
    towers.set_dropout_rng_state(states)
    pair = towers((a, b))
    torch.nn.functional.cross_entropy(pair, labels).backward()
    assert one.std() > 0 and torch.equal(one, pair)
    got = _grads(towers)
    assert all(torch.equal(got[n], expected[n]) for n in expected) and expected["fc8.weight"].abs().max() > 0
    torch.testing.assert_close(a.grad + b.grad, x.grad, rtol=1e-12, atol=0)  # each tower's share of the input's
    assert a.grad.abs().max() > 0 and b.grad.abs().max() > 0


def test_features_of_one_input_per_tower(towers):
    towers.eval()
    x = _images(seed=2)
    assert torch.equal(towers.features([x, x.clone()]), towers.features(x))


def test_the_towers_read_their_own_input(towers):
    """Per-tower input is not the same as the first tensor given twice: tower 1 reads the second."""
    towers.eval()
    x, y = _images(seed=3), _images(seed=4)
    assert not torch.equal(towers((x, y)), towers(x))


@pytest.mark.parametrize("shape", [(3, 3, 28, 28), (3, 1, 32, 32), (3, 32, 32)])
def test_a_wrong_shaped_tower_input_names_the_expected_shape(towers, shape):
    with pytest.raises(ValueError, match=r"N x 3 x 32 x 32"):
        towers((_images(), torch.zeros(shape, dtype=torch.float64)))


def test_tower_inputs_must_be_one_per_tower_of_one_shape(towers):
    x = _images()
    with pytest.raises(UserError, match="differ in shape"):
        towers((x, x[:2]))
    with pytest.raises(UserError, match="one tensor or one per tower"):
        towers((x, x, x))
    with pytest.raises(UserError, match="one tensor or one per tower"):
        towers((x, None))


def test_the_grouped_executor_takes_one_tensor():
    grouped = build_model("cifar", mode="grouped", device="cpu").double()
    x = _images()
    with pytest.raises(UserError, match="grouped executor takes one tensor"):
        grouped((x, x))
    with pytest.raises(UserError, match="grouped executor takes one tensor"):
        grouped.features([x, x])


@pytest.mark.gpu
@pytest.mark.parametrize("devices", [("cuda:0", "cpu"), ("cuda:0", "cuda:0")])
def test_one_input_per_tower_on_a_gpu(devices):
    torch.manual_seed(0)
    model = build_model("cifar", mode="two-tower", devices=devices).double().eval()
    x = _images()
    inputs = tuple(x.to(d) for d in devices)
    torch.testing.assert_close(model(inputs), model(x.to(devices[0])), rtol=1e-12, atol=1e-12)
