"""Loaders for two towers: each distinct device receives the uint8 batch and finishes it there; entries on one
device share one tensor, and a loader with one distinct device yields plain tensors as before."""
import pytest
import torch

from twogpu_alexnet.data import DataOptions, TowerInputs, make_loader, open_split
from twogpu_alexnet.data import loader as loader_module
from twogpu_alexnet.data.loader import device_slots, per_tower
from twogpu_alexnet.errors import UserError

CPU = torch.device("cpu")


def _batches(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader.batches())


def _every_entry_its_own_device(device):
    """device_slots as if each entry were another device: two CPU "devices" run the per-device code twice."""
    entries = [torch.device(d) for d in device] if isinstance(device, (list, tuple)) else [torch.device(device)]
    return tuple(entries), tuple(range(len(entries)))


@pytest.fixture(scope="module")
def synthetic_train():
    return open_split("synthetic", split="train", options=DataOptions(input_size=32, seed=3, images=48))


def test_distinct_devices_and_which_entry_is_on_which():
    cuda0, cuda1 = torch.device("cuda:0"), torch.device("cuda:1")
    assert device_slots("cpu") == ((CPU,), (0,))
    assert device_slots(("cpu", "cpu")) == ((CPU,), (0, 0))
    assert device_slots(["cuda:0", "cuda:1"]) == ((cuda0, cuda1), (0, 1))
    assert device_slots(("cuda:0", "cuda:0")) == ((cuda0,), (0, 0))
    assert device_slots(("cuda:1", "cpu", "cuda:1")) == ((cuda1, CPU), (0, 1, 0))
    with pytest.raises(UserError, match="device list is empty"):
        device_slots(())


@pytest.mark.parametrize("finish", [True, False])
@pytest.mark.parametrize("cache", [False, True])
def test_one_distinct_device_gives_the_plain_batches(synthetic_train, finish, cache):
    kw = dict(batch_size=16, workers=0, seed=7, finish=finish, cache=cache)
    one = _batches(make_loader(synthetic_train, device="cpu", **kw), 1)
    pair = _batches(make_loader(synthetic_train, device=("cpu", "cpu"), **kw), 1)
    assert len(one) == len(pair) == 3
    for a, b in zip(one, pair, strict=True):
        assert type(b.images) is torch.Tensor and torch.equal(a.images, b.images)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.indices, b.indices) and a.skipped == b.skipped


@pytest.mark.parametrize("finish", [True, False])
def test_each_device_finishes_its_own_copy_of_the_uint8_batch(synthetic_train, monkeypatch, finish):
    """Two device slots (both the CPU here): the batch is finished once per slot, each result bit-identical to the
    single-device batch; labels stay on the CPU, once."""
    kw = dict(batch_size=16, workers=0, seed=7, finish=finish)
    one = _batches(make_loader(synthetic_train, device="cpu", **kw), 2)
    monkeypatch.setattr(loader_module, "device_slots", _every_entry_its_own_device)
    loader = make_loader(synthetic_train, device=("cpu", "cpu"), **kw)
    pair = _batches(loader, 2)
    assert len(pair) == len(one) == 3
    for a, b in zip(one, pair, strict=True):
        assert isinstance(b.images, TowerInputs) and len(b.images) == 2
        if finish:                                                   # finished twice, not one tensor shared
            assert b.images[0] is not b.images[1]                    # (uint8 views: .to("cpu") is the same tensor)
        for x in b.images:
            assert x.dtype == a.images.dtype and torch.equal(x, a.images)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.indices, b.indices)
    loader.set_epoch(2)
    images, labels, skipped = next(iter(loader))
    assert isinstance(images, TowerInputs) and torch.equal(images[1], one[0].images) and skipped == 0


def test_the_gpu_cache_finishes_once_and_sends_the_batch_on(synthetic_train, monkeypatch):
    """data.cache on several devices: the first device finishes each batch, the others get a copy of it."""
    one = _batches(make_loader(synthetic_train, batch_size=16, workers=0, seed=7, cache=True), 1)
    monkeypatch.setattr(loader_module, "device_slots", _every_entry_its_own_device)
    loader = make_loader(synthetic_train, batch_size=16, workers=0, seed=7, cache=True, device=("cpu", "cpu"))
    assert len(loader) == 3
    pair = _batches(loader, 1)
    for a, b in zip(one, pair, strict=True):
        assert isinstance(b.images, TowerInputs) and all(torch.equal(x, a.images) for x in b.images)
        assert torch.equal(a.labels, b.labels)
    loader.set_epoch(1)
    assert [torch.equal(x[1], b.images[1]) for (x, _, _), b in zip(loader, pair, strict=True)] == [True] * 3


def test_jpeg_bytes_are_decoded_on_the_first_device_and_sent_on(tmp_path, data_jpeg_store, monkeypatch):
    data_jpeg_store(32, per_class=4, seed=6)
    split = open_split("store", tmp_path / "store", "train", DataOptions(input_size=32, seed=1, decode="gpu"))
    one = _batches(make_loader(split, batch_size=4, workers=0, seed=3), 0)
    monkeypatch.setattr(loader_module, "device_slots", _every_entry_its_own_device)
    pair = _batches(make_loader(split, batch_size=4, workers=0, seed=3, device=("cpu", "cpu")), 0)
    assert len(one) == len(pair) == 2
    for a, b in zip(one, pair, strict=True):
        assert isinstance(b.images, TowerInputs) and all(torch.equal(x, a.images) for x in b.images)


def test_entries_on_one_device_share_one_tensor():
    a, b = torch.zeros(2), torch.ones(2)
    got = per_tower([a, b], (CPU, CPU), (0, 1, 0))
    assert isinstance(got, TowerInputs) and got[0] is a and got[1] is b and got[2] is a
    assert per_tower([a], (CPU,), (0, 0)) is a                       # one device: the tensor itself
    doubled = got.map(lambda x: x * 2)
    assert isinstance(doubled, TowerInputs) and doubled[0] is doubled[2] and doubled[0] is not doubled[1]
    assert torch.equal(doubled[1], 2 * b)


@pytest.mark.gpu
@pytest.mark.parametrize("cache", [False, True])
def test_a_gpu_and_the_cpu_each_get_the_cpu_batch(synthetic_train, cache):
    cpu = _batches(make_loader(synthetic_train, batch_size=16, workers=2, seed=7), 1)
    mixed = _batches(make_loader(synthetic_train, batch_size=16, workers=2, seed=7, device=("cuda:0", "cpu"),
                                 cache=cache), 1)
    for a, b in zip(cpu, mixed, strict=True):
        assert isinstance(b.images, TowerInputs) and b.images[0].is_cuda and not b.images[1].is_cuda
        assert torch.equal(b.images[0].cpu(), a.images) and torch.equal(b.images[1], a.images)
    same = _batches(make_loader(synthetic_train, batch_size=16, workers=2, seed=7, device=("cuda:0", "cuda")), 1)
    assert all(type(b.images) is torch.Tensor and b.images.is_cuda and torch.equal(b.images.cpu(), a.images)
               for a, b in zip(cpu, same, strict=True))


@pytest.mark.gpu
@pytest.mark.parametrize("workers", [0, 2])
def test_two_gpu_slots_each_copy_on_their_side_stream(synthetic_train, monkeypatch, workers):
    """Two CUDA "devices" on one GPU: two side streams, two events, a TowerInputs of two CUDA tensors, each the
    CPU batch (what two GPUs run; the model's work between batches is simulated by a long kernel)."""
    cpu = _batches(make_loader(synthetic_train, batch_size=16, workers=workers, seed=7), 1)
    monkeypatch.setattr(loader_module, "device_slots", _every_entry_its_own_device)
    loader = make_loader(synthetic_train, batch_size=16, workers=workers, seed=7, device=("cuda:0", "cuda:0"))
    loader.set_epoch(1)
    got = []
    for b in loader.batches():
        torch.cuda._sleep(10_000_000)                       # the compute stream is busy while the next copy runs
        got.append(b)
    assert len(got) == len(cpu)
    for a, b in zip(cpu, got, strict=True):
        assert isinstance(b.images, TowerInputs) and b.images[0] is not b.images[1]
        assert all(x.is_cuda and torch.equal(x.cpu(), a.images) for x in b.images)


def test_a_device_given_as_a_number_is_that_gpu():
    assert loader_module.device_slots(0)[0] == (torch.device("cuda:0"),)
