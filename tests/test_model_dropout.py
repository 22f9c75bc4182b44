"""Dropout as published (sec. 4.2), each tower's masks from its own counter-based stream, and seeded initialization.

Float64 throughout; the fc layers' outputs are compared with the formula written out here.
"""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from twogpu_alexnet import PRESETS, build_model, to_grouped_state
from twogpu_alexnet.model.ops import Dropout, dropout_keep_mask


def _models(preset="cifar", seed=0):
    """Two-tower (cpu, cpu) and grouped models of ``preset`` (a name or a spec) with the same float64 weights."""
    torch.manual_seed(seed)
    towers = build_model(preset, mode="two-tower", devices=("cpu", "cpu")).double()
    grouped = build_model(preset, mode="grouped", device="cpu").double()
    grouped.load_state_dict(to_grouped_state(towers.state_dict()))
    return towers, grouped


def _images(n=4, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 50


def _fc_outputs(model, x):
    """features(x) and the pre-activations of fc6 and fc7 (both towers, tower 0 first), recorded by hooks."""
    linears = {"fc6": [], "fc7": []}
    owners = list(model.towers) if model.mode == "two-tower" else [model]
    handles = [getattr(owner, name).register_forward_hook(lambda m, i, o, name=name: linears[name].append(o.clone()))
               for owner in owners for name in linears]
    inputs = []
    handles += [owner.fc7.register_forward_pre_hook(lambda m, a: inputs.append(a[0].clone()))
                for owner in owners]
    f = model.features(x)
    for h in handles:
        h.remove()
    return f, torch.cat(linears["fc6"], 1), torch.cat(linears["fc7"], 1), inputs[0]


def _masks(states, n, width, draws):
    """``draws`` masks per layer (keep 0.5) as the towers draw them from ``states`` (dropout_rng_state):
    [fc6's, fc7's] for the first pass, then the next pass's, ...; float64, tower 0's units first."""
    masks = []
    for step in range(draws):
        for layer in range(2):
            rows = torch.stack([s[layer] for s in states]) + torch.tensor([0, step])
            masks.append(dropout_keep_mask(rows, layer, n, width, 0.5).reshape(n, -1).double())
    return masks


M32 = 0xFFFFFFFF


def _mix32_reference(x: int) -> int:
    """lowbias32 on Python integers (no overflow possible), to check the tensor version's int64 arithmetic."""
    x ^= x >> 16
    x = x * 0x7FEB352D & M32
    x ^= x >> 15
    x = x * 0x846CA68B & M32
    return x ^ (x >> 16)


def _keep_reference(key: int, counter: int, stream: int, unit: int) -> bool:
    a = _mix32_reference((key & M32) ^ (stream * 0x9E3779B9 & M32))
    a = _mix32_reference(a ^ (key >> 32))
    a = _mix32_reference(a ^ (counter & M32))
    a = _mix32_reference(a ^ (counter >> 32))
    b = _mix32_reference((a + 0x6A09E667) & M32)
    return _mix32_reference(_mix32_reference((unit + a) & M32) ^ b) < 2**31


def _spec(form):
    """The cifar net (32x32, fast) with the dropout form ``form``."""
    return replace(PRESETS["cifar"], dropout_form=form)


@pytest.mark.parametrize("mode", ["two-tower", "grouped"])
def test_evaluation_published_is_half_the_relu_output_inverted_is_the_relu_output(mode):
    index = 0 if mode == "two-tower" else 1
    inverted = _models(_spec("inverted"))[index].eval()
    f, z6, z7, fc7_in = _fc_outputs(inverted, _images())
    assert torch.equal(f, F.relu(z7)) and torch.equal(fc7_in, F.relu(z6))
    model = _models(_spec("published"))[index].eval()
    f, z6, z7, fc7_in = _fc_outputs(model, _images())
    assert (z7 > 0).any() and (z7 < 0).any()
    assert torch.equal(f, 0.5 * F.relu(z7))  # exactly: every unit, times the keep probability
    assert torch.equal(fc7_in, 0.5 * F.relu(z6))


@pytest.mark.parametrize("preset", ["paper", "original"])
def test_paper_presets_use_the_published_form_in_both_executors(preset):
    for model in (build_model(preset, mode="two-tower", devices=("meta", "meta")),
                  build_model(preset, mode="grouped", device="meta")):
        drops = [m for m in model.modules() if isinstance(m, Dropout)]
        assert len(drops) == (4 if model.mode == "two-tower" else 2)
        assert all(m.form == "published" and m.p == 0.5 for m in drops)
        assert "published" in repr(model) and "evaluation x 0.5" in repr(model)


@pytest.mark.parametrize("mode", ["two-tower", "grouped"])
@pytest.mark.parametrize("form", ["published", "inverted"])
def test_training_multiplies_by_each_towers_mask_from_its_generator(mode, form):
    towers, grouped = _models(_spec(form))
    model = (towers if mode == "two-tower" else grouped).train()
    model.seed_dropout(7)
    x = _images()
    m6, m7 = _masks(model.dropout_rng_state(), 4, 512, 1)
    f, z6, z7, fc7_in = _fc_outputs(model, x)
    scale = 1.0 if form == "published" else 2.0  # published: kept units are not rescaled
    torch.testing.assert_close(fc7_in, F.relu(z6) * m6 * scale, rtol=0, atol=0)
    torch.testing.assert_close(f, F.relu(z7) * m7 * scale, rtol=0, atol=0)
    assert 0.4 < m6.mean() < 0.6 and not torch.equal(m6[:, :512], m6[:, 512:])  # the towers' masks differ


def test_both_executors_draw_the_same_masks_and_take_the_same_training_step():
    towers, grouped = _models(_spec("published"))
    x, labels = _images(), torch.tensor([1, 2, 3, 4])
    grads = []
    for model in (towers, grouped):
        model.train().seed_dropout(3, rank=1)
        F.cross_entropy(model(x), labels).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    t = to_grouped_state(grads[0])
    for name, g in grads[1].items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(t[name], g, rtol=0, atol=1e-12 * g.abs().max().item(), msg=name)


def test_seeds_ranks_and_states():
    model = _models()[0].train()
    x = _images()
    model.seed_dropout(5, rank=0)
    state = model.dropout_rng_state()
    assert len(state) == 2 and state[0].shape == (2, 2) and not torch.equal(state[0][:, 0], state[1][:, 0])
    first = model.features(x)
    assert [s[:, 1].tolist() for s in model.dropout_rng_state()] == [[1, 1], [1, 1]]  # one pass drawn per layer
    model.set_dropout_rng_state(state)
    assert torch.equal(model.features(x), first)  # restored state -> the same masks
    assert not torch.equal(model.features(x), first)  # the next pass draws new ones
    model.seed_dropout(5, rank=1)
    assert not torch.equal(model.features(x), first)  # another process, other masks
    with pytest.raises(ValueError, match="another tower count or an older version"):
        model.set_dropout_rng_state(state[:1])
    with pytest.raises(ValueError, match="another tower count or an older version"):
        model.set_dropout_rng_state([torch.zeros(5056, dtype=torch.uint8)] * 2)  # a torch generator's state


def test_masks_are_the_hash_computed_on_python_integers():
    key, counter = 0x5DEECE66D1234567, 2**33 + 7  # both halves of key and counter in use
    rows = torch.tensor([[key, counter]])
    mask = dropout_keep_mask(rows, 1, 3, 1000, 0.5).flatten()
    units = [0, 1, 2, 999, 1000, 2999]
    assert [bool(mask[u]) for u in units] == [_keep_reference(key, counter, 1, u) for u in units]
    assert mask.sum() > 0 and (~mask).sum() > 0


def test_masks_keep_half_the_units_and_differ_by_tower_layer_and_pass():
    n, width = 64, 2048
    rows = torch.tensor([[12345, 0], [67890, 0]])
    mask = dropout_keep_mask(rows, 0, n, width, 0.5).float()  # n x towers x width
    # 131,072 units per tower: the standard deviation of the kept share is 0.0014 at keep 0.5
    assert abs(mask.mean() - 0.5) < 0.01 and abs(mask[:, 0].mean() - 0.5) < 0.01
    agree = lambda a, b: (a == b).float().mean().item()  # noqa: E731  0.5 for independent masks
    assert abs(agree(mask[:, 0], mask[:, 1]) - 0.5) < 0.01  # tower 0 vs tower 1
    assert abs(agree(mask, dropout_keep_mask(rows, 1, n, width, 0.5).float()) - 0.5) < 0.01  # fc6 vs fc7
    later = dropout_keep_mask(rows + torch.tensor([0, 1]), 0, n, width, 0.5).float()
    assert abs(agree(mask, later) - 0.5) < 0.01  # one pass vs the next
    assert abs(agree(mask[:-1], mask[1:]) - 0.5) < 0.01  # image i vs image i + 1
    assert abs(dropout_keep_mask(rows, 0, n, width, 0.25).float().mean() - 0.25) < 0.01


def test_states_are_the_same_in_both_executors_and_resume_the_same_masks():
    towers, grouped = _models(_spec("published"))
    for model in (towers, grouped):
        model.train().seed_dropout(11, rank=2)
    assert all(torch.equal(a, b) for a, b in zip(towers.dropout_rng_state(), grouped.dropout_rng_state(), strict=True))
    x = _images()
    towers.features(x)  # one pass on the two-tower model; its state resumes on the grouped one
    grouped.set_dropout_rng_state(towers.dropout_rng_state())
    torch.testing.assert_close(grouped.features(x), towers.features(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("preset", ["paper", "cifar"])
def test_one_seed_gives_bit_identical_initial_weights_in_both_modes(preset):
    torch.manual_seed(123)
    towers = build_model(preset, mode="two-tower", devices=("cpu", "cpu"), num_classes=10)
    torch.manual_seed(123)
    grouped = build_model(preset, mode="grouped", device="cpu", num_classes=10)
    want = to_grouped_state(towers.state_dict())
    assert all(torch.equal(want[k], v) for k, v in grouped.state_dict().items())
    if preset == "cifar":  # and the comparison can fail: another seed, other weights
        torch.manual_seed(124)
        other = build_model(preset, mode="grouped", device="cpu", num_classes=10)
        assert not torch.equal(other.conv1.weight, grouped.conv1.weight)


# ----- on GPUs ------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_initial_weights_do_not_depend_on_the_devices():
    torch.manual_seed(9)
    reference = build_model("paper", mode="grouped", device="cpu").state_dict()
    for kwargs in ({"mode": "grouped", "device": "cuda:0"}, {"mode": "two-tower", "devices": ("cuda:0", "cpu")}):
        torch.manual_seed(9)
        state = to_grouped_state({k: v.cpu() for k, v in build_model("paper", **kwargs).state_dict().items()})
        assert all(torch.equal(state[k], v) for k, v in reference.items()), kwargs


@pytest.mark.gpu
@pytest.mark.parametrize("devices", [("cuda:0", "cuda:1"), ("cuda:0", "cuda:0"), ("cuda:0", "cpu")])
def test_gpu_towers_draw_independent_masks(devices):
    """torch.manual_seed gives every GPU the same generator state; each tower's own key does not repeat it."""
    if "cuda:1" in devices and torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    torch.manual_seed(0)
    model = build_model("paper", mode="two-tower", devices=devices).train()
    model.seed_dropout(0)
    assert [t.fc6_dropout.rng.device for t in model.towers] == [torch.device(d) for d in devices]
    with torch.no_grad():
        f = model.features(torch.randn(8, 3, 224, 224) * 50).cpu()
    kept0, kept1 = f[:, :2048] != 0, f[:, 2048:] != 0
    assert 0.3 < kept0.float().mean() < 0.6  # ~half the (positive) units kept
    assert (kept0 != kept1).float().mean() > 0.2  # identical masks would give 0


@pytest.mark.gpu
def test_gpu_draws_the_same_masks_as_the_cpu():
    rows = torch.tensor([[0x5DEECE66D1234567, 2**33 + 7], [42, 3]])
    assert torch.equal(dropout_keep_mask(rows.cuda(), 1, 128, 2048, 0.5).cpu(),
                       dropout_keep_mask(rows, 1, 128, 2048, 0.5))
