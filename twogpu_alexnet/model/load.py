"""Reading weights from disk in either layout, and matching them to a preset and a model."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import UserError
from .convert import to_grouped_state, to_two_tower_state

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def layout_of(state: Mapping[str, Tensor]) -> str:
    """'two-tower' or 'grouped', from the keys; UserError when the dict holds no AlexNet weights."""
    if any(k.startswith("towers.") for k in state):
        return "two-tower"
    if "conv1.weight" in state:
        return "grouped"
    sample = ", ".join(list(state)[:3]) or "no keys"
    raise UserError(
        f"these weights are not an AlexNet state dict (found {sample}); expected keys like "
        "towers.0.conv1.weight (two-tower) or conv1.weight (grouped)"
    )


def to_layout(state: Mapping[str, Tensor], mode: str) -> dict[str, Tensor]:
    """Convert a state dict of either layout to ``mode`` ('two-tower' or 'grouped')."""
    state = _strip_wrappers(state)
    have = layout_of(state)
    if have == mode:
        return dict(state)
    try:
        return to_grouped_state(state) if mode == "grouped" else to_two_tower_state(state)
    except (KeyError, ValueError) as exc:  # a tower tensor missing or of another shape than its twin
        raise UserError(f"these weights are not one network's state dict: {exc.args[0]}; pass the state dict "
                        "of one model") from None


def _strip_wrappers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def read_file(path: str | Path, *, mmap: bool = False) -> object:
    """What ``path`` holds, loaded with ``torch.load(weights_only=True)`` on the cpu: the one place a
    checkpoint file is read. A missing, truncated or foreign file, and pickled Python objects (which
    could run code when loaded), are one sentence each. ``mmap``: tensors mapped, not read (a zip file only)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"checkpoint {path} {what}; pass a file such as RUN/checkpoints/last.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # truncated, not a torch file, or objects that weights_only refuses
        if "Weights only load failed" in str(exc) and _pickle_or_zip(path):
            raise UserError(f"{path} holds pickled Python objects, which are not loaded because loading them can "
                            "run any code; pass a file of tensors written by twogpu-alexnet train or "
                            "torch.save(model.state_dict())") from None
        raise UserError(
            f"{path} is not a readable checkpoint (truncated or not written by torch.save); pass a file written by "
            "twogpu-alexnet train or torch.save(model.state_dict())"
        ) from None


def _pickle_or_zip(path: Path) -> bool:
    """Whether ``path`` starts as torch's zip format or a pickle does (not text that happens to fail unpickling)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def check_finite(state: Mapping[str, Tensor], path: str | Path) -> None:
    """UserError naming the first tensor of ``state`` that holds NaN or infinity (numbers computed from
    such weights would mean nothing)."""
    for key, value in state.items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            kind = "NaN" if bool(torch.isnan(value).any()) else "infinite values"
            raise UserError(f"{path}: {key} holds {kind}; these weights are broken (the training diverged): "
                            "use an earlier checkpoint")


def check_towers(state: Mapping[str, Tensor], path: str | Path) -> None:
    """UserError when a two-tower state's towers differ: every ``towers.0.K`` has a ``towers.1.K`` of the same
    shape (the towers of every preset are mirror images)."""
    for key, value in state.items():
        if not key.startswith("towers.0."):
            continue
        twin = "towers.1." + key[len("towers.0."):]
        other = state.get(twin)
        if other is None or tuple(other.shape) != tuple(value.shape):
            found = "missing" if other is None else f"of shape {tuple(other.shape)}"
            raise UserError(f"{path}: {twin} is {found} but {key} has shape {tuple(value.shape)}; the two towers "
                            "of a layer must match: the file is damaged or not an AlexNet state dict")


def load_weights(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """A training checkpoint or a plain state dict (either layout) -> (canonical state, metadata).

    The canonical layout is the two-tower one, except for a checkpoint of a one-tower preset
    (``paper-half``), whose only layout is ``conv1.weight`` ... ``fc8.bias``. Metadata holds the
    checkpoint's other entries (``preset``, ``epoch``, ...), with ``preset`` None for a plain state
    dict and ``num_classes`` read from fc8. Weights holding NaN or infinity are refused.
    """
    path = Path(path)
    obj = read_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        state, meta = obj["model"], {k: v for k, v in obj.items() if k != "model"}
        if not all(isinstance(v, Tensor) for v in state.values()):
            raise UserError(f"{path}: its model entry holds values that are not tensors; the checkpoint is damaged: "
                            "use another one")
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state, meta = obj, {}
    else:
        raise UserError(
            f"{path} holds neither a training checkpoint nor a state dict of tensors; pass RUN/checkpoints/last.pt"
        )
    check_finite(state, path)
    check_towers(state, path)
    try:
        state = to_layout(state, canonical_layout(meta.get("preset")))
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    meta.setdefault("preset", None)
    if "fc8.weight" not in state:
        raise UserError(f"{path} has no fc8 weights; it is not a complete AlexNet checkpoint")
    meta["num_classes"] = int(state["fc8.weight"].shape[0])
    return state, meta


def canonical_layout(preset) -> str:
    """'grouped' for a one-tower preset (its only layout), else 'two-tower' (also for an unknown preset)."""
    from ..spec import PRESETS

    spec = PRESETS.get(preset) if isinstance(preset, str) else None
    return "grouped" if spec is not None and spec.towers == 1 else "two-tower"


def _expected_shapes(preset: str, num_classes: int) -> dict[str, tuple]:
    from . import build_model  # the model on the meta device: shapes without memory

    model = build_model(preset, mode="grouped", device="meta", num_classes=num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def infer_preset(state: Mapping[str, Tensor]) -> str:
    """The first preset whose shapes match ``state`` ('paper' and 'original' share shapes, so do
    'paper-half' and 'original-half')."""
    from ..spec import PRESETS

    state = to_layout(state, "grouped")
    if "fc8.weight" not in state:
        raise UserError("these weights have no fc8 layer; they are not a complete AlexNet state dict")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    num_classes = shapes["fc8.weight"][0]
    for name in PRESETS:
        if _expected_shapes(name, num_classes) == shapes:
            return name
    raise UserError(f"these weights match none of the presets ({', '.join(PRESETS)}); pass --preset or check the file")


def load_into(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load weights of either layout into ``model`` (either executor), with a one-line error on mismatch."""
    state = to_layout(state, model.mode)
    own = model.state_dict()
    wrong = [k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
    extra = [k for k in state if k not in own]
    if wrong or extra:
        first = (wrong or extra)[0]
        got = tuple(state[first].shape) if first in state else "missing"
        want = tuple(own[first].shape) if first in own else "not in the model"
        raise UserError(
            f"the weights do not fit preset {model.spec.name!r} with {model.spec.num_classes} classes "
            f"({len(wrong) + len(extra)} tensors differ, e.g. {first}: {got} vs {want}); pass the "
            f"preset they were trained with"
        )
    model.load_state_dict(state)
