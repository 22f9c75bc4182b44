"""Shared test setup. Areas add fixtures here prefixed with their area name (model_, data_, engine_, analysis_)."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
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
def notes():
    """Engine tests: a reporter that keeps the messages a run or an evaluation shows (``notes.lines``)."""
    from twogpu_alexnet.engine.progress import Reporter

    class Notes(Reporter):
        def __init__(self):
            self.lines = []

        def message(self, text):
            self.lines.append(text)

    return Notes()
