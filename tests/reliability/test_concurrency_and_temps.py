"""Defects 3 and 6: builds of different specs sharing one cache at once all
pass, with the artifacts serial builds make; temp folders of dead processes
are removed by the next build (live ones are left alone); the swap into
place never leaves a moment without the output folder."""
from __future__ import annotations

import json
import os
import threading

from rel_helpers import LENIENT, build_args, cache_problems, hidden_temps, rel_spec, run_cli

from embedc.build.pipeline import build

SPECS = {  # name -> (cli args, in-process spec kwargs)
    "fp32": (["-t", "fake-cpu", "-p", "fp32"], {}),
    "noisy": (["-t", "fake-cpu", "-p", "int8-noisy", "--option", "int8-noisy.noise=0.1", "--gate", LENIENT],
              {"precisions": ("int8-noisy",), "options": {"int8-noisy": {"noise": 0.1}}, "gates": {"*": LENIENT}}),
    "probe": (["-t", "probe-cpu", "-p", "int8-probe", "--gate", LENIENT],
              {"target": "probe-cpu", "precisions": ("int8-probe",), "gates": {"*": LENIENT}}),
    "probe-coarse": (["-t", "probe-cpu", "-p", "int8-probe", "--option", "int8-probe.step=0.1", "--gate", LENIENT],
                     {"target": "probe-cpu", "precisions": ("int8-probe",), "options": {"int8-probe": {"step": 0.1}},
                      "gates": {"*": LENIENT}}),
}


def artifact_files(out):
    manifest = json.loads((out / "manifest.json").read_text())
    return {a["name"]: ({f["path"]: f["sha256"] for f in a["files"]}, a["parity"]["mean"])
            for a in manifest["artifacts"]}


def test_four_builds_sharing_one_cache_at_once(toy, corpus, tmp_path):
    cache = tmp_path / "shared"
    procs = {name: run_cli(build_args(toy, corpus, tmp_path / name, *args), cache=cache, wait=False)
             for name, (args, _) in SPECS.items()}
    outputs = {name: p.communicate(timeout=300)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, (name, outputs[name])
    assert cache_problems(cache / "stages") == []
    assert sorted(os.listdir(tmp_path)) == sorted([*SPECS, "shared"])   # no temp folders left
    serial_cache = tmp_path.parent / (tmp_path.name + "-serial")
    for name, (_, kw) in SPECS.items():
        serial = serial_cache / name
        build(rel_spec(toy, corpus, serial, **kw), cache_dir=serial_cache / "stages")
        assert artifact_files(tmp_path / name) == artifact_files(serial), name


def test_stale_temp_folders_of_dead_processes_are_removed(previous, toy, corpus, tmp_path, shared_cache):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    parent = previous.parent
    stale = [parent / f".build.tmp-{dead}-abc", parent / f".build.work-{dead}-def",
             parent / f".build.failed.tmp-{dead}-x1"]
    live = parent / f".build.tmp-{os.getpid()}-live"           # a running build's: never touched
    cache_stale = shared_cache / "stages" / "artifact" / f".0123abcd.tmp-{dead}-ghi"
    for d in (*stale, live, cache_stale):
        d.mkdir(parents=True)
        (d / "model.onnx").write_bytes(b"x" * 1000)
    result = build(rel_spec(toy, corpus, previous), cache_dir=shared_cache / "stages", force=True)
    assert result.manifest["verdict"] == "pass"
    assert hidden_temps(parent) == [live.name] and not cache_stale.exists()


def test_swap_never_leaves_a_moment_without_the_output(tmp_path):
    from embedc.fsutil import staged_dir

    final = tmp_path / "out"
    final.mkdir()
    (final / "v").write_text("0")
    missing = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if not (final / "v").exists():
                missing.append(1)

    t = threading.Thread(target=watch)
    t.start()
    try:
        for i in range(1, 200):
            with staged_dir(final, force=True) as tmp:
                (tmp / "v").write_text(str(i))
    finally:
        stop.set()
        t.join()
    assert (final / "v").read_text() == "199" and missing == []
    assert os.listdir(tmp_path) == ["out"]


def test_swap_without_renameat2_restores_the_old_folder_on_failure(tmp_path, monkeypatch):
    """Where RENAME_EXCHANGE is unavailable, the old folder is renamed aside and put back if the
    second rename fails; its temp name carries the pid, so a kill in between is swept later."""
    import pytest

    from embedc import fsutil

    monkeypatch.setattr(fsutil, "_exchange", lambda a, b: False)
    final = tmp_path / "out"
    final.mkdir()
    (final / "v").write_text("old")
    with fsutil.staged_dir(final, force=True) as tmp:
        (tmp / "v").write_text("new")
    assert (final / "v").read_text() == "new" and os.listdir(tmp_path) == ["out"]
    real_replace = os.replace
    calls = []

    def second_fails(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise OSError(5, "I/O error")
        return real_replace(a, b)

    monkeypatch.setattr(fsutil.os, "replace", second_fails)
    with pytest.raises(OSError):
        with fsutil.staged_dir(final, force=True) as tmp:
            (tmp / "v").write_text("newer")
    assert (final / "v").read_text() == "new" and os.listdir(tmp_path) == ["out"]


def test_an_entry_being_stored_is_waited_for_not_computed_again(tmp_path):
    """Two writers of one key (two builds of one model on one cache): the second waits for the
    first's entry and takes it; its own fill never runs."""
    import time

    from embedc.build.cache import StageCache

    cache, key, calls = StageCache(tmp_path / "stages"), "0" * 32, []
    filling = threading.Event()

    def slow(tmp):
        calls.append("first")
        filling.set()
        time.sleep(0.5)
        (tmp / "model.onnx").write_bytes(b"first")

    def second(tmp):
        calls.append("second")
        (tmp / "model.onnx").write_bytes(b"second")

    first = threading.Thread(target=cache.store, args=("export", key, {}, slow))
    first.start()
    assert filling.wait(10)
    got = cache.store("export", key, {}, second)
    first.join()
    assert calls == ["first"] and (got / "model.onnx").read_bytes() == b"first"
    assert cache_problems(tmp_path / "stages") == []
