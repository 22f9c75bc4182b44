"""Shared test setup. Areas add fixtures here prefixed with their area name (model_, data_, engine_, analysis_).

The suite runs in parallel (``-n auto``, pytest-xdist): each worker process gets its share of the CPU
cores for torch's threads, and the ``slow`` tests are handed out first, so no long test starts last.
"""
import os

import pytest
import torch

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:  # a worker of -n N: its share of the cores, not all of them (N x all would oversubscribe)
    _SHARE = max(1, (os.cpu_count() or 1) // _WORKERS)
    torch.set_num_threads(_SHARE)
    os.environ.setdefault("OMP_NUM_THREADS", str(_SHARE))  # the same share for the commands tests start


def pytest_collection_modifyitems(config, items):
    if _WORKERS > 1:  # handed out round-robin from the front: the long tests start first, on every worker
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow first, order kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (gpu mark); runs in launch/gpu_check.sh on a GPU machine")
    for item in items:
        if item.get_closest_marker("gpu"):  # the mark, not the keyword (a checkout folder named gpu is one)
            item.add_marker(skip)


@pytest.fixture
def data_write_images():
    """Data tests: write image files. ``data_write_images(root, {"cls/a.png": image, ...})``.

    ``image``: a uint8 H x W x 3 (or H x W) array or a PIL image, saved as PNG or JPEG (quality 95)
    by the name's extension, or by an explicit format with a ("cls/a.JPEG", "PNG") key; bytes are
    written as they are (corrupt files).
    """
    import io
    from pathlib import Path

    import numpy as np
    from PIL import Image

    def write(root, files: dict):
        root = Path(root)
        for name, content in files.items():
            name, fmt = name if isinstance(name, tuple) else (name, None)
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, (bytes, bytearray)):
                path.write_bytes(content)
                continue
            image = (
                content if isinstance(content, Image.Image) else Image.fromarray(np.asarray(content, dtype=np.uint8))
            )
            fmt = fmt or ("PNG" if path.suffix.lower() == ".png" else "JPEG")
            buf = io.BytesIO()
            image.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
            path.write_bytes(buf.getvalue())
        return root

    return write



@pytest.fixture
def data_jpeg_store(tmp_path, data_write_images):
    """Data tests: ``data_jpeg_store(size, shape, per_class, seed)`` -> a store root whose train/ (and val/, the
    same store) holds ``per_class`` random ``shape`` (H, W) JPEGs in classes a and b, prepared at ``size``."""
    import numpy as np

    from twogpu_alexnet.data.store import prepare_store

    def make(size: int, shape=(40, 50), per_class: int = 3, seed: int = 0):
        rng = np.random.default_rng(seed)
        data_write_images(tmp_path / "src", {f"{c}/{i}.jpg": rng.integers(0, 255, (*shape, 3)) for c in "ab"
                                             for i in range(per_class)})
        prepare_store(tmp_path / "src", tmp_path / "store" / "train", size=size, workers=1)
        (tmp_path / "store" / "val").symlink_to(tmp_path / "store" / "train")
        return tmp_path / "store"

    return make

@pytest.fixture
def notes():
    """Engine tests: a reporter that keeps the messages a run or an evaluation shows (``notes.lines``)."""
    from twogpu_alexnet.engine.progress import Reporter

    class Notes(Reporter):
        def __init__(self):
            self.lines = []

        def message(self, text):
            self.lines.append(text)

    return Notes()
