"""The whole build on the tiny model: stage cache, manifest, gates, JUnit, atomicity."""
from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET

import pytest

from embedc.artifact import read_meta, sha256_file
from embedc.build.pipeline import build
from embedc.spec import BenchSpec, BuildSpec, CalibrationSpec, MatrixEntry, ModelSpec

SMALL = CalibrationSpec(calib_per_lang=2, eval_per_lang=4, max_length=64)


def _spec(out, **kw) -> BuildSpec:
    return BuildSpec(model=ModelSpec(name="random-tiny-xlmr"), calibration=SMALL,
                     matrix=(MatrixEntry("ort-cpu", ("fp32", "int8-dynamic")),), out=str(out), **kw)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, cached_export):
    """This module's own stage cache (its tests count and corrupt entries), seeded with the run's
    export of the tiny model: the export stage is the same, the rest is computed here."""
    import shutil

    cache = tmp_path_factory.mktemp("stage-cache")
    entry = cached_export("random-tiny-xlmr")
    shutil.copytree(entry, cache / "export" / entry.name)
    return cache


@pytest.fixture(scope="module")
def first_build(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "build"
    return build(_spec(out), cache_dir=cache_dir)


def test_build_writes_artifacts_manifest_and_reports(first_build):
    out = first_build.out
    assert [a.status for a in first_build.artifacts] == ["pass", "pass"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verdict"] == "pass" and manifest["random_weights"] is True
    for a in manifest["artifacts"]:
        folder = out / a["path"]
        for f in a["files"]:
            assert sha256_file(folder / f["path"]) == f["sha256"]
        assert a["parity"]["mean"] > 0.99 and a["gates"]["verdict"] == "pass"
    assert {"cpu_flags", "cores"} <= set(manifest["machine"])
    assert (out / "report.md").read_text().startswith("# embedc build: random-tiny-xlmr")
    assert "random weights" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert page.count("<img") == 2 and "data:image/png;base64," in page  # self-contained plots
    parity_table = page.split("<h2>Parity and size</h2>")[1].split("</table>")[0]
    assert parity_table.count("<tr class='row-pass'>") == len(manifest["artifacts"])
    assert all(a["name"] in parity_table for a in manifest["artifacts"])
    meta = read_meta(out / "ort-cpu" / "int8-dynamic")
    cal = meta["calibration"]
    assert cal["calibration"]["sha256"] != cal["evaluation"]["sha256"]
    assert set(cal["calibration"]["languages"]) == set(cal["evaluation"]["languages"])


def test_second_build_is_served_from_cache(first_build, cache_dir, tmp_path, caplog):
    caplog.set_level("INFO", logger="embedc")
    again = build(_spec(tmp_path / "again"), cache_dir=cache_dir)
    assert all(a.cached for a in again.artifacts)
    assert "export: cached" in caplog.text and "reference embeddings: cached" in caplog.text
    assert [a.meta["parity"]["mean"] for a in again.artifacts] == [a.meta["parity"]["mean"] for a in first_build.artifacts]


def test_changing_one_target_recompiles_only_that_one(first_build, cache_dir, tmp_path):
    spec = dataclasses.replace(_spec(tmp_path / "c"), matrix=(
        MatrixEntry("ort-cpu", ("fp32", "int8-dynamic"), {"int8-dynamic": {"per_channel": False}}),))
    result = build(spec, cache_dir=cache_dir)
    assert [a.cached for a in result.artifacts] == [True, False]


def test_editing_a_backends_source_recompiles_only_its_artifacts(first_build, cache_dir, tmp_path, monkeypatch):
    """A recipe fix must miss the cache: the key holds a digest of the backend's source package."""
    import shutil

    from embedc.build import keys

    real = keys.package_digest
    own_cache = tmp_path / "cache"  # a copy, so the shared cache keeps one entry per artifact
    shutil.copytree(cache_dir, own_cache)
    monkeypatch.setattr(keys, "package_digest",
                        lambda name: real(name) + ("-edited" if name == "embedc.targets.ort" else ""))
    result = build(_spec(tmp_path / "g"), cache_dir=own_cache)
    assert [a.cached for a in result.artifacts] == [False, False]
    assert [a.meta["parity"]["mean"] for a in result.artifacts] == pytest.approx(
        [a.meta["parity"]["mean"] for a in first_build.artifacts], abs=1e-6)


def test_package_digest_follows_the_source_files(tmp_path, monkeypatch):
    import sys

    from embedc.build.keys import package_digest

    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "recipe.py").write_text("ALPHA = 0.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = package_digest("fakepkg")
    (pkg / "recipe.py").write_text("ALPHA = 0.6\n")  # a recipe fix in a submodule
    assert package_digest("fakepkg") != before
    assert package_digest("embedc.targets.ort") != package_digest("embedc.targets.openvino")
    sys.modules.pop("fakepkg", None)


def test_code_digest_follows_the_source_files():
    from embedc.build.cache import code_digest

    assert code_digest("targets/ort/*.py") != code_digest("targets/openvino/*.py")
    with pytest.raises(ValueError, match="no embedc source"):
        code_digest("targets/no_such_backend*.py")


def test_build_bench_figures_go_into_manifest_and_reports(first_build, cache_dir, tmp_path):
    spec = dataclasses.replace(_spec(tmp_path / "h"), matrix=(MatrixEntry("ort-cpu", ("int8-dynamic",)),),
                               bench=BenchSpec(enabled=True, threads=1, batch_size=8, repeats=1))
    result = build(spec, cache_dir=cache_dir)
    manifest = json.loads((result.out / "manifest.json").read_text())
    rows = {r["name"]: r for r in manifest["bench"]["rows"]}
    assert set(rows) == {"torch-fp32", "ort-cpu/int8-dynamic"}
    assert rows["torch-fp32"]["speedup"] == pytest.approx(1.0)
    art = rows["ort-cpu/int8-dynamic"]
    assert art["throughput"] > 0 and art["latency_ms_p50"] > 0 and art["peak_rss_mb"] > 0
    assert art["size_mb"] < rows["torch-fp32"]["size_mb"]
    assert "## Benchmark" in (result.out / "report.md").read_text()
    assert "ort-cpu/int8-dynamic" in (result.out / "report.md").read_text().split("## Benchmark")[1]
    page = (result.out / "report.html").read_text()
    assert "<h2>Benchmark</h2>" in page
    assert page.split("<h2>Benchmark</h2>")[1].count("<tr class=''>") == 2  # torch + the artifact


def test_corrupted_cache_entry_is_rebuilt(first_build, cache_dir, tmp_path):
    entries = [p for p in (cache_dir / "artifact").iterdir()
               if json.loads((p / "entry.json").read_text())["artifact"] == "ort-cpu/fp32"]
    assert len(entries) == 1
    victim = entries[0] / "model.onnx"
    with open(victim, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00garbage\x00")
    result = build(_spec(tmp_path / "d"), cache_dir=cache_dir)
    assert [a.cached for a in result.artifacts] == [False, True]  # fp32 rebuilt, int8 reused
    assert all(a.status == "pass" for a in result.artifacts)


def test_failing_gate_writes_reports_and_exact_junit(first_build, cache_dir, tmp_path):
    from embedc.reports.junit import write_junit

    spec = _spec(tmp_path / "e", gates={"int8-dynamic": "min>=1.0"})
    result = build(spec, cache_dir=cache_dir)
    assert [a.name for a in result.failed_gates] == ["ort-cpu/int8-dynamic"]
    assert not (result.out / "ort-cpu" / "int8-dynamic").exists()   # no artifact for the failed pair
    assert (result.out / "ort-cpu" / "fp32" / "model.onnx").is_file()
    assert json.loads((result.out / "manifest.json").read_text())["verdict"] == "fail"
    assert "min>=1.0" in (result.out / "report.md").read_text()
    assert "<tr class='row-fail'><td>ort-cpu/int8-dynamic</td>" in (result.out / "report.html").read_text()
    write_junit(result, tmp_path / "junit.xml")
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    failed = [(c.get("classname"), c.get("name")) for c in suite if c.find("failure") is not None]
    assert failed == [("embedc.ort-cpu.int8-dynamic", "min>=1.0")]
    assert int(suite.get("failures")) == 1 and int(suite.get("tests")) == len(list(suite))


def test_per_model_gates_apply_to_their_model_only(first_build, cache_dir, tmp_path):
    strict = {"int8": "min>=1.0"}
    mine = build(_spec(tmp_path / "m1", model_gates={"random-tiny-xlmr": strict}), cache_dir=cache_dir)
    assert [a.name for a in mine.failed_gates] == ["ort-cpu/int8-dynamic"]
    failed = [o for o in mine.failed_gates[0].gates if o.failed]
    assert [(o.gate.metric, o.gate.threshold) for o in failed] == [("min", 1.0)]
    other = build(_spec(tmp_path / "m2", model_gates={"all-minilm-l6-v2": strict}), cache_dir=cache_dir)
    assert not other.failed_gates
    every = build(_spec(tmp_path / "m3", model_gates={"random-tiny-xlmr": {"*": "min>=1.0"}}), cache_dir=cache_dir)
    assert [a.name for a in every.failed_gates] == ["ort-cpu/int8-dynamic"]  # fp32 min rounds to 1.0


def test_interrupted_build_keeps_previous_build(first_build, cache_dir, tmp_path, monkeypatch):
    out = tmp_path / "f"
    build(_spec(out), cache_dir=cache_dir)
    before = (out / "manifest.json").read_text()
    from embedc.build import pipeline

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "copy_tree", interrupted)  # dies while assembling the new build
    with pytest.raises(KeyboardInterrupt):
        build(_spec(out), cache_dir=cache_dir, force=True)
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no staging folder left


def test_runtime_load_reproduces_recorded_parity(first_build, cache_dir):
    from helpers import assert_load_reproduces_parity

    for a in first_build.artifacts:
        assert_load_reproduces_parity(first_build.out / a.path, cache_dir)
