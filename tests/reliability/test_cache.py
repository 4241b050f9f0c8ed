"""Defects 3, 4 and 7: cache entries are read-only to builds (scratch files
live in the build's temp folder), hold exactly their listed files, and a
malformed entry.json or an empty file list is rebuilt; a full disk is one
line and leaves nothing half-written."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rel_helpers import (TOY_CLI, build_args, cache_problems, cli_env, error_lines, hidden_temps, rel_spec,
                         tree_digest)
from toy import FakeBackend

from embedc.build.pipeline import build
from embedc.cli import cli


def entries(cache, stage):
    return [p for p in (cache / stage).iterdir() if not p.name.startswith(".")]


def test_activation_capture_writes_nothing_beside_the_cached_reference(toy, corpus, tmp_path, monkeypatch):
    """int8-static / int4 / the probe backend capture activations of the cached export: the probe
    model goes to the build's scratch folder, never into the cache entry other builds read."""
    from embedc.onnxkit import activations

    cache = tmp_path / "stages"
    seen = []
    real = activations.cpu_session

    def spy(path, *a, **k):
        seen.append(Path(path))
        assert not [f for e in entries(cache, "export") for f in e.iterdir() if f.name.startswith("capture")]
        return real(path, *a, **k)

    monkeypatch.setattr(activations, "cpu_session", spy)
    result = build(rel_spec(toy, corpus, tmp_path / "out", ("int8-probe",), target="probe-cpu",
                            gates={"*": "mean>=0.5"}), cache_dir=cache)
    assert result.artifacts[0].status == "pass", result.artifacts[0].error
    assert seen and all(cache not in p.parents for p in seen)
    assert cache_problems(cache) == []
    assert sorted(p.name for p in (tmp_path / "out" / "export").iterdir()) == sorted(
        p.name for p in entries(cache, "export")[0].iterdir() if p.name != "entry.json")


def test_extra_file_in_a_cache_entry_is_noticed_and_rebuilt(toy, corpus, tmp_path):
    cache = tmp_path / "stages"
    build(rel_spec(toy, corpus, tmp_path / "a"), cache_dir=cache)
    export = entries(cache, "export")[0]
    (export / "stats-probe.onnx").write_bytes(b"half-written temp model from an interrupted calibration")
    result = build(rel_spec(toy, corpus, tmp_path / "b"), cache_dir=cache)
    assert result.manifest["verdict"] == "pass"
    assert not (tmp_path / "b" / "export" / "stats-probe.onnx").exists()
    assert not (export / "stats-probe.onnx").exists() and cache_problems(cache) == []


BAD_ENTRY_JSON = ([], ["files"], {"files": {"x": 1}}, {"files": [{"path": "model.onnx"}]}, "text")


def test_wrong_shape_entry_json_is_removed_and_rebuilt(toy, corpus, tmp_path):
    cache = tmp_path / "stages"
    build(rel_spec(toy, corpus, tmp_path / "a"), cache_dir=cache)
    for i, bad in enumerate(BAD_ENTRY_JSON):
        art = entries(cache, "artifact")[0]
        (art / "entry.json").write_text(json.dumps(bad))
        FakeBackend.compiled.clear()
        result = build(rel_spec(toy, corpus, tmp_path / f"b{i}"), cache_dir=cache)
        assert result.manifest["verdict"] == "pass" and FakeBackend.compiled == ["fake-cpu/fp32"], bad
        assert cache_problems(cache) == []


def test_empty_file_list_does_not_ship_a_corrupted_model(toy, corpus, tmp_path):
    cache = tmp_path / "stages"
    build(rel_spec(toy, corpus, tmp_path / "a"), cache_dir=cache)
    art = entries(cache, "artifact")[0]
    meta = json.loads((art / "entry.json").read_text())
    (art / "entry.json").write_text(json.dumps({**meta, "files": []}))
    model = art / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    FakeBackend.compiled.clear()
    result = build(rel_spec(toy, corpus, tmp_path / "b"), cache_dir=cache)
    assert FakeBackend.compiled == ["fake-cpu/fp32"] and not result.artifacts[0].cached
    assert (tmp_path / "b" / "fake-cpu" / "fp32" / "model.onnx").read_bytes() == \
        (tmp_path / "a" / "fake-cpu" / "fp32" / "model.onnx").read_bytes()


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_on_the_output_is_one_line_and_keeps_the_previous_build(previous, toy, corpus, monkeypatch):
    from embedc.build import pipeline

    before = tree_digest(previous)
    monkeypatch.setattr(pipeline, "copy_tree", _enospc)
    r = CliRunner().invoke(cli, ["-q", *build_args(toy, corpus, previous, "-t", "fake-cpu", "-p", "fp32",
                                                   "--force")])
    assert r.exit_code == 1, r.output
    lines = error_lines(r.output)
    assert len(lines) == 1 and "no space left on" in lines[0] and str(previous) in lines[0], r.output
    assert tree_digest(previous) == before and hidden_temps(previous.parent) == []


@pytest.mark.parametrize("stage", ["export", "reference"])
def test_disk_full_in_the_cache_is_one_line_and_leaves_no_entry(toy, corpus, tmp_path, monkeypatch, stage):
    from embedc.build import stages

    if stage == "export":
        from toy import ToyFamily

        monkeypatch.setattr(ToyFamily, "export_onnx", _enospc)
    else:
        monkeypatch.setattr(stages.np, "save", _enospc)
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMBEDC_CACHE", str(cache))
    r = CliRunner().invoke(cli, ["-q", *build_args(toy, corpus, tmp_path / "out", "-t", "fake-cpu", "-p", "fp32")])
    assert r.exit_code == 1, r.output
    lines = error_lines(r.output)
    assert len(lines) == 1 and "no space left on" in lines[0] and "transformers" not in lines[0], r.output
    assert not (cache / "stages" / stage).exists() or not any((cache / "stages" / stage).iterdir())
    assert cache_problems(cache / "stages") == [] and not (tmp_path / "out").exists()


def test_a_build_served_from_the_cache_does_not_import_torch(good_build, toy, corpus, shared_cache, tmp_path):
    """Export and reference come from the cache, so torch has nothing to do: importing it anyway took
    1.3 s of a 2 s cached toy build (and transformers' logging setup another 0.7 s)."""
    import subprocess
    import sys

    args = build_args(toy, corpus, tmp_path / "out", "-t", "fake-cpu", "-p", "fp32")
    probe = (f"import runpy, sys\nsys.argv = ['embedc', '-q', *{[str(a) for a in args]!r}]\n"
             f"try:\n    runpy.run_path({str(TOY_CLI)!r}, run_name='__main__')\n"
             "except SystemExit as exit:\n    print('exit', exit.code, 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", probe], env=cli_env(shared_cache), capture_output=True, text=True,
                       timeout=300)
    assert "1 of 1 artifacts served from the stage cache" in r.stdout, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "exit 0 False", r.stdout + r.stderr
