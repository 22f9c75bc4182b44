"""The data side: sources, the one-time ``prepare`` store, statistics, the paper's transforms, loaders.

    from twogpu_alexnet.data import DataOptions, make_loader, open_split
    split = open_split("synthetic", split="train", options=DataOptions(input_size=32))
    loader = make_loader(split, batch_size=128, workers=2, seed=0, device=device)
    loader.set_epoch(0)
    for images, labels, skipped in loader:
        ...                                      # images: float32 on device, mean-subtracted, 0..255 scale

See docs/data.md for sources, the store format and the exact transform parameters.
"""
from .loader import Batch, Loader, TowerInputs, make_loader
from .split import SOURCES, DataOptions, Split, open_split
from .stats import Stats
from .store import prepare_store
from .transforms import COLOR_NOISE, augment_params, color_offset, geometry_for

__all__ = [
    "COLOR_NOISE", "SOURCES", "Batch", "DataOptions", "Loader", "Split", "Stats", "augment_params", "color_offset",
    "TowerInputs", "geometry_for", "make_loader", "open_split", "prepare_store",
]
