"""twogpu-alexnet: the 2012 AlexNet with its original two-GPU model-parallel layout.

The public names below are imported on first use, so ``import twogpu_alexnet`` (and the command line's
``--help``) does not wait for torch.
"""
from importlib import import_module

from .errors import UserError

__version__ = "0.1.0"

_LAZY = {
    "build_model": ".model", "to_grouped_state": ".model", "to_two_tower_state": ".model",
    "PRESETS": ".spec", "NetSpec": ".spec", "get_spec": ".spec",
}

__all__ = [
    "PRESETS",
    "NetSpec",
    "UserError",
    "build_model",
    "get_spec",
    "to_grouped_state",
    "to_two_tower_state",
    "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
