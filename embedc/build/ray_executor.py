"""Run a build's artifact jobs on a Ray cluster: one task per (target, precision).

Each task asks for the hardware its target needs (:mod:`.resources`), so an
artifact is compiled and judged on a node with those CPU kernels or devices.
The driver has already computed the export and the torch reference into the
stage cache; a task reads them from there (``[executor] cache`` puts the
cache on a shared filesystem every node mounts at the same path) and writes
its artifact as a new cache entry (atomic, hash-verified, safe with
concurrent writers). The job fields every pair shares (calibration batches,
evaluation texts, ...) go through Ray's object store once.

On the node, the pair's cache key is recomputed from that node's own facts
(CPU kernels, library versions, embedc source): an artifact judged on other
kernels is never served under this machine's key.

What the driver guarantees:

- a pair no live node can satisfy fails with one "unschedulable" line before
  anything is submitted; a pair waiting longer than ``schedule_timeout_s``
  while no live node can run it (its node died and no other node is eligible)
  is cancelled and fails the same way; a pair running longer than
  ``pair_timeout_s`` is cancelled and fails;
- a worker or node that dies mid-pair: Ray runs the pair again
  (``max_retries``) on an eligible node, or the pair fails with one line;
- progress: one log line per pair when it is scheduled, starts (with the
  node) and finishes (with the node);
- every outcome records the node it ran on (``ArtifactOutcome.node``) and a
  compiled artifact records it in its ``embedc.json`` (``built_on``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import MissingDependencyError
from .artifact_job import ArtifactJob, ArtifactOutcome

log = logging.getLogger("embedc")

INSTALL_HINT = "pip install 'embedc[ray]'"
# ArtifactJob fields that are the same for every pair of a build: sent once through the object store
SHARED_FIELDS = ("ref_meta", "calibration", "length_stats", "eval_texts", "eval_ids", "eval_langs", "eval_kinds",
                 "eval_lengths", "summary", "style", "source")
POLL_S = 0.25
LATE = "start reported with the result"
NODE_CHECK_S = 2.0


def require_ray():
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError("the ray executor needs Ray, which is not installed", INSTALL_HINT) from exc
    return ray


class RayExecutor:
    """``Executor`` on a Ray cluster (``spec.ExecutorSpec`` settings)."""

    name = "ray"

    def __init__(self, settings=None, *, address: str | None = None, on_event: Callable | None = None):
        from ..spec import ExecutorSpec

        self.settings = settings or ExecutorSpec(kind="ray")
        self.address = address or self.settings.address or os.environ.get("RAY_ADDRESS") or None
        self.on_event = on_event         # on_event(event, pair_name, node_or_None) for tests and tools
        self.ray = require_ray()
        self.events: list[tuple[str, str, dict | None]] = []
        self._progress_lost = False
        self._take = None

    # ---- cluster ---------------------------------------------------------------------------------
    def _connect(self) -> bool:
        """Connect (or start a small local Ray when no address is known). True if this call connected."""
        ray = self.ray
        if ray.is_initialized():
            return False
        kwargs = {"log_to_driver": False, "include_dashboard": False, "logging_level": logging.WARNING}
        if self.address:
            log.info("connecting to the Ray cluster at %s", self.address)
            ray.init(address=self.address, **kwargs)
        else:
            log.info("no Ray address (spec, --ray-address or RAY_ADDRESS): starting a local Ray on this machine")
            ray.init(num_cpus=max(1, int(os.cpu_count() or 1)), object_store_memory=200 * 2**20, **kwargs)
        return True

    def _alive_nodes(self) -> dict[str, dict]:
        """node id -> {"totals": resources, "host": name, "ip": address} of every live node."""
        out = {}
        for n in self.ray.nodes():
            if n.get("Alive"):
                out[n["NodeID"]] = {"totals": dict(n.get("Resources") or {}),
                                    "host": n.get("NodeManagerHostname") or n.get("NodeManagerAddress"),
                                    "ip": n.get("NodeManagerAddress")}
        return out

    def _head_node_id(self) -> str | None:
        """The head node (it lives as long as the cluster): where the progress actor goes."""
        for n in self.ray.nodes():
            if n.get("Alive") and "node:__internal_head__" in (n.get("Resources") or {}):
                return n["NodeID"]
        return None

    # ---- the run ---------------------------------------------------------------------------------
    def run(self, jobs: Sequence[ArtifactJob], on_done: Callable[[ArtifactOutcome], None] | None = None
            ) -> list[ArtifactOutcome]:
        if not jobs:
            return []
        ray = self.ray
        connected = self._connect()
        try:
            return self._run(list(jobs), on_done)
        finally:
            if connected:
                ray.shutdown()

    def _run(self, jobs: list[ArtifactJob], on_done) -> list[ArtifactOutcome]:
        from .resources import eligible, request_for

        ray = self.ray
        s = self.settings
        jobs = [_with_visible_source(j) for j in jobs]
        shared = {f: getattr(jobs[0], f) for f in SHARED_FIELDS}
        model_bytes = sum(int(f.get("bytes", 0)) for f in (jobs[0].ref_meta.get("files") or []))
        shared_ref = ray.put(shared)
        progress = _progress_actor(ray, self._head_node_id() or ray.get_runtime_context().get_node_id())
        task = ray.remote(_run_pair)

        outcomes: dict[int, ArtifactOutcome] = {}
        pending: dict = {}            # ObjectRef -> index
        info: dict[int, dict] = {}    # index -> request, submitted, started, node
        nodes = self._alive_nodes()
        for i, job in enumerate(jobs):
            req = request_for(job.target, job.precision, model_bytes=model_bytes, cpus=s.cpus_per_pair,
                              hardware=s.hardware)
            if not eligible(req, {k: v["totals"] for k, v in nodes.items()}):
                outcomes[i] = self._unschedulable(job, req, nodes, "no node of the cluster offers it")
                continue
            light = dataclasses.replace(job, **{f: _EMPTY[f] for f in SHARED_FIELDS})
            ref = task.options(max_retries=s.max_retries, retry_exceptions=False, name=f"embedc:{job.name}",
                               **req.ray_options()).remote(light, shared_ref, progress)
            pending[ref] = i
            info[i] = {"request": req, "submitted": time.monotonic(), "started": None, "node": None,
                       "waiting_since": None, "attempts": 0}
            self._event("scheduled", job.name, None, f"needs {req.describe()}")

        try:
            self._wait_all(jobs, pending, info, outcomes, progress, nodes, on_done)
        finally:
            for ref in pending:  # interrupted (Ctrl-C, driver error): leave nothing running on the cluster
                try:
                    ray.cancel(ref, force=True, recursive=True)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
            try:
                ray.kill(progress)
            except Exception:  # noqa: BLE001 - the actor may already be gone with its node
                pass
        return [outcomes[i] for i in range(len(jobs))]

    def _wait_all(self, jobs, pending, info, outcomes, progress, nodes, on_done) -> None:
        ray = self.ray
        last_check = time.monotonic()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            self._drain(progress, jobs, info)
            for ref in ready:
                i = pending.pop(ref)
                outcomes[i] = self._finish(ref, jobs[i], info[i], nodes)
                if on_done is not None:
                    on_done(outcomes[i])
            now = time.monotonic()
            if now - last_check >= NODE_CHECK_S and pending:
                last_check = now
                nodes = self._alive_nodes() or nodes
                self._drain(progress, jobs, info)
                for ref, i in list(pending.items()):
                    reason = self._overdue(info[i], nodes, now)
                    if reason:
                        ray.cancel(ref, force=True, recursive=True)
                        pending.pop(ref)
                        info[i]["done"] = True
                        outcomes[i] = ArtifactOutcome(jobs[i].target.name, jobs[i].precision, "error", error=reason,
                                                      node=info[i]["node"],
                                                      seconds=round(now - info[i]["submitted"], 2))
                        log.error("%s: %s", jobs[i].name, reason)
                        self._event("finished", jobs[i].name, info[i]["node"], "error")
                        if on_done is not None:
                            on_done(outcomes[i])

    def _overdue(self, info: dict, nodes: dict, now: float) -> str | None:
        """Why a pending pair must stop now (None: let it run)."""
        from .resources import eligible

        s = self.settings
        if info["started"] is not None and s.pair_timeout_s and now - info["started"] > s.pair_timeout_s:
            where = _node_words(info["node"])
            return f"timed out after {s.pair_timeout_s:g} s on {where} (executor.pair_timeout_s)"
        if eligible(info["request"], {k: v["totals"] for k, v in nodes.items()}):
            info["waiting_since"] = None
            return None
        # no live node can run it: its node died (Ray resubmits it, but nowhere can take it)
        if info["waiting_since"] is None:
            info["waiting_since"] = now
            return None
        if now - info["waiting_since"] > s.schedule_timeout_s:
            lost = f" after {_node_words(info['node'])} was lost" if info["node"] else ""
            return (f"unschedulable{lost}: no live node offers {info['request'].describe()} "
                    f"(waited {s.schedule_timeout_s:g} s, executor.schedule_timeout_s)")
        return None

    def _finish(self, ref, job: ArtifactJob, info: dict, nodes: dict) -> ArtifactOutcome:
        from .artifact_job import one_line

        info["done"] = True
        try:
            outcome = self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - worker/node death after the retries, cancellation
            where = _node_words(info["node"])
            reason = f"failed on {where} after {info['attempts']} attempt(s): {_ray_error_line(exc, one_line)}"
            log.error("%s: %s", job.name, reason)
            self._event("finished", job.name, info["node"], "error")
            return ArtifactOutcome(job.target.name, job.precision, "error", error=reason, node=info["node"],
                                   seconds=round(time.monotonic() - info["submitted"], 2))
        node = outcome.node or {}
        if outcome.status == "error":  # logged on the node, where the driver does not see it
            log.error("%s: %s", job.name, outcome.error)
        if info["started"] is None:  # its start report is still on the way
            info["attempts"] += 1
            self._event("started", job.name, node, f"attempt {info['attempts']}, {LATE}")
        info["node"] = node
        self._event("finished", job.name, node, outcome.status.upper() + (" (cached)" if outcome.cached else "")
                    + f" in {outcome.seconds:.1f} s")
        return outcome

    def _drain(self, progress, jobs, info) -> None:
        """Log the "started" events the tasks reported."""
        names = {j.name: i for i, j in enumerate(jobs)}
        if self._progress_lost:
            return
        if self._take is None:
            self._take = progress.take.remote()
        ready, _ = self.ray.wait([self._take], timeout=0)   # never block: a busy cluster answers later
        if not ready:
            return
        try:
            started = self.ray.get(self._take)
        except Exception as exc:  # noqa: BLE001 - progress is informative: the build goes on without it
            log.warning("progress reports lost (%s); pairs still finish and say where", type(exc).__name__)
            self._progress_lost = True
            return
        finally:
            self._take = None
        for name, node in started:
            i = names.get(name)
            if i is None or i not in info or info[i].get("done"):
                continue
            info[i]["started"] = time.monotonic()
            info[i]["node"] = node
            info[i]["attempts"] += 1
            info[i]["waiting_since"] = None
            self._event("started", name, node, f"attempt {info[i]['attempts']}")

    def _unschedulable(self, job, req, nodes, why) -> ArtifactOutcome:
        from .resources import unmet

        missing = sorted({k for n in nodes.values() for k in unmet(req, n["totals"])})
        need = "; ".join(req.needs) or req.describe()
        reason = (f"unschedulable: {why} ({need}: missing {', '.join(missing) or '-'} on all {len(nodes)} node(s)); "
                  "start a worker there with ray start --resources \"$(embedc node-resources)\", or set "
                  "[executor] hardware = \"any\"")
        log.error("%s: %s", job.name, reason)
        self._event("finished", job.name, None, "unschedulable")
        return ArtifactOutcome(job.target.name, job.precision, "error", error=reason)

    def _event(self, event: str, name: str, node: dict | None, detail: str = "") -> None:
        self.events.append((event, name, node))
        where = f" on {_node_words(node)}" if node else ""
        log.info("%s: %s%s%s", name, event, where, f" ({detail})" if detail else "")
        if self.on_event is not None:
            self.on_event(event, name, node, detail)


_EMPTY = {"ref_meta": {}, "calibration": (), "length_stats": {}, "eval_texts": (), "eval_ids": (), "eval_langs": (),
          "eval_kinds": (), "eval_lengths": (), "summary": {}, "style": {}, "source": {}}


def _node_words(node: dict | None) -> str:
    if not node:
        return "an unknown node"
    return f"node {node.get('hostname')} ({node.get('ip')}, {str(node.get('node_id'))[:8]})"


def _ray_error_line(exc: BaseException, one_line) -> str:
    name = type(exc).__name__
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    if "Died" in name or "Crashed" in name or "died" in text.lower():
        return f"{name}: the worker or its node died and Ray's retries ran out"
    if "Cancel" in name:
        return f"{name}: cancelled"
    return one_line(exc)


def _with_visible_source(job: ArtifactJob) -> ArtifactJob:
    """Put the model's config.json (sentence-transformers files read it) beside the export in the stage
    cache, so a node that sees only the cache builds the same artifact as this machine."""
    from .cache import StageCache, content_key

    job = dataclasses.replace(job, **{f: str(Path(getattr(job, f)).absolute())
                                      for f in ("cache_root", "work_root", "export_dir", "reference_file")})
    cfg = Path(job.source_dir) / "config.json"
    if not cfg.is_file():
        return job
    cache = StageCache(Path(job.cache_root))
    data = cfg.read_bytes()
    key = content_key("model-config", {"sha256": __import__("hashlib").sha256(data).hexdigest()})
    hit = cache.lookup("model-config", key)
    if hit is None:
        hit = cache.store("model-config", key, {"source": str(job.source_dir)},
                          lambda tmp: (tmp / "config.json").write_bytes(data))
    return dataclasses.replace(job, source_dir=str(hit))


# ---- on the node ------------------------------------------------------------------------------------
def this_node() -> dict:
    """Where this code runs: host name, IP, Ray node id."""
    import ray

    ctx = ray.get_runtime_context()
    try:
        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001
        ip = None
    node_id = ctx.get_node_id()
    resources = {}
    try:
        for n in ray.nodes():
            if n.get("NodeID") == node_id:
                resources = {k: v for k, v in (n.get("Resources") or {}).items() if not k.startswith("node:")}
    except Exception:  # noqa: BLE001 - the record is informative; the build goes on
        pass
    return {"hostname": socket.gethostname(), "ip": ip, "node_id": node_id, "resources": resources}


def localize(job: ArtifactJob, node: dict) -> ArtifactJob:
    """The job as this node runs it: a node-local scratch folder, the cache key
    recomputed from this node's facts, versions and source, the node recorded."""
    from ..errors import ArtifactError

    if not Path(job.export_dir).is_dir() or not Path(job.reference_file).is_file():
        raise ArtifactError(f"the stage cache {job.cache_root} is not visible on node {node.get('hostname')}",
                            "set [executor] cache to a shared filesystem path mounted at the same place on "
                            "every node")
    work = Path(job.work_root) if Path(job.work_root).is_dir() else Path(tempfile.gettempdir())
    key, facts = node_key(job)
    return dataclasses.replace(job, work_root=str(work), key=key, facts=facts, node=dict(node))


def node_key(job: ArtifactJob) -> tuple[str, dict]:
    """(artifact cache key, backend facts) of ``job`` computed on this machine, as ``pipeline.plan_jobs`` does."""
    from ..targets.registry import get_backend
    from . import stages
    from .artifact_job import ARTIFACT_CODE
    from .keys import artifact_key

    backend = get_backend(job.target)
    facts = backend.cache_facts(job.target, job.precision, backend.resolve_options(job.target, job.precision,
                                                                                    dict(job.options)))
    key = artifact_key(export_key=Path(job.export_dir).name, target=job.target, precision=job.precision,
                       options=job.options, facts=facts, calibration_hash=job.summary["calibration"]["sha256"],
                       eval_hash=job.summary["evaluation"]["sha256"], style=job.style,
                       calib_max_length=job.calib_max_length, eval_max_length=job.eval_max_length,
                       versions=stages.versions_of(backend.libraries), shared_code=ARTIFACT_CODE,
                       backend_package=backend.source_package)
    return key, facts


def _run_pair(job: ArtifactJob, shared: dict, progress) -> ArtifactOutcome:
    """The Ray task: report the start, then run the job as ``LocalExecutor`` would (never raises)."""
    node = this_node()
    progress.started.remote(job.name, node)
    from .artifact_job import run_artifact_job

    job = dataclasses.replace(job, **shared)
    try:
        job = localize(job, node)
    except Exception as exc:  # noqa: BLE001 - one line, this pair only
        from .artifact_job import one_line

        return ArtifactOutcome(job.target.name, job.precision, "error", error=one_line(exc), node=node)
    outcome = run_artifact_job(job)
    outcome.node = node
    return outcome


class _Progress:
    """Collects the tasks' "started" reports for the driver (a zero-CPU actor on the head node)."""

    def __init__(self):
        self._events: list = []

    def started(self, name: str, node: dict) -> None:
        self._events.append((name, node))

    def take(self) -> list:
        out, self._events = self._events, []
        return out


def _progress_actor(ray, node_id: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor = ray.remote(num_cpus=0, max_restarts=0)(_Progress)
    return actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)).remote()
