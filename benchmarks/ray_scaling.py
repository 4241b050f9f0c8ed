"""How the embedc.toml matrix scales across Ray nodes: measured per-pair costs,
measured scheduling overhead, projected wall time for many models on N nodes.

    # 1. per-pair costs: a local build, each pair timed (compile + parity), stages timed
    python benchmarks/ray_scaling.py pairs --spec embedc.toml [--only ort-cpu/int8-static ...] -o pairs.json
    # 2. scheduling overhead on a local Ray cluster (head + one worker node, 1 CPU each)
    python benchmarks/ray_scaling.py overhead -o overhead.json
    # 3. projection: 10 models on 1, 4, 16 nodes
    python benchmarks/ray_scaling.py project overhead.json pairs.json [more-pairs.json] --models 10 --nodes 1 4 16 \
        --matrix embedc.toml

The projection is a list schedule (longest pair first) of every model's pairs
onto ``nodes x slots`` workers, each pair costing its measured seconds plus the
measured per-task overhead, plus each fresh worker's one-time import cost; a
model's pairs become ready when the driver has exported it and computed its
reference (serially, one model after another, on the driver). It assumes
nodes like the measuring machine and pairs free to run on any node
(``[executor] hardware = "any"``): with hardware constraints, each hardware
class is its own smaller pool.
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ---- 1. per-pair costs --------------------------------------------------------------------------
def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def measure_pairs(spec_path: str, only: list[str], out: str | None, cache_dir: str | None) -> dict:
    """A local build of the spec (or of ``only``, in that order), each stage and pair timed in wall
    and CPU seconds; the JSON is rewritten after every pair, so a stopped run keeps what it measured."""
    import dataclasses
    import tempfile

    from embedc.build import pipeline, stages
    from embedc.build.artifact_job import run_artifact_job
    from embedc.build.executor import LocalExecutor
    from embedc.spec import MatrixEntry, load_spec_file

    spec = load_spec_file(Path(spec_path))
    if only:
        wanted = [tuple(o.split("/", 1)) for o in only]
        spec = dataclasses.replace(spec, matrix=tuple(
            MatrixEntry(t, (p,), {p: spec.options_for(t, p)} if spec.options_for(t, p) else {}) for t, p in wanted))
    spec = dataclasses.replace(spec, out=str(Path(tempfile.mkdtemp(prefix="ray-scaling-")) / "build"))
    data: dict = {"spec": spec_path, "model": spec.model.name, "cpus": os.cpu_count(),
                  "load_average_at_start": os.getloadavg(), "stages": {}, "stages_cpu": {}, "pairs": [],
                  "note": "local build (LocalExecutor); wall and CPU seconds per stage and per pair (compile + "
                          "parity); the machine was shared, so wall seconds are inflated: CPU seconds are the "
                          "cost a dedicated node pays"}
    for name in ("export", "reference"):                 # the driver's shared stages
        fn = getattr(stages, name)

        def timed(*a, _fn=fn, _name=name, **k):
            t0, c0 = time.perf_counter(), _cpu()
            try:
                return _fn(*a, **k)
            finally:
                data["stages"][_name] = round(time.perf_counter() - t0, 2)
                data["stages_cpu"][_name] = round(_cpu() - c0, 2)
                _write(data, out, quiet=True)
        setattr(stages, name, timed)

    class Timed(LocalExecutor):
        def run(self, jobs, on_done=None):
            outcomes = []
            for job in jobs:
                t0, c0 = time.perf_counter(), _cpu()
                o = run_artifact_job(job)
                data["pairs"].append({"name": o.name, "status": o.status, "cached": o.cached,
                                      "seconds": round(time.perf_counter() - t0, 2),
                                      "cpu_seconds": round(_cpu() - c0, 2),
                                      "compile_seconds": (o.meta or {}).get("compile_seconds"),
                                      "load_average": round(os.getloadavg()[0], 1)})
                _write(data, out, quiet=True)
                if on_done is not None:
                    on_done(o)
                outcomes.append(o)
            return outcomes

    t0 = time.perf_counter()
    pipeline.build(spec, force=True, cache_dir=Path(cache_dir) if cache_dir else None, executor=Timed())
    data["build_seconds"] = round(time.perf_counter() - t0, 1)
    _write(data, out)
    return data


# ---- 2. scheduling overhead ---------------------------------------------------------------------
def measure_overhead(out: str | None, n: int) -> dict:
    import numpy as np
    import ray
    from ray.cluster_utils import Cluster

    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 * 2**20,
                                                      "include_dashboard": False})
    c.add_node(num_cpus=1, object_store_memory=100 * 2**20, resources={"cpu_vnni": 1.0})
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    up = time.perf_counter() - t0
    try:
        from embedc.build.ray_executor import _progress_actor, this_node

        @ray.remote(num_cpus=1)
        def noop():
            return 0

        @ray.remote(num_cpus=1)
        def pair_like(job, shared, progress):
            """What the Ray executor adds around a pair: node lookup, start report, argument transfer."""
            progress.started.remote(job["name"], this_node())
            return {"name": job["name"], "node": this_node(), "n": len(shared["calibration"])}

        @ray.remote(num_cpus=1, resources={"cpu_vnni": 0.001})
        def first_import():
            t = time.perf_counter()
            import embedc.build.artifact_job  # noqa: F401
            import onnxruntime  # noqa: F401
            import transformers  # noqa: F401

            from embedc.targets.registry import all_targets
            all_targets()
            return time.perf_counter() - t

        ray.get(noop.remote())
        rt = []
        for _ in range(n):
            t = time.perf_counter()
            ray.get(noop.remote())
            rt.append(time.perf_counter() - t)
        # a job-sized payload: e5-small calibration batches (304 texts, <=256 tokens, 2 int64 inputs)
        rng = np.random.default_rng(0)
        calib = tuple({"input_ids": rng.integers(0, 250000, (1, int(k)), dtype=np.int64),
                       "attention_mask": np.ones((1, int(k)), np.int64)} for k in rng.integers(8, 256, 304))
        shared = ray.put({"calibration": calib, "eval_texts": tuple("x" * 200 for _ in range(608))})
        progress = _progress_actor(ray, ray.get_runtime_context().get_node_id())
        pr = []
        for i in range(n):
            t = time.perf_counter()
            ray.get(pair_like.remote({"name": f"p{i}"}, shared, progress))
            pr.append(time.perf_counter() - t)
        imp = ray.get(first_import.remote())
        data = {"cluster_start_seconds": round(up, 1), "tasks": n,
                "noop_round_trip_ms": {"median": round(statistics.median(rt) * 1e3, 2),
                                       "p95": round(sorted(rt)[int(0.95 * (n - 1))] * 1e3, 2)},
                "pair_overhead_ms": {"median": round(statistics.median(pr) * 1e3, 2),
                                     "p95": round(sorted(pr)[int(0.95 * (n - 1))] * 1e3, 2)},
                "worker_first_import_seconds": round(imp, 2),
                "note": "local cluster on this machine: head + 1 worker node, 1 CPU each; round trips include "
                        "the driver's ray.get; pair overhead includes the shared job fields from the object store "
                        "and the start report"}
    finally:
        ray.shutdown()
        c.shutdown()
    _write(data, out)
    return data


# ---- 3. projection --------------------------------------------------------------------------------
def project(pair_seconds: list[float], stage_seconds: float, models: int, nodes: int, slots: int = 1,
            overhead_s: float = 0.0, first_import_s: float = 0.0) -> float:
    """Wall seconds of ``models`` x the pairs on ``nodes*slots`` workers (list scheduling, longest first);
    model m's pairs are ready once the driver has run m+1 models' export + reference."""
    workers = [(0.0, False)] * (nodes * slots)   # (free at, warmed up)
    heapq.heapify(workers)
    end = 0.0
    for m in range(models):
        ready = (m + 1) * stage_seconds
        for s in sorted(pair_seconds, reverse=True):
            free, warm = heapq.heappop(workers)
            start = max(free, ready)
            finish = start + s + overhead_s + (0.0 if warm else first_import_s)
            end = max(end, finish)
            heapq.heappush(workers, (finish, True))
    return end


REPRESENTATIVE = (("ort-cpu", "ort-cpu"), ("openvino-", "openvino-cpu"), ("tensorrt-", "tensorrt-sm90"))


def expand_to_matrix(measured: dict[str, float], spec_path: str) -> tuple[list[float], list[str]]:
    """Cost of every pair of the spec's matrix: its own measurement, or that of the same precision on
    the measured target of its backend (same recipe; ``estimated`` lists those)."""
    from embedc.spec import load_spec_file

    costs, estimated = [], []
    for target, precision in load_spec_file(Path(spec_path)).pairs():
        name = f"{target}/{precision}"
        if name in measured:
            costs.append(measured[name])
            continue
        rep = next((f"{r}/{precision}" for prefix, r in REPRESENTATIVE if target.startswith(prefix)), None)
        if rep in measured:
            costs.append(measured[rep])
            estimated.append(f"{name} = {rep}")
        else:   # nothing of its backend and precision measured: the mean of the measured pairs (an assumption)
            costs.append(statistics.mean(measured.values()))
            estimated.append(f"{name} = mean of measured (ASSUMED)")
    return costs, estimated


def project_table(pairs: dict, overhead: dict, models: int, nodes: list[int], slots: int,
                  cost: str = "cpu_seconds", matrix_spec: str | None = None) -> dict:
    done = [p for p in pairs["pairs"] if p["status"] != "error" and not p["cached"]]
    measured = {p["name"]: p[cost] for p in done}
    estimated: list[str] = []
    if matrix_spec:
        secs, estimated = expand_to_matrix(measured, matrix_spec)
    else:
        secs = list(measured.values())
    stage = sum((pairs["stages_cpu"] if cost == "cpu_seconds" else pairs["stages"]).values())
    oh = overhead["pair_overhead_ms"]["median"] / 1e3
    imp = overhead["worker_first_import_seconds"]
    rows = []
    for n in nodes:
        wall = project(secs, stage, models, n, slots, oh, imp)
        ideal = (models * sum(secs)) / (n * slots)
        rows.append({"nodes": n, "wall_seconds": round(wall, 1), "wall_minutes": round(wall / 60, 1),
                     "pairs_only_lower_bound_minutes": round(ideal / 60, 1),
                     "driver_stages_minutes": round(models * stage / 60, 1)})
    return {"cost": cost, "matrix": matrix_spec, "measured_pairs": len(measured), "estimated_pairs": estimated,
            "models": models, "pairs_per_model": len(secs), "pair_seconds_total": round(sum(secs), 1),
            "longest_pair_seconds": max(secs), "stage_seconds_per_model": round(stage, 1),
            "overhead_per_pair_s": oh, "first_import_s": imp, "slots_per_node": slots, "rows": rows}


def _write(data: dict, out: str | None, quiet: bool = False) -> None:
    text = json.dumps(data, indent=2)
    if out:
        tmp = Path(str(out) + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, out)
    if not quiet:
        print(text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pairs")
    a.add_argument("--spec", default=str(REPO / "embedc.toml"))
    a.add_argument("--only", nargs="*", default=[], help="TARGET/PRECISION pairs (default: the whole matrix)")
    a.add_argument("--cache-dir", default=None)
    a.add_argument("-o", "--out")
    b = sub.add_parser("overhead")
    b.add_argument("-n", type=int, default=50)
    b.add_argument("-o", "--out")
    c = sub.add_parser("project")
    c.add_argument("overhead")
    c.add_argument("pairs", nargs="+", help="one or more 'pairs' outputs (merged; a stage's cost: its largest)")
    c.add_argument("--models", type=int, default=10)
    c.add_argument("--nodes", type=int, nargs="*", default=[1, 4, 16])
    c.add_argument("--slots", type=int, default=1, help="pairs at once per node (1 on a 2-core node)")
    c.add_argument("--cost", choices=["cpu_seconds", "seconds"], default="cpu_seconds",
                   help="per-pair cost: CPU seconds (a dedicated node) or the measured wall seconds")
    c.add_argument("--matrix", default=None, help="spec whose whole matrix to project (unmeasured pairs take "
                                                  "the cost of the same precision on their backend's measured target)")
    c.add_argument("-o", "--out")
    args = ap.parse_args(argv)
    if args.cmd == "pairs":
        measure_pairs(args.spec, args.only, args.out, args.cache_dir)
    elif args.cmd == "overhead":
        measure_overhead(args.out, args.n)
    else:
        runs = [json.loads(Path(f).read_text()) for f in args.pairs]
        pairs = {"pairs": [p for r in runs for p in r["pairs"]],
                 **{k: {s: max(r[k].get(s, 0) for r in runs) for s in ("export", "reference")}
                    for k in ("stages", "stages_cpu")}}
        overhead = json.loads(Path(args.overhead).read_text())
        _write(project_table(pairs, overhead, args.models, args.nodes, args.slots, args.cost, args.matrix), args.out)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
