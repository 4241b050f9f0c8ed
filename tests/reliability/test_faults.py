"""Fault injection (defect 6 and "what it must show" 2): a build is killed
with SIGKILL or stopped with SIGTERM at each stage (EMBEDC_FAULT, see
embedc/build/faults.py). Afterwards the previous build is intact (or, past
the swap, the new one is whole), the cache verifies, and the next build
succeeds, removes what the dead run left, and reuses what was finished."""
from __future__ import annotations

import json

import pytest

from rel_helpers import (build_args, cache_problems, hidden_temps, rel_spec, run_cli, tree_digest)
from toy import FakeBackend

from embedc.build.faults import STAGES
from embedc.build.pipeline import build

# which cache stages hold a finished entry once a run dies at each fault point
DONE_BEFORE = {"export": (), "reference": ("export",), "compile": ("export", "reference"),
               "parity": ("export", "reference"), "report": ("export", "reference", "artifact"),
               "swap": ("export", "reference", "artifact")}


def finished_entries(stages_dir):
    return tuple(s for s in ("export", "reference", "artifact")
                 if (stages_dir / s).is_dir() and any(not p.name.startswith(".") for p in (stages_dir / s).iterdir()))


def whole_build(folder) -> bool:
    from embedc.artifact import sha256_file

    manifest = json.loads((folder / "manifest.json").read_text())
    return all(sha256_file(folder / a["path"] / f["path"]) == f["sha256"]
               for a in manifest["artifacts"] for f in a["files"])


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("stage", STAGES)
def test_killed_build_loses_nothing(stage, signal_name, previous, toy, corpus, tmp_path):
    cache = tmp_path / "cache"
    stages_dir = cache / "stages"
    before = tree_digest(previous)
    r = run_cli(build_args(toy, corpus, previous, "-t", "fake-cpu", "-p", "fp32", "--force"), cache=cache,
                env={"EMBEDC_FAULT": f"{stage}:{signal_name}"})
    if signal_name == "SIGKILL":
        assert r.returncode == -9, r.stdout + r.stderr
    else:
        assert r.returncode == 143, r.stdout + r.stderr
        assert "interrupted by SIGTERM" in r.stderr and "Traceback" not in r.stdout + r.stderr
        # SIGTERM cleans up like Ctrl-C: no temp folder beside the output or in the cache
        assert hidden_temps(previous.parent) == [] and cache_problems(stages_dir) == []
    if stage == "swap":
        assert whole_build(previous)              # the new build, whole: never a moment without <out>
    else:
        assert tree_digest(previous) == before    # byte-identical
    assert finished_entries(stages_dir) == DONE_BEFORE[stage]
    assert not [p for p in cache_problems(stages_dir) if p.startswith("corrupt")]

    FakeBackend.compiled.clear()
    result = build(rel_spec(toy, corpus, previous), cache_dir=stages_dir, force=True)
    assert result.manifest["verdict"] == "pass"
    assert result.artifacts[0].cached == ("artifact" in DONE_BEFORE[stage])
    assert FakeBackend.compiled == ([] if "artifact" in DONE_BEFORE[stage] else ["fake-cpu/fp32"])
    assert cache_problems(stages_dir) == [] and hidden_temps(previous.parent) == []
    assert whole_build(previous)


def test_ctrl_c_exits_130_and_cleans_up(previous, toy, corpus, tmp_path):
    before = tree_digest(previous)
    r = run_cli(build_args(toy, corpus, previous, "-t", "fake-cpu", "-p", "fp32", "--force"), cache=tmp_path / "c",
                env={"EMBEDC_FAULT": "compile:SIGINT"})
    assert r.returncode == 130, r.stdout + r.stderr
    assert "interrupted" in r.stderr and "Traceback" not in r.stdout + r.stderr
    assert tree_digest(previous) == before and hidden_temps(previous.parent) == []
    assert cache_problems(tmp_path / "c" / "stages") == []
