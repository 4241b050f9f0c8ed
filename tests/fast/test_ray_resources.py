"""The executor seam without a cluster: what each target asks of a node, what a
node offers, the [executor] spec table, the CLI flags and the stage cache under
concurrent writers. The Ray cluster tests are tests/integration/test_ray_executor.py."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from embedc.build.resources import PRESENCE, eligible, node_resources, request_for, unmet
from embedc.cli import cli
from embedc.errors import SpecError
from embedc.spec import BuildSpec, ExecutorSpec, load_spec_file, validate
from embedc.targets.registry import all_targets, get_target

VNNI_X86 = node_resources({"avx2", "avx512f", "avx512_vnni"}, "x86_64", [], [])
AVX2_X86 = node_resources({"avx2", "fma"}, "x86_64", [], [])
ARM = node_resources({"asimd", "asimddp"}, "aarch64", [], [])
H100 = {**AVX2_X86, **node_resources(set(), "x86_64", ["9.0"], []), "GPU": 1}
INTEL = node_resources({"avx2", "avx_vnni"}, "x86_64", [], ["GPU.0", "NPU"])


def offered(custom: dict, cpus=2, memory=8 * 2**30) -> dict:
    return {"CPU": cpus, "memory": memory, **custom}


@pytest.mark.parametrize("target, resources, gpus", [
    ("ort-cpu", {}, 0), ("ort-cpu-avx2", {"cpu_avx2": PRESENCE}, 0),
    ("ort-cpu-avx512-vnni", {"cpu_vnni": PRESENCE}, 0), ("ort-cpu-arm64", {"cpu_arm64": PRESENCE}, 0),
    ("openvino-cpu", {}, 0), ("openvino-gpu", {"intel_gpu": 1.0}, 0), ("openvino-npu", {"intel_npu": 1.0}, 0),
    ("tensorrt-sm80", {"gpu_sm80": PRESENCE}, 1), ("tensorrt-sm90", {"gpu_sm90": PRESENCE}, 1),
])
def test_request_from_the_target(target, resources, gpus):
    req = request_for(get_target(target), "fp32" if not target.startswith("tensorrt") else "fp16")
    assert req.resources == resources and req.num_gpus == gpus and req.num_cpus == 1 and req.memory == 0
    assert (req.needs != ()) == bool(resources)
    opts = req.ray_options()
    assert opts["num_cpus"] == 1 and opts.get("resources", {}) == resources and opts.get("num_gpus", 0) == gpus
    anywhere = request_for(get_target(target), "fp16", hardware="any")
    assert anywhere.resources == {} and anywhere.num_gpus == 0


def test_memory_grows_with_the_model_and_cpus_are_configurable():
    small, big = (request_for(get_target("ort-cpu"), "fp32", model_bytes=b, cpus=2) for b in (10**8, 10**10))
    assert 2**30 < small.memory < big.memory and big.memory >= 4 * 10**10 and small.num_cpus == 2
    assert "memory" in small.describe() and "GiB" in small.describe()


def test_node_resources_from_cpu_flags_and_devices():
    assert VNNI_X86 == {"cpu_x86_64": 1.0, "cpu_avx2": 1.0, "cpu_avx512_vnni": 1.0, "cpu_vnni": 1.0}
    assert AVX2_X86 == {"cpu_x86_64": 1.0, "cpu_avx2": 1.0}
    assert ARM == {"cpu_arm64": 1.0}
    assert INTEL["cpu_avx_vnni"] == 1.0 and INTEL["cpu_vnni"] == 1.0
    assert INTEL["intel_gpu"] == 1.0 and INTEL["intel_npu"] == 1.0
    assert node_resources(set(), "x86_64", ["9.0", "9.0"], [])["gpu_sm90"] == 1.0


def test_every_target_runs_only_where_its_hardware_is():
    nodes = {"vnni": offered(VNNI_X86), "avx2": offered(AVX2_X86), "arm": offered(ARM),
             "h100": offered(H100), "intel": offered(INTEL)}
    expect = {"ort-cpu": set(nodes), "openvino-cpu": set(nodes), "ort-cpu-avx2": {"vnni", "avx2", "h100", "intel"},
              "ort-cpu-avx512-vnni": {"vnni", "intel"}, "ort-cpu-arm64": {"arm"}, "openvino-gpu": {"intel"},
              "openvino-npu": {"intel"}, "tensorrt-sm90": {"h100"}, "tensorrt-sm80": set(), "tensorrt-sm89": set()}
    for name, where in expect.items():
        t = get_target(name)
        assert set(eligible(request_for(t, t.precisions[0]), nodes)) == where, name
    assert set(expect) <= set(all_targets())
    assert unmet(request_for(get_target("tensorrt-sm90"), "fp16"), offered(AVX2_X86)) == ["GPU", "gpu_sm90"]
    huge = request_for(get_target("ort-cpu"), "fp32", model_bytes=10**10)
    assert unmet(huge, offered(VNNI_X86)) == ["memory"]


def test_node_resources_command_prints_ray_start_json():
    r = CliRunner().invoke(cli, ["-q", "node-resources", "--no-devices"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert all(isinstance(v, float) and v > 0 for v in data.values())
    assert set(data) <= {"cpu_x86_64", "cpu_avx2", "cpu_avx512_vnni", "cpu_avx_vnni", "cpu_amx_int8", "cpu_vnni",
                         "cpu_arm64"}
    assert CliRunner().invoke(cli, ["node-resources", "--help"]).exit_code == 0


@pytest.mark.parametrize("table, match", [
    ('kind = "slurm"', "executor.kind"), ('hardware = "maybe"', "executor.hardware"),
    ("pair_timeout_s = -1", "pair_timeout_s"), ("schedule_timeout_s = 0", "schedule_timeout_s"),
    ("nodes = 3", "unknown spec key 'executor.nodes'"), ("max_retries = 1.5", "executor.max_retries"),
    ('address = "10.0.0.1:6379"', "executor.kind is 'local'"),
])
def test_executor_table_errors_name_the_key(tmp_path, table, match):
    f = tmp_path / "s.toml"
    f.write_text(f"[executor]\n{table}\n")
    with pytest.raises(SpecError, match=match):
        load_spec_file(f)


def test_executor_table_parses_and_defaults_to_local(tmp_path):
    assert BuildSpec().executor == ExecutorSpec() and ExecutorSpec().kind == "local"
    f = tmp_path / "s.toml"
    f.write_text('[executor]\nkind = "ray"\naddress = "10.0.0.1:6379"\ncache = "/shared/embedc"\n'
                 'pair_timeout_s = 3600\nmax_retries = 1\nhardware = "any"\n')
    e = load_spec_file(f).executor
    assert (e.kind, e.address, e.cache, e.pair_timeout_s, e.max_retries, e.hardware) == (
        "ray", "10.0.0.1:6379", "/shared/embedc", 3600, 1, "any")
    assert validate(BuildSpec(executor=e)).to_dict()["executor"]["cache"] == "/shared/embedc"


def test_missing_ray_is_one_line_with_the_install_hint_before_any_work(toy_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" raises ImportError
    out = tmp_path / "b"
    r = CliRunner().invoke(cli, ["-q", "build", "-m", toy_model, "-o", out, "-t", "fake-cpu", "-p", "fp32",
                                 "--executor", "ray"])
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert "pip install 'embedc[ray]'" in lines[0] and not out.exists()


def test_local_executor_never_imports_ray():
    code = ("import sys; from embedc.build.executor import make_executor; from embedc.spec import ExecutorSpec; "
            "e = make_executor(ExecutorSpec()); print(e.name, 'ray' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["local", "False"]


def test_stage_cache_same_key_from_concurrent_writers(tmp_path, caplog, monkeypatch):
    """Where the per-key lock does not hold (no fcntl, or a shared file system without locks),
    writers may fill the same entry at once: every writer gets an intact entry, a reader never sees
    a partial one nor removes a good one, no temp folder is left."""
    import contextlib

    from embedc import fsutil
    from embedc.build.cache import StageCache

    monkeypatch.setattr(fsutil, "folder_lock", lambda folder: contextlib.nullcontext())  # as without fcntl
    cache = StageCache(tmp_path / "stages")
    writers, rounds = 6, 4
    results, errors, seen = [], [], []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            for r in range(rounds):
                hit = cache.lookup("artifact", f"{r:032d}")
                if hit is not None:
                    seen.append((hit / "model.bin").stat().st_size)

    def writer(barrier, key):
        def fill(tmp):
            (tmp / "model.bin").write_bytes(b"x" * 100_000)
            barrier.wait()  # every writer renames at about the same moment
        try:
            results.append(cache.store("artifact", key, {}, fill))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    for r in range(rounds):
        barrier = threading.Barrier(writers)
        threads = [threading.Thread(target=writer, args=(barrier, f"{r:032d}")) for _ in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors and len(results) == writers * rounds
    assert all(cache.lookup("artifact", f"{r:032d}") is not None for r in range(rounds))
    assert set(seen) <= {100_000} and "corrupt" not in caplog.text
    assert sorted(p.name for p in (tmp_path / "stages" / "artifact").iterdir()) == [f"{r:032d}" for r in range(rounds)]


def test_dry_run_shows_each_pairs_resources_with_the_ray_executor(toy_model, tmp_path):
    r = CliRunner().invoke(cli, ["-q", "build", "-m", toy_model, "-o", tmp_path / "b", "-t", "fake-cpu", "-t",
                                 "fake-gpu", "-p", "fp32", "--executor", "ray", "--dry-run"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    assert plan["spec"]["executor"]["kind"] == "ray"
    res = {e["stage"]: e.get("resources") for e in plan["plan"] if e["stage"].startswith("compile")}
    assert res == {"compile fake-cpu/fp32": "CPU 1", "compile fake-gpu/fp32": "CPU 1, intel_gpu 1"}


def test_scaling_projection_is_a_list_schedule():
    """benchmarks/ray_scaling.py: pairs on N workers, a model's pairs ready after its driver stages."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "ray_scaling.py"
    spec = importlib.util.spec_from_file_location("ray_scaling", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.project([10, 10, 10], 0, 1, 1) == 30 and mod.project([10, 10, 10], 0, 1, 4) == 10
    assert mod.project([10, 10, 10], 5, 2, 16) == 20                  # model 2's pairs wait for its export
    assert mod.project([10], 0, 1, 1, overhead_s=0.5, first_import_s=2) == 12.5
    assert mod.project([7, 5, 4, 3, 1], 0, 1, 2) == 10                # longest first: 7+3 | 5+4+1


def test_a_node_that_cannot_see_the_stage_cache_says_so_in_one_line(tmp_path):
    from embedc.build.artifact_job import ArtifactJob
    from embedc.build.ray_executor import localize
    from embedc.errors import ArtifactError

    missing = tmp_path / "not-mounted"
    job = ArtifactJob(target=get_target("ort-cpu"), precision="fp32", options={}, key="k", cache_root=str(missing),
                      work_root=str(missing / "work"), export_dir=str(missing / "export" / "e"), ref_meta={},
                      calibration=(), length_stats={}, eval_texts=(), eval_ids=(), eval_langs=(), eval_kinds=(),
                      eval_lengths=(), reference_file=str(missing / "reference" / "r" / "embeddings.npy"),
                      eval_max_length=32, calib_max_length=32, summary={}, style={}, source={},
                      source_dir=str(missing))
    with pytest.raises(ArtifactError) as info:
        localize(job, {"hostname": "worker-7"})
    assert "not visible on node worker-7" in str(info.value) and "[executor] cache" in str(info.value)
    assert "\n" not in str(info.value)


def test_ray_address_precedence(monkeypatch):
    """--ray-address, then the spec's address, then RAY_ADDRESS (no cluster is contacted here)."""
    pytest.importorskip("ray")
    from embedc.build.ray_executor import RayExecutor

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    assert RayExecutor(ExecutorSpec(kind="ray")).address == "10.0.0.9:6379"
    assert RayExecutor(ExecutorSpec(kind="ray", address="10.0.0.1:6379")).address == "10.0.0.1:6379"
    assert RayExecutor(ExecutorSpec(kind="ray", address="10.0.0.1:6379"), address="h:1").address == "h:1"
