"""twogpu-alexnet: the 2012 AlexNet with its original two-GPU model-parallel layout."""
from .errors import UserError
from .model import build_model, to_grouped_state, to_two_tower_state
from .spec import PRESETS, NetSpec, get_spec

__version__ = "0.1.0"

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
