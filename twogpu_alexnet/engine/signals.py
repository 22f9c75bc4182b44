"""Stop cleanly on SIGINT / SIGTERM: finish the current step, save a checkpoint, exit with a code.

Exit codes (see docs/training.md): 130 after SIGINT (Ctrl-C), 143 after SIGTERM (128 + the signal
number, as shells report them), both with ``checkpoints/last.pt`` saved. A second Ctrl-C while the
checkpoint is being written is ignored until the write is done.
"""
from __future__ import annotations

import signal
import threading

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequest:
    """Catches SIGINT and SIGTERM while active (a context manager) and remembers the first one.

    Outside the main thread (where Python cannot install handlers) it catches nothing.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 1)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask the run to stop after its current step, as a signal would."""
        if self.signum is None:
            self.signum = signum

    def _handle(self, signum, frame) -> None:
        self.request(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
