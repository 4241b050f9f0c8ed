"""Defect 1 (--force deletes any folder) and the output-location half of
defect 9: where a build may write, refused in one line before any work."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from rel_helpers import build_args, error_lines, tree_digest

from embedc.cli import cli


def run(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


def refused(r, *words):
    assert r.exit_code == 1, r.output
    lines = error_lines(r.output)
    assert len(lines) == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output  # no traceback
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def no_work_done(cache):
    """Nothing was exported or judged: the refusal came before any work."""
    return not any((cache / "stages").glob("*/*"))


def test_force_into_the_current_project_folder_is_refused(toy, corpus, tmp_path, monkeypatch):
    proj = tmp_path / "project"
    proj.mkdir()
    (proj / "main.py").write_text("print('my code')\n")
    (proj / "data.csv").write_text("a,b\n1,2\n")
    before = tree_digest(proj)
    monkeypatch.chdir(proj)
    monkeypatch.setenv("EMBEDC_CACHE", str(tmp_path / "c"))
    r = run(*build_args(toy, corpus, ".", "-t", "fake-cpu", "-p", "fp32", "--force"))
    refused(r, "current folder")
    assert tree_digest(proj) == before and no_work_done(tmp_path / "c")


def test_force_onto_the_model_folder_is_refused(toy, corpus, tmp_path, monkeypatch):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(toy, model)
    before = tree_digest(model)
    monkeypatch.setenv("EMBEDC_CACHE", str(tmp_path / "c"))
    for out in (model, model / "build", tmp_path):  # equal, inside, containing
        r = run(*build_args(model, corpus, out, "-t", "fake-cpu", "-p", "fp32", "--force"))
        refused(r, "model folder")
    assert tree_digest(model) == before and no_work_done(tmp_path / "c")


def test_output_around_the_corpus_is_refused(toy, tmp_path, monkeypatch):
    from rel_helpers import write_corpus

    data = tmp_path / "data"
    data.mkdir()
    corpus = write_corpus(data / "corpus.jsonl")
    monkeypatch.setenv("EMBEDC_CACHE", str(tmp_path / "c"))
    r = run(*build_args(toy, corpus, data, "-t", "fake-cpu", "-p", "fp32", "--force"))
    refused(r, "corpus")
    assert corpus.is_file()


def test_force_onto_a_folder_embedc_did_not_make_is_refused(toy, corpus, tmp_path, monkeypatch):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    before = tree_digest(other)
    monkeypatch.setenv("EMBEDC_CACHE", str(tmp_path / "c"))
    r = run(*build_args(toy, corpus, other, "-t", "fake-cpu", "-p", "fp32", "--force"))
    refused(r, "--force refused", "not an embedc build folder")
    assert tree_digest(other) == before and no_work_done(tmp_path / "c")


@pytest.mark.parametrize("where", ["home", "root"])
def test_home_and_root_are_refused(toy, corpus, tmp_path, monkeypatch, where):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    r = run(*build_args(toy, corpus, home if where == "home" else "/", "-t", "fake-cpu", "-p", "fp32", "--force"))
    refused(r, "home folder" if where == "home" else "file system root")


def test_out_pointing_at_a_file_is_one_line(toy, corpus, tmp_path, monkeypatch):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    monkeypatch.setenv("EMBEDC_CACHE", str(tmp_path / "c"))
    for force in ((), ("--force",)):
        r = run(*build_args(toy, corpus, f, "-t", "fake-cpu", "-p", "fp32", *force))
        refused(r, "is a file")
    assert f.read_text() == "keep me" and no_work_done(tmp_path / "c")


def test_force_replaces_an_embedc_build(previous, toy, corpus):
    r = run(*build_args(toy, corpus, previous, "-t", "fake-cpu", "-p", "fp32", "--force"))
    assert r.exit_code == 0, r.output
    assert (previous / "fake-cpu" / "fp32" / "model.onnx").is_file()
    assert not [p for p in previous.parent.iterdir() if p.name.startswith(".")]


def test_corpus_errors_come_before_the_export(toy, tmp_path, monkeypatch):
    bad = tmp_path / "one.txt"
    bad.write_text("only one line of text\n")
    monkeypatch.setenv("EMBEDC_CACHE", str(tmp_path / "c"))
    r = run(*build_args(toy, bad, tmp_path / "out", "-t", "fake-cpu", "-p", "fp32"))
    assert r.exit_code in (1, 2) and len(error_lines(r.output)) == 1, r.output
    assert no_work_done(tmp_path / "c") and not (tmp_path / "out").exists()


def test_export_command_is_guarded_too(toy, tmp_path, monkeypatch):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(toy, model)
    before = tree_digest(model)
    r = run("export", "-m", model, "-o", model, "--force")
    refused(r, "model folder")
    assert tree_digest(model) == before
