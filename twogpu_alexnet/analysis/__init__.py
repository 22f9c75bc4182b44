"""Looking inside trained networks: conv1 colour specificity per tower (Figure 3), fc7 nearest
neighbours (Figure 4), and a run's report page."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import UserError


def output_folder(path, option: str = "--out") -> Path:
    """Create ``path`` (with its parents) and check that files can be written there.

    Called before the work is done, so a folder the user cannot write to is reported in one
    sentence naming ``option`` rather than as a traceback after minutes of computing.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to folder {path} ({exc.strerror or exc}); choose a folder you can write to "
                        f"with {option}") from None
    return path
