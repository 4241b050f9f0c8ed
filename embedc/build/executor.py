"""Where artifact jobs run. ``LocalExecutor`` runs them one after another in
this process (the default; no extra imports). Another executor (a cluster)
implements the same ``run``: jobs and outcomes are plain picklable data."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from .artifact_job import ArtifactJob, ArtifactOutcome, run_artifact_job


class Executor(Protocol):
    name: str

    def run(self, jobs: Sequence[ArtifactJob], on_done: Callable[[ArtifactOutcome], None] | None = None
            ) -> list[ArtifactOutcome]:
        """Run every job; return their outcomes in job order."""


def make_executor(settings=None, *, address: str | None = None):
    """The executor a spec's ``[executor]`` table names (``kind = "local"`` needs no extra import)."""
    kind = getattr(settings, "kind", "local")
    if kind == "local":
        return LocalExecutor()
    from .ray_executor import RayExecutor

    return RayExecutor(settings, address=address)


class LocalExecutor:
    name = "local"

    def run(self, jobs, on_done=None):
        outcomes = []
        for job in jobs:
            outcome = run_artifact_job(job)
            if on_done is not None:
                on_done(outcome)
            outcomes.append(outcome)
        return outcomes
