"""No usage telemetry from OpenVINO or NNCF.

Both send usage events (Google Analytics, from a forked process that is killed after a timeout)
and write ``~/intel/openvino_ga_cid`` and ``~/intel/stats`` as soon as they are imported. They do
it through the ``openvino-telemetry`` package, which both treat as optional: without it they use
their own no-op stubs. embedc hides that package from its own process before it first imports
either library, so a build writes no file it did not create and calls nobody. A process that
imported openvino, nncf or openvino-telemetry before embedc did keeps what it chose.
"""
from __future__ import annotations

import sys

_TELEMETRY_MODULES = ("openvino_telemetry", "openvino_telemetry.backend", "openvino_telemetry.backend.backend_ga4")


def block_telemetry() -> bool:
    """Make ``import openvino_telemetry`` fail in this process (True), unless openvino, nncf or
    the telemetry package is already imported (False: too late, or the caller's own choice)."""
    if any(name in sys.modules for name in ("openvino", "nncf", *_TELEMETRY_MODULES)):
        return False
    for name in _TELEMETRY_MODULES:
        sys.modules[name] = None  # an ImportError for every importer: OpenVINO and NNCF fall back to stubs
    return True
