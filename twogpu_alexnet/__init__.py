"""twogpu-alexnet: the 2012 AlexNet with its original two-GPU model-parallel layout."""
from .errors import UserError
from .spec import PRESETS, NetSpec, get_spec

__version__ = "0.1.0"

__all__ = ["PRESETS", "NetSpec", "UserError", "get_spec", "__version__"]
