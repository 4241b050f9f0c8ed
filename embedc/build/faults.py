"""Fault injection for the reliability tests: ``EMBEDC_FAULT=<stage>:<SIGNAL>``
makes the build send itself that signal when it reaches ``<stage>`` (export,
reference, compile, parity, report, swap). A no-op unless the variable is set.

The points sit where a real interruption does the most harm: inside a cache
entry being filled (export, reference, compile, parity), with the whole new
build staged (report), and right after the new build was swapped in, before
the previous one is deleted (swap)."""
from __future__ import annotations

import os
import signal

STAGES = ("export", "reference", "compile", "parity", "report", "swap")


def point(stage: str) -> None:
    spec = os.environ.get("EMBEDC_FAULT")
    if not spec:
        return
    where, _, sig = spec.partition(":")
    if where != stage:
        return
    os.kill(os.getpid(), getattr(signal, sig or "SIGKILL"))
