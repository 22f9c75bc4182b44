"""The data side: sources, the one-time ``prepare`` store, statistics, the paper's transforms, loaders.

    from twogpu_alexnet.data import open_split, make_loader
    split = open_split("synthetic", split="train", input_size=32)
    loader = make_loader(split, batch_size=128, workers=2, seed=0)
    loader.set_epoch(0)
    for images, labels, skipped in loader:
        x = split.finish(images.to(device))      # float32, mean-subtracted, 0..255 scale

See docs/data.md for sources, the store format and the exact transform parameters.
"""
from .loader import Loader, make_loader
from .split import SOURCES, Split, open_split
from .stats import Stats
from .store import prepare_store
from .transforms import COLOR_NOISE, augment_params, color_offset, geometry_for

__all__ = [
    "COLOR_NOISE", "SOURCES", "Loader", "Split", "Stats", "augment_params", "color_offset", "geometry_for",
    "make_loader", "open_split", "prepare_store",
]
