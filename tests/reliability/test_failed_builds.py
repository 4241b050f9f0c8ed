"""Defect 2: a failing build (gate exit 3, compile error exit 1) never
replaces or creates ``<out>``; its reports and JUnit go to ``<out>.failed``."""
from __future__ import annotations

from click.testing import CliRunner

from rel_helpers import build_args, error_lines, tree_digest

from embedc.cli import cli


def run(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


def test_gate_failure_with_force_keeps_the_previous_build(previous, toy, corpus):
    before = tree_digest(previous)
    junit = previous / "parity.xml"   # asked for inside the good build: goes beside it instead
    r = run(*build_args(toy, corpus, previous, "-t", "fake-cpu", "-p", "int8-noisy", "--force", "--junit", junit))
    assert r.exit_code == 3, r.output
    line = error_lines(r.output)[0]
    failed = previous.with_name("build.failed")
    assert "parity gate failed" in line and str(failed) in line
    assert tree_digest(previous) == before                      # byte-identical, nothing added
    assert (failed / "report.md").is_file() and (failed / "manifest.json").is_file()
    assert (failed / "parity.xml").is_file() and not junit.exists()
    assert sorted(p.name for p in previous.parent.iterdir()) == ["build", "build.failed"]  # no temp folders


def test_compile_error_with_force_keeps_the_previous_build(previous, toy, corpus):
    before = tree_digest(previous)
    r = run(*build_args(toy, corpus, previous, "-t", "fake-cpu", "-p", "int8-broken", "--force"))
    assert r.exit_code == 1, r.output
    assert len(error_lines(r.output)) == 1 and "failed to build" in error_lines(r.output)[0]
    assert tree_digest(previous) == before
    assert (previous.with_name("build.failed") / "report.md").is_file()


def test_failing_build_without_force_creates_no_output(toy, corpus, tmp_path):
    out = tmp_path / "new"
    r = run(*build_args(toy, corpus, out, "-t", "fake-cpu", "-p", "int8-noisy"))
    assert r.exit_code == 3, r.output
    assert not out.exists() and (tmp_path / "new.failed" / "report.md").is_file()
    # the failed folder is embedc's: the next failing run replaces it, a passing run removes it
    r = run(*build_args(toy, corpus, out, "-t", "fake-cpu", "-p", "int8-noisy"))
    assert r.exit_code == 3, r.output
    r = run(*build_args(toy, corpus, out, "-t", "fake-cpu", "-p", "fp32"))
    assert r.exit_code == 0, r.output
    assert (out / "manifest.json").is_file() and not (tmp_path / "new.failed").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]


def test_a_foreign_failed_folder_is_refused_before_work(toy, corpus, tmp_path):
    (tmp_path / "new.failed").mkdir()
    (tmp_path / "new.failed" / "mine.txt").write_text("not embedc's")
    r = run(*build_args(toy, corpus, tmp_path / "new", "-t", "fake-cpu", "-p", "fp32"))
    assert r.exit_code == 1 and "not an embedc build folder" in error_lines(r.output)[0]
    assert (tmp_path / "new.failed" / "mine.txt").read_text() == "not embedc's"
