"""Defect 8 (stale provenance of cached artifacts) and defect 9 (late or
misleading checks): each refusal is one line, before any work."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from rel_helpers import build_args, rel_spec, write_corpus

from embedc.build.pipeline import build
from embedc.cli import cli


def run(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


def one_line(r, code, *words):
    assert r.exit_code == code, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    lines = [ln for ln in r.output.splitlines() if ln.startswith(("error:", "Error:"))]
    assert len(lines) == 1, r.output
    for w in words:
        assert w in lines[0], lines[0]


def test_cached_artifact_carries_this_builds_model_and_corpus(toy, tmp_path, shared_cache):
    """Build A fills the cache; build B (same content, other paths) is served from it; A's inputs
    are deleted; B's artifact still names B's paths and `embedc parity` on it passes."""
    paths = {}
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        model = shutil.copytree(toy, d / "toy-model")
        corpus = write_corpus(d / "corpus.jsonl")
        paths[name] = (model, corpus)
        result = build(rel_spec(model, corpus, d / "out"), cache_dir=shared_cache / "stages")
        assert result.manifest["verdict"] == "pass"
    assert result.artifacts[0].cached
    shutil.rmtree(tmp_path / "a")
    art = tmp_path / "b" / "out" / "fake-cpu" / "fp32"
    meta = json.loads((art / "embedc.json").read_text())
    assert meta["calibration_spec"]["corpus"] == str(paths["b"][1])
    assert meta["model"]["path"] == str(paths["b"][0])
    r = run("parity", art)
    assert r.exit_code == 0, r.output


def test_plain_txt_corpus_builds_and_one_language_hint_names_the_real_flag(toy, tmp_path):
    txt = tmp_path / "plain.txt"
    txt.write_text("\n".join(f"line number {i} with a few words" for i in range(40)) + "\n")
    r = run(*build_args(toy, txt, tmp_path / "o1", "-t", "fake-cpu", "-p", "fp32"))
    assert r.exit_code == 0, r.output                       # language "und", split as one
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"text": f"text {i} here", "lang": "eng"}) + "\n" for i in range(30)))
    r = run(*build_args(toy, one, tmp_path / "o2", "-t", "fake-cpu", "-p", "fp32"))
    one_line(r, 1, "--min-languages")
    assert "--calib-languages-min" not in r.output and not (tmp_path / "o2").exists()


def test_empty_evaluation_split_is_one_line(toy, tmp_path):
    c = tmp_path / "few.jsonl"
    c.write_text("".join(json.dumps({"text": f"text {i} {lang}", "lang": lang}) + "\n"
                         for lang in ("eng", "deu") for i in range(1)))
    r = run("build", "-m", toy, "-o", tmp_path / "o", "--calib", c, "--calib-per-lang", "8", "--eval-per-lang", "2",
            "-t", "fake-cpu", "-p", "fp32")
    one_line(r, 1, "evaluation split is empty")


def _spec_file(tmp_path, toy, corpus, extra_matrix="", tail=""):
    f = tmp_path / "spec.toml"
    f.write_text(f'out = "{tmp_path / "o"}"\n[model]\nname = "{toy}"\n[calibration]\ncorpus = "{corpus}"\n'
                 'calib_per_lang = 2\neval_per_lang = 4\nmax_length = 32\n'
                 '[[matrix]]\ntarget = "fake-cpu"\nprecisions = ["fp32"]\n' + extra_matrix + tail)
    return f


def test_second_matrix_entry_for_a_target_keeps_its_options(toy, corpus, tmp_path):
    from embedc.spec import load_spec_file

    f = _spec_file(tmp_path, toy, corpus, '[[matrix]]\ntarget = "fake-cpu"\nprecisions = ["int8-noisy"]\n'
                                          'options = {int8-noisy = {noise = 0.01}}\n')
    spec = load_spec_file(f)
    assert spec.options_for("fake-cpu", "int8-noisy") == {"noise": 0.01}
    r = run("build", "--spec", f, "--dry-run")
    assert r.exit_code == 0 and '"noise": 0.01' in r.output, r.output


@pytest.mark.parametrize("extra,tail,words", [
    ('[[matrix]]\ntarget = "fake-cpu"\nprecisions = ["int8-noisy"]\noptions = {fp32 = {noise = 0.0}}\n', "",
     ["options for 'fp32'"]),
    ("", '[gates.models."some-model"]\nint8 = "meen>=0.9"\n', ["unknown metric 'meen'"]),
    ("", '[gates.models."some-model"]\nint9 = "mean>=0.9"\n', ["int9"]),
    ("", "[bench]\nenabled = true\nbatch_size = 0\n", ["bench.batch_size"]),
])
def test_spec_mistakes_are_usage_errors_before_work(toy, corpus, tmp_path, extra, tail, words):
    r = run("build", "--spec", _spec_file(tmp_path, toy, corpus, extra, tail))
    one_line(r, 2, *words)
    assert not (tmp_path / "o").exists()


def test_non_utf8_spec_file(tmp_path):
    f = tmp_path / "spec.toml"
    f.write_bytes(b'out = "\xff\xfe"\n')
    one_line(run("build", "--spec", f), 2, "not UTF-8")


@pytest.mark.parametrize("args,words", [(["--seed", "-1"], ["--seed"]), (["--threads", "-1"], ["--threads"]),
                                        (["--junit", "."], ["--junit", "directory"])])
def test_cli_values_the_spec_rejects_are_usage_errors(toy, corpus, tmp_path, args, words):
    one_line(run(*build_args(toy, corpus, tmp_path / "o", "-t", "fake-cpu", "-p", "fp32", *args)), 2, *words)


def test_tampered_artifact_json_and_empty_text(good_build, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(good_build / "fake-cpu" / "fp32", art)
    r = run("embed", art, "")
    assert r.exit_code == 0 and len(json.loads(r.output.strip())) == 16, r.output
    meta = json.loads((art / "embedc.json").read_text())
    (art / "embedc.json").write_text(json.dumps([meta]))
    for cmd in ("embed", "parity"):
        one_line(run(cmd, art, *(["hello"] if cmd == "embed" else [])), 1, "JSON list")
    (art / "embedc.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "inputs"}))
    for cmd in ("embed", "parity"):
        one_line(run(cmd, art, *(["hello"] if cmd == "embed" else [])), 1, "embedc.json")


def test_encode_edge_cases(good_build):
    import embedc
    from embedc.errors import UsageError

    enc = embedc.load(good_build / "fake-cpu" / "fp32")
    assert enc.encode([]).shape == (0, 16)
    for bad in (lambda: enc.encode(None), lambda: enc.encode(["a"], batch_size=0)):
        with pytest.raises(UsageError):
            bad()
