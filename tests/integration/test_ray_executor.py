"""The matrix on a local Ray cluster (this machine only): a head node, and a worker node
advertising ``cpu_avx512_vnni``/``cpu_vnni`` as a VNNI machine's
``embedc node-resources`` would (the head advertises no VNNI). One cluster and
one local build per module; every build runs on the tiny model.

- the Ray build equals the local build: byte-identical files, same parity and
  manifest entries, each pair run on a node offering what its target needs;
- a pair no node can run fails in one "unschedulable" line (CLI exit 1);
- a worker killed mid-build: its pairs run again on an eligible node or fail
  in one line, the build folder is consistent and replaced only when whole.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from embedc.artifact import read_meta, sha256_file  # noqa: E402
from embedc.build.pipeline import build  # noqa: E402
from embedc.build.ray_executor import LATE, RayExecutor  # noqa: E402
from embedc.build.resources import request_for, unmet  # noqa: E402
from embedc.spec import BuildSpec, CalibrationSpec, ExecutorSpec, MatrixEntry, ModelSpec  # noqa: E402
from embedc.targets.registry import get_target  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SMALL = CalibrationSpec(calib_per_lang=1, eval_per_lang=2, max_length=32, eval_max_length=32, long_per_lang=0)
MATRIX = (MatrixEntry("ort-cpu", ("fp32", "int8-dynamic")), MatrixEntry("ort-cpu-avx512-vnni", ("fp32", "int8-dynamic")))
VNNI_NODE = {"cpu_x86_64": 1.0, "cpu_avx2": 1.0, "cpu_avx512_vnni": 1.0, "cpu_vnni": 1.0}
PLAIN_NODE = {"cpu_x86_64": 1.0, "cpu_avx2": 1.0}
SMALL_NODE = dict(num_cpus=1, object_store_memory=80 * 2**20)


def _spec(out, matrix=MATRIX, **executor) -> BuildSpec:
    ex = ExecutorSpec(kind="ray", **executor) if executor else ExecutorSpec()
    return BuildSpec(model=ModelSpec(name="random-tiny-xlmr"), calibration=SMALL, matrix=matrix, out=str(out),
                     executor=ex)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *([old] if old else [])])  # workers import this tree
    t0 = time.perf_counter()
    c = Cluster(initialize_head=True, head_node_args={
        **SMALL_NODE, "include_dashboard": False, "resources": PLAIN_NODE,
        # notice a killed node within about a second, not 30
        "_system_config": {"health_check_period_ms": 200, "health_check_failure_threshold": 3,
                           "health_check_initial_delay_ms": 0}})
    try:
        worker = c.add_node(**SMALL_NODE, resources=VNNI_NODE)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False, include_dashboard=False)
        print(f"\ncluster up in {time.perf_counter() - t0:.1f} s")
        yield c, worker
    finally:
        ray.shutdown()
        c.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _node_totals() -> dict:
    return {n["NodeID"]: n["Resources"] for n in ray.nodes()}


@pytest.fixture(scope="module")
def local_build(tmp_path_factory, cached_export):
    root = tmp_path_factory.mktemp("ray-local")
    cache = root / "stages"
    entry = cached_export("random-tiny-xlmr")  # the run's export of the tiny model; the rest is computed here
    shutil.copytree(entry, cache / "export" / entry.name)
    t0 = time.perf_counter()
    result = build(_spec(root / "local"), cache_dir=cache)
    print(f"\nlocal build (reference, 4 pairs) {time.perf_counter() - t0:.1f} s")
    assert all(a.status == "pass" for a in result.artifacts)
    return result, cache


def _seeded_cache(local_cache: Path, folder: Path) -> Path:
    """A cache holding the local build's export and reference only: the Ray build compiles every pair."""
    for stage in ("export", "reference"):
        shutil.copytree(local_cache / stage, folder / stage)
    return folder


def _strip(obj):
    """A manifest/meta value without timings and where-it-ran facts."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items()
                if "seconds" not in k and k not in ("node", "built_on", "cached", "path_hint")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def test_ray_build_equals_local_build_and_runs_each_pair_where_its_hardware_is(cluster, local_build, tmp_path):
    c, worker = cluster
    local, local_cache = local_build
    cache = _seeded_cache(local_cache, tmp_path / "stages")
    events = []
    ex = RayExecutor(ExecutorSpec(kind="ray", address=c.address), on_event=lambda *e: events.append(e))
    t0 = time.perf_counter()
    result = build(_spec(tmp_path / "ray", address=c.address), cache_dir=cache, executor=ex)
    print(f"\nray build (4 pairs compiled on 2 nodes) {time.perf_counter() - t0:.1f} s")

    assert [(a.name, a.status, a.cached) for a in result.artifacts] == [(a.name, "pass", False) for a in local.artifacts]
    totals = _node_totals()
    for a in result.artifacts:
        node = a.node
        need = request_for(get_target(a.target), a.precision)
        assert node["node_id"] in totals and unmet(need, totals[node["node_id"]]) == [], a.name
        if a.target == "ort-cpu-avx512-vnni":
            assert node["node_id"] == worker.node_id and node["resources"]["cpu_vnni"] == 1.0
        seen = [e[0] for e in events if e[1] == a.name]
        assert seen == ["scheduled", "started", "finished"], (a.name, seen)
        assert read_meta(result.out / a.path)["built_on"]["node_id"] == node["node_id"]

    lm, rm = local.manifest, result.manifest
    assert [e["node"]["node_id"] for e in rm["artifacts"]] == [a.node["node_id"] for a in result.artifacts]
    for le, re_ in zip(lm["artifacts"], rm["artifacts"]):
        assert _strip(le) == _strip(re_), le["name"]
        assert le["files"] == re_["files"]       # every file but embedc.json, by sha256: byte-identical
        for f in le["model_files"]:
            assert sha256_file(local.out / le["path"] / f) == sha256_file(result.out / re_["path"] / f)
        lmeta, rmeta = read_meta(local.out / le["path"]), read_meta(result.out / re_["path"])
        assert lmeta["parity"] == rmeta["parity"] and _strip(lmeta) == _strip(rmeta)
    # the nodes recomputed each pair's cache key from their own facts: the same as this machine's
    assert sorted(p.name for p in (cache / "artifact").iterdir() if not p.name.startswith(".")) == \
        sorted(p.name for p in (local_cache / "artifact").iterdir() if not p.name.startswith("."))
    assert (result.out / "report.md").is_file() and (result.out / "report.html").is_file()


def test_unschedulable_pair_is_one_line_and_the_rest_builds(cluster, local_build, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from embedc.cli import cli

    c, _ = cluster
    _, local_cache = local_build
    monkeypatch.setenv("EMBEDC_CACHE", str(local_cache.parent))   # stages/ under it: everything cached
    out = tmp_path / "b"
    spec = tmp_path / "spec.toml"
    spec.write_text('[model]\nname = "random-tiny-xlmr"\n[calibration]\ncalib_per_lang = 1\neval_per_lang = 2\n'
                    'max_length = 32\neval_max_length = 32\nlong_per_lang = 0\n'
                    '[[matrix]]\ntarget = "ort-cpu"\nprecisions = ["fp32"]\n'
                    '[[matrix]]\ntarget = "ort-cpu-arm64"\nprecisions = ["fp32"]\n'
                    '[executor]\nkind = "ray"\nschedule_timeout_s = 5\n')
    t0 = time.perf_counter()
    r = CliRunner().invoke(cli, ["-q", "build", "--spec", spec, "-o", out, "--ray-address", c.address, "--json"],
                           catch_exceptions=False)
    print(f"\nunschedulable build {time.perf_counter() - t0:.1f} s")
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 1 and len(errors) == 1, r.output
    assert "ort-cpu-arm64/fp32: unschedulable" in errors[0] and "cpu_arm64" in errors[0]
    failed = out.parent / "b.failed"   # a failing build reports beside <out> and never creates <out>
    assert not out.exists()
    manifest = json.loads((failed / "manifest.json").read_text())
    by_name = {a["name"]: a for a in manifest["artifacts"]}
    assert by_name["ort-cpu/fp32"]["status"] == "pass" and by_name["ort-cpu/fp32"]["cached"]
    arm = by_name["ort-cpu-arm64/fp32"]
    assert arm["status"] == "error" and arm["error"].startswith("unschedulable") and "\n" not in arm["error"]
    assert not (failed / "ort-cpu-arm64").exists()


def test_killed_worker_pairs_rerun_elsewhere_or_fail_in_one_line(cluster, local_build, tmp_path):
    """Runs last: it removes the module's worker node."""
    c, worker = cluster
    local, local_cache = local_build
    cache = _seeded_cache(local_cache, tmp_path / "stages")
    out = tmp_path / "build"
    shutil.copytree(local.out, out)                       # a previous build in the output folder
    before = (out / "manifest.json").read_text()
    killed, seen_at_kill = [], []

    def on_event(event, name, node, detail=""):
        if event == "started" and node and node["node_id"] == worker.node_id and not killed and LATE not in detail:
            killed.append(name)
            seen_at_kill.append((out / "manifest.json").read_text())
            c.remove_node(worker, allow_graceful=False)   # SIGKILL: the raylet and its workers

    # int8-static pairs only (calibration, SmoothQuant, parity: ~2 s each on a 1-CPU node): an fp32 or
    # int8-dynamic pair could finish on the worker between its start report and the kill, and then
    # rightly pass there (seen once in CI), which is not what this test is about
    matrix = (MatrixEntry("ort-cpu", ("int8-static",)), MatrixEntry("ort-cpu-avx2", ("int8-static",)),
              MatrixEntry("ort-cpu-avx512-vnni", ("int8-static",)))
    settings = ExecutorSpec(kind="ray", address=c.address, schedule_timeout_s=2, max_retries=2)
    t0 = time.perf_counter()
    result = build(_spec(out, matrix=matrix, address=c.address, schedule_timeout_s=2), cache_dir=cache, force=True,
                   executor=RayExecutor(settings, on_event=on_event))
    print(f"\nbuild with a killed worker {time.perf_counter() - t0:.1f} s; killed during {killed}")

    assert killed and seen_at_kill == [before]            # the previous build was intact while this one ran
    head = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    by_name = {a.name: a for a in result.artifacts}
    vnni = by_name["ort-cpu-avx512-vnni/int8-static"]
    assert vnni.status == "error" and "\n" not in vnni.error
    assert vnni.error.startswith(("unschedulable", "failed on node")), vnni.error
    for name in ("ort-cpu/int8-static", "ort-cpu-avx2/int8-static"):
        a = by_name[name]
        assert a.status == "pass" and a.node["node_id"] in head, (name, a.error)
    if not killed[0].startswith("ort-cpu-avx512-vnni/"):
        assert by_name[killed[0]].node["node_id"] != worker.node_id   # run again on the head
    # the gathered build is whole and consistent: every kept file matches its manifest hash, no half-written
    # pair; as a failed build it goes to <out>.failed and the previous build stays untouched
    failed = out.parent / "build.failed"
    assert (out / "manifest.json").read_text() == before
    manifest = json.loads((failed / "manifest.json").read_text())
    assert manifest["verdict"] == "error" and len(manifest["artifacts"]) == 3
    for entry in manifest["artifacts"]:
        if entry["status"] == "pass":
            for f in entry["files"]:
                assert sha256_file(failed / entry["path"] / f["path"]) == f["sha256"]
        else:
            assert entry["path"] is None and not (failed / entry["name"]).exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["build", "build.failed", "stages"]   # no temp folders
