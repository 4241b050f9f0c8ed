"""``python toy_cli.py ARGS...``: the embedc CLI with the fast tier's toy family
and fake backend registered, for tests that need a real process (signals,
SIGKILL, concurrent builds). Needs tests/fast on PYTHONPATH."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

from toy import FakeBackend, ToyFamily, without_plots  # noqa: E402

from embedc.families.base import register_family  # noqa: E402
from embedc.targets.registry import register_backend  # noqa: E402

from rel_helpers import ProbeBackend  # noqa: E402

register_family(ToyFamily())
register_backend(FakeBackend())
register_backend(ProbeBackend())

from embedc.cli import cli  # noqa: E402

if __name__ == "__main__":
    with without_plots():  # as in the suite's own process (conftest._no_plots)
        cli.main(args=sys.argv[1:], prog_name="embedc")
