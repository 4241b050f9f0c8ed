"""SIGTERM handled like Ctrl-C. CI cancels, ``timeout`` and ``docker stop``
send SIGTERM; by default Python dies on it at once, leaving temp folders and
half-filled cache entries behind. While :func:`handled` is active, SIGTERM
(and SIGINT) raise :class:`BuildInterrupted`, a BaseException, so no
``except Exception`` in a backend or an artifact job swallows it, every
``finally`` and staging context cleans up, and the CLI exits 128 + signal
(130 for Ctrl-C, 143 for SIGTERM)."""
from __future__ import annotations

import contextlib
import signal
import threading


class BuildInterrupted(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _raise(signum, frame):
    # a second signal while cleaning up must not interrupt the cleanup
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
    raise BuildInterrupted(signum)


@contextlib.contextmanager
def handled():
    """SIGTERM and SIGINT raise BuildInterrupted inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
