"""Compressed output embeddings: formulas, spec, in-graph heads on every backend
that runs here (ORT, OpenVINO, the TensorRT-ready ONNX through ORT), the build
record, gates, warnings and the runtime."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from embedc.errors import SpecError, UsageError
from embedc.outputs import formulas
from embedc.outputs.spec import Head, OutputsSpec, from_table, parse_formats, plan_heads

ALL = ("float32", "int8", "int8-tanh", "binary", "ubinary")


def _heads(width=32, dims=(32, 16), formats=ALL, model_type="xlm-roberta", graph=("sentence_embedding",)):
    return plan_heads(OutputsSpec(formats=formats, dims=dims), model_type=model_type, width=width,
                      graph_outputs=graph)


# ---- formulas ---------------------------------------------------------------------------------
def test_formulas_each_format():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (20, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    heads, _ = _heads()
    h = {h.name: h for h in heads}
    ranges = formulas.compute_ranges(heads, {"sentence_embedding": x})
    assert formulas.apply(h["sentence_embedding_binary"], x).tolist() == np.where(x >= 0, 1, -1).tolist()
    ub = formulas.apply(h["sentence_embedding_ubinary"], x)
    assert ub.dtype == np.uint8 and ub.shape == (20, 4) and (ub == np.packbits(x >= 0, axis=1)).all()
    t = formulas.apply(h["sentence_embedding_int8_tanh"], x)
    assert t.dtype == np.int8 and (t == np.clip(np.round(127 * np.tanh(x)), -128, 127)).all()
    q = formulas.apply(h["sentence_embedding_int8"], x, ranges)
    assert q.dtype == np.int8 and q.min() == -128 and q.max() == 127  # the calibration set spans the range
    back = formulas.dequantize(h["sentence_embedding_int8"], q, ranges)
    step = formulas.steps(np.array(ranges["sentence_embedding_int8"]["lo"]), ranges["sentence_embedding_int8"]["hi"])
    assert np.all(np.abs(back - x) <= step / 2 + 1e-6)
    f16 = formulas.apply(h["sentence_embedding_16"], x)
    assert f16.shape == (20, 16) and np.allclose(np.linalg.norm(f16, axis=1), 1, atol=1e-6)
    q16 = formulas.apply(h["sentence_embedding_int8_16"], x, ranges)  # truncate, renormalize, then quantize
    assert q16.shape == (20, 16) and ranges["sentence_embedding_int8_16"]["n"] == 20
    # out-of-range values saturate (sentence-transformers wraps them around)
    assert formulas.apply(h["sentence_embedding_int8"], x * 10, ranges).min() == -128


def test_centered_binary_takes_the_sign_around_the_calibration_mean():
    rng = np.random.default_rng(2)
    offset = rng.normal(0, 1, 32).astype(np.float32)        # anisotropic: every vector shares a direction
    calib = offset + rng.normal(0, 0.3, (200, 32)).astype(np.float32)
    x = offset + rng.normal(0, 0.3, (40, 32)).astype(np.float32)
    heads, _ = plan_heads(OutputsSpec(formats=("binary", "ubinary"), binary_scheme="centered"),
                          model_type="xlm-roberta", width=32, graph_outputs=("sentence_embedding",))
    b, ub = heads
    assert (b.name, b.scheme, ub.name) == ("sentence_embedding_binary_centered", "centered",
                                           "sentence_embedding_ubinary_centered")
    ranges = formulas.compute_ranges(heads, {"sentence_embedding": calib})
    mean = calib.mean(axis=0)
    assert np.allclose(ranges[b.name]["mean"], mean, atol=1e-6) and ranges[ub.name]["n"] == 200
    assert formulas.apply(b, x, ranges).tolist() == np.where(x - mean >= 0, 1, -1).tolist()
    assert (formulas.apply(ub, x, ranges) == np.packbits(x - mean >= 0, axis=1)).all()
    with pytest.raises(ValueError, match="needs its calibration mean"):
        formulas.apply(ub, x)
    # why it exists: plain sign bits of anisotropic vectors mostly agree (little ranking left in them)
    sign = Head("s", "ubinary", None, 32, 32, "sentence_embedding", False)
    def neighbour_agreement(h, r):
        d = formulas.hamming(formulas.apply(h, x, r), formulas.apply(h, x, r)).astype(float)
        np.fill_diagonal(d, np.inf)
        c = (x - mean) @ (x - mean).T
        np.fill_diagonal(c, -np.inf)
        return float((d.argmin(axis=1) == c.argmax(axis=1)).mean())
    assert neighbour_agreement(ub, ranges) > neighbour_agreement(sign, None) + 0.2


def test_calibrated_int8_matches_sentence_transformers_within_one_step():
    st = pytest.importorskip("sentence_transformers.util.quantization")
    rng = np.random.default_rng(1)
    calib, x = rng.normal(0, 1, (64, 32)).astype(np.float32), rng.normal(0, 0.5, (16, 32)).astype(np.float32)
    h = Head("e_int8", "int8", "calibrated", 32, 32, "e", False)
    ranges = formulas.compute_ranges([h], {"e": calib})
    ours = formulas.apply(h, x, ranges).astype(int)
    theirs = st.quantize_embeddings(x, precision="int8", calibration_embeddings=calib).astype(int)
    assert np.abs(ours - theirs).max() <= 1
    assert (formulas.apply(Head("u", "ubinary", None, 32, 32, "e", False), x)
            == st.quantize_embeddings(x, precision="ubinary")).all()


# ---- spec -------------------------------------------------------------------------------------
def test_spec_errors_are_one_line():
    with pytest.raises(SpecError, match="unknown output format 'int4'"):
        parse_formats("int8,int4")
    with pytest.raises(SpecError, match="larger than the model's embedding width 32"):
        _heads(dims=(64,))
    with pytest.raises(SpecError, match="not a multiple of 8"):
        from_table({"formats": ["ubinary"], "dims": [20]})
    with pytest.raises(SpecError, match="unknown spec key 'outputs.format'"):
        from_table({"format": ["int8"]})
    with pytest.raises(SpecError, match="unknown output gate metric"):
        from_table({"formats": ["int8"], "gates": {"int8": "recall>=0.9"}})
    o = from_table({"formats": "int8,ubinary", "dims": [256, 128], "int8_scheme": "calibrated"})
    assert o.formats == ("int8", "ubinary") and o.dims == (256, 128) and o.binary_scheme == "sign"
    assert from_table({"formats": ["ubinary"], "binary_scheme": "centered"}).binary_scheme == "centered"
    with pytest.raises(SpecError, match="unknown binary scheme 'mean'"):
        from_table({"formats": ["ubinary"], "binary_scheme": "mean"})


def test_spec_file_and_cli_produce_outputs(tmp_path):
    from click.testing import CliRunner

    from embedc.cli import cli
    from embedc.spec import load_spec_file

    f = tmp_path / "s.toml"
    f.write_text('[outputs]\nformats = ["int8", "ubinary"]\ndims = [256]\n')
    assert load_spec_file(f).outputs.formats == ("int8", "ubinary")
    r = CliRunner().invoke(cli, ["build", "-m", "random-tiny-xlmr", "--output", "float32,int8,ubinary", "--dims", "16",
                                 "--dry-run"])
    assert r.exit_code == 0, r.output
    assert '"formats": [' in r.output and "ubinary" in r.output
    r = CliRunner().invoke(cli, ["build", "-m", "random-tiny-xlmr", "--output", "int9", "--dry-run"])
    assert r.exit_code == 2 and "unknown output format 'int9'" in r.output


def test_pplx_defaults_to_its_native_outputs():
    heads, warnings = plan_heads(OutputsSpec(), model_type="bidirectional_pplx_qwen3", width=1024,
                                 graph_outputs=("sentence_embedding", "last_hidden_state", "pooler_output"))
    assert [(h.name, h.format, h.scheme, h.renormalize) for h in heads] == [
        ("pooler_output_int8", "int8", "tanh", False), ("pooler_output_binary", "binary", None, False)]
    assert warnings == []
    heads, warnings = plan_heads(OutputsSpec(dims=(256,)), model_type="bidirectional_pplx_qwen3", width=1024,
                                 graph_outputs=("sentence_embedding", "pooler_output"))
    assert [h.name for h in heads] == ["pooler_output_int8_256", "pooler_output_binary_256"] and not warnings
    assert plan_heads(OutputsSpec(), model_type="bert", width=384, graph_outputs=("sentence_embedding",)) == ([], [])


def test_untrained_combinations_warn():
    _, warnings = _heads(formats=("int8-tanh", "int8"), dims=(16,))
    assert any("not trained for Matryoshka" in w for w in warnings)
    assert any("tanh scheme" in w for w in warnings)
    _, warnings = _heads(formats=("int8", "ubinary"), dims=(32,))
    assert warnings == []


# ---- in-graph heads equal the formula ---------------------------------------------------------
def _check_heads(got: dict, heads, ranges):
    for h in heads:
        want = formulas.apply(h, got[h.source], ranges)
        have = got[h.name]
        assert have.dtype == want.dtype and have.shape == want.shape, h.name
        if h.format in ("binary", "ubinary"):
            assert np.array_equal(have, want), h.name
        elif h.format == "int8":
            assert np.abs(have.astype(int) - want.astype(int)).max() <= 1, h.name
        else:
            np.testing.assert_allclose(have, want, atol=1e-5)


@pytest.fixture(scope="module")
def head_plan(tiny_reference, tiny_tokenizer, tiny_splits):
    """Heads for the tiny model (width 32; every format, binary in both schemes) and ranges
    from its export on calibration texts."""
    import onnxruntime as ort

    from embedc.artifact import read_meta
    from embedc.calibration import PromptStyle, tokenize_batches

    heads, _ = _heads()
    centered, _ = plan_heads(OutputsSpec(formats=("binary", "ubinary"), dims=(32, 16), binary_scheme="centered"),
                             model_type="xlm-roberta", width=32, graph_outputs=("sentence_embedding",))
    heads += centered
    meta = read_meta(tiny_reference)
    sess = ort.InferenceSession(str(tiny_reference / meta["model_file"]), providers=["CPUExecutionProvider"])
    style = PromptStyle(meta["prefixes"]["query"], meta["prefixes"]["passage"])
    names = [i["name"] for i in meta["inputs"]]
    calib = tokenize_batches(tiny_tokenizer, style.apply_all(tiny_splits.calibration), batch_size=1, max_length=64,
                             input_names=names)
    emb = np.concatenate([sess.run(["sentence_embedding"], b)[0] for b in calib])
    ranges = formulas.compute_ranges(heads, {"sentence_embedding": emb})
    evals = tokenize_batches(tiny_tokenizer, style.apply_all(tiny_splits.evaluation[:32]), batch_size=8,
                             max_length=64, input_names=names)
    return heads, ranges, evals


def _ort_outputs(path, heads, evals):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ["sentence_embedding"] + [h.name for h in heads]
    runs = [dict(zip(names, sess.run(names, b))) for b in evals]
    return {n: np.concatenate([r[n] for r in runs]) for n in names}


@pytest.mark.parametrize("target,precision", [("ort-cpu", "fp32"), ("ort-cpu", "int8-static"), ("ort-cpu", "int4"),
                                              ("tensorrt-sm90", "int8")])
def test_onnx_heads_equal_formula(target, precision, compile_context, head_plan, tmp_path):
    """ORT (FP32, QDQ int8, MatMulNBits int4) and the TensorRT-ready Q/DQ ONNX, run through ORT."""
    from embedc.targets.registry import get_backend, get_target

    heads, ranges, evals = head_plan
    t = get_target(target)
    backend = get_backend(t)
    ctx = dataclasses.replace(compile_context, options=backend.resolve_options(t, precision, {}))
    out = tmp_path / "art"
    res = backend.compile(t, precision, ctx, out)
    record = backend.attach_output_heads(out, res, heads, ranges)
    assert record["outputs"] == [h.name for h in heads]
    _check_heads(_ort_outputs(out / res.model_file, heads, evals), heads, ranges)
    if target.startswith("tensorrt"):
        assert "not built here" in record["unverified"]


def test_onnx_heads_keep_external_data(tiny_reference, head_plan, tmp_path):
    import onnx

    from embedc.outputs.onnx_heads import attach

    heads, ranges, evals = head_plan
    m = onnx.load(str(tiny_reference / "model.onnx"))
    onnx.save(m, str(tmp_path / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=1024)
    before = (tmp_path / "model.onnx.data").read_bytes()
    attach(tmp_path / "model.onnx", heads, ranges)
    assert (tmp_path / "model.onnx.data").read_bytes() == before  # the weights are not rewritten
    _check_heads(_ort_outputs(tmp_path / "model.onnx", heads, evals), heads, ranges)


@pytest.mark.parametrize("precision", ["fp32", "int8-static"])
def test_openvino_heads_equal_formula(precision, compile_context, head_plan, tmp_path):
    from embedc.targets.registry import get_backend, get_target

    heads, ranges, evals = head_plan
    t = get_target("openvino-cpu")
    backend = get_backend(t)
    ctx = dataclasses.replace(compile_context, options=backend.resolve_options(t, precision, {}))
    out = tmp_path / "ov"
    res = backend.compile(t, precision, ctx, out)
    backend.attach_output_heads(out, res, heads, ranges)
    runner = backend.load(out, {"model_file": res.model_file, "runtime": res.runtime}, threads=1)
    names = ["sentence_embedding"] + [h.name for h in heads]
    runs = [runner.run(b, names) for b in evals]
    _check_heads({n: np.concatenate([r[n] for r in runs]) for n in names}, heads, ranges)


def test_backend_without_heads_says_so(tmp_path):
    from embedc.errors import CompileError
    from embedc.outputs.build import attach

    class NoHeads:
        name = "fake"
        from embedc.targets.base import Capabilities
        capabilities = Capabilities()

    with pytest.raises(CompileError, match="cannot add compressed outputs"):
        attach({"heads": [], "ranges": {}}, NoHeads(), tmp_path, None)


# ---- through the build: record, manifest, report, gates, runtime, CLI ---------------------------
SMALL = dict(calib_per_lang=2, eval_per_lang=4, max_length=64)


def _spec(out, **outputs):
    from embedc.spec import BuildSpec, CalibrationSpec, MatrixEntry, ModelSpec

    o = {"formats": ("float32", "int8", "int8-tanh", "ubinary"), "dims": (32, 16), "gates": {"*": ""}, **outputs}
    return BuildSpec(model=ModelSpec(name="random-tiny-xlmr"), calibration=CalibrationSpec(**SMALL),
                     matrix=(MatrixEntry("ort-cpu", ("fp32",)), MatrixEntry("openvino-cpu", ("fp32",))),
                     out=str(out), outputs=OutputsSpec(**o))


@pytest.fixture(scope="module")
def outputs_build(tmp_path_factory, stage_cache):
    from embedc.build.pipeline import build

    out = tmp_path_factory.mktemp("ob") / "build"
    return build(_spec(out), cache_dir=stage_cache), stage_cache


def test_build_records_outputs(outputs_build):
    from embedc.artifact import read_meta, sha256_file

    result, _ = outputs_build
    assert [a.status for a in result.artifacts] == ["pass", "pass"]
    for a in result.artifacts:
        folder = result.out / a.path
        co = read_meta(folder)["compressed_outputs"]
        names = [o["name"] for o in co["outputs"]]
        assert names == ["sentence_embedding_int8", "sentence_embedding_int8_tanh", "sentence_embedding_ubinary",
                         "sentence_embedding_16", "sentence_embedding_int8_16", "sentence_embedding_int8_tanh_16",
                         "sentence_embedding_ubinary_16"]
        assert co["calibration"]["sha256"] == sha256_file(folder / "output_ranges.json")
        assert co["calibration"]["split_sha256"] == read_meta(folder)["calibration"]["calibration"]["sha256"]
        assert set(json.loads((folder / "output_ranges.json").read_text())) == {
            "sentence_embedding_int8", "sentence_embedding_int8_16"}
        assert co["formula_check"]["sentence_embedding_ubinary"]["exact"]
        assert co["formula_check"]["sentence_embedding_int8"]["within_one_step"]
        p = co["parity"]["sentence_embedding_int8"]
        assert p["cosine_mean"] > 0.99 and p["bytes_per_vector"] == 32
        assert 0 <= p["retrieval"]["rescored"]["top10"] <= 1 and p["retrieval"]["rescored"]["candidates"] == 40
        assert co["parity"]["sentence_embedding_ubinary"]["retrieval"]["rescored"]["documents"] == \
            "sentence_embedding_int8"
        assert set(co["untrained"]) == {"sentence_embedding_int8_tanh", "sentence_embedding_16",
                                        "sentence_embedding_int8_16", "sentence_embedding_int8_tanh_16",
                                        "sentence_embedding_ubinary_16"}
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["artifacts"][0]["compressed_outputs"]["outputs"][0]["name"] == "sentence_embedding_int8"
    assert manifest["spec"]["outputs"]["formats"] == ["float32", "int8", "int8-tanh", "ubinary"]
    report = (result.out / "report.md").read_text()
    assert "## Compressed outputs" in report and "sentence_embedding_ubinary_16" in report
    assert "**Warning**: dims 16 truncate" in report and "not trained for it" in report


def test_output_gates_fail_the_artifact(outputs_build, tmp_path, monkeypatch):
    from embedc.build.pipeline import build
    from embedc.outputs import build as outputs_build_mod

    def rerun(*args, **kwargs):
        raise AssertionError("the FP32 calibration/evaluation passes ran again on a cached export")

    monkeypatch.setattr(outputs_build_mod, "_fp32_passes", rerun)  # minutes on a 0.6B model: a cache entry
    _, cache = outputs_build
    spec = _spec(tmp_path / "g", gates={"*": "", "int8": "cosine_mean>=1.01"})  # "int8": both schemes
    result = build(spec, cache_dir=cache)
    assert all(a.cached for a in result.artifacts)  # gates are not part of the artifact key
    assert [a.status for a in result.artifacts] == ["fail", "fail"]
    failed = [o.metric for o in result.artifacts[0].gates if o.failed]
    assert failed == ["sentence_embedding_int8.cosine_mean", "sentence_embedding_int8_tanh.cosine_mean",
                      "sentence_embedding_int8_16.cosine_mean", "sentence_embedding_int8_tanh_16.cosine_mean"]
    assert "gate sentence_embedding_int8.cosine_mean>=1.01" in (result.out / "report.md").read_text()


def test_default_gates_skip_untrained_heads():
    from embedc.outputs.gates import resolve

    h = Head("x_16", "int8", "calibrated", 16, 32, "sentence_embedding", True)
    assert resolve(h, {}, untrained=True) == []
    assert [m for m, _, _ in resolve(h, {}, untrained=False)] == ["cosine_mean", "rescored_top10", "rescored_top1"]
    assert resolve(h, {"int8": "top10>=0.5"}, untrained=True) == [("top10", 0.5, "[outputs] gates.int8")]


def test_encode_returns_compressed_vectors(outputs_build):
    import embedc

    result, _ = outputs_build
    texts = ["hello world", "a second, longer text about something else"]
    for a in result.artifacts:
        enc = embedc.load(result.out / a.path)
        q = enc.encode(texts, output="int8", dims=16)
        assert q.dtype == np.int8 and q.shape == (2, 16)
        ub = enc.encode(texts, output="ubinary")
        assert ub.dtype == np.uint8 and ub.shape == (2, 4)
        f = enc.encode(texts)
        assert (ub == np.packbits(f >= 0, axis=1)).all()
        assert enc.encode("one", output="int8-tanh").shape == (32,)
        f16 = enc.encode(texts, dims=16)
        np.testing.assert_allclose(f16, enc.encode(texts, output="float32", dims=16))
        with pytest.raises(UsageError, match="no binary output at 32 dims"):
            enc.encode(texts, output="binary")
        with pytest.raises(UsageError, match="dims must be between"):
            enc.encode(texts, output="int8", dims=64)


def test_cli_embed_output(outputs_build):
    from click.testing import CliRunner

    from embedc.cli import cli

    result, _ = outputs_build
    folder = str(result.out / result.artifacts[0].path)
    r = CliRunner().invoke(cli, ["embed", folder, "hello", "--output", "ubinary", "--dims", "16"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1]) and len(json.loads(r.output.strip().splitlines()[-1])) == 2
    r = CliRunner().invoke(cli, ["embed", folder, "hello", "--output", "binary"])
    assert r.exit_code != 0 and "no binary output" in r.output


def test_dims_wider_than_the_model_fail_before_the_export(tmp_path):
    from embedc.build.pipeline import build

    with pytest.raises(SpecError, match="larger than the model's embedding width 32"):
        build(_spec(tmp_path / "w", dims=(64,)), cache_dir=tmp_path / "c")
    assert not (tmp_path / "c" / "export").exists()


# ---- the index round trip (examples/index_client.py with usearch) ---------------------------------
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "index_client.py"


def _client():
    spec = importlib.util.spec_from_file_location("index_client", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["index_client"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_int8_and_ubinary_in_usearch(outputs_build):
    pytest.importorskip("usearch")

    import embedc

    client = _client()
    result, _ = outputs_build
    enc = embedc.load(result.out / result.artifacts[0].path)
    from embedc.calibration import load_default_corpus

    samples = load_default_corpus()
    docs = [s.text for s in samples if s.kind == "passage"][:120]
    queries = [s.text for s in samples if s.kind == "query"][:30]
    rep = client.report(enc, docs, queries, k=10)
    assert rep["bytes_per_vector"] == {"f32": 128, "i8": 32, "b1": 4}
    r = rep["recall_vs_f32"]
    assert set(r) == {"i8", "b1", "b1+rescore"}
    assert all(0.0 <= v <= 1.0 for v in r.values())
    # the random tiny model's vectors are nearly identical: int8 still keeps most of the ranking
    assert r["i8"] >= 0.5 and r["b1+rescore"] >= r["b1"] - 0.05
    idx = client.build_indexes(enc, docs[:20])
    assert "I8" in str(idx["i8"].dtype) and len(idx["b1"]) == 20
    assert np.asarray(idx["int8_docs"]).dtype == np.int8
    rep16 = client.report(enc, docs[:60], queries[:10], dims=16)
    assert rep16["bytes_per_vector"] == {"f32": 64, "i8": 16, "b1": 2}


# ---- pplx-embed: its native outputs by default ------------------------------------------------------
def test_pplx_build_emits_native_int8_and_binary(tmp_path, stage_cache):
    """A pplx-embed (bidirectional_pplx_qwen3) artifact carries ``pooler_output_int8`` (tanh) and
    ``pooler_output_binary`` without being asked, computed from ``pooler_output`` as pplx does."""
    import onnx

    import embedc
    from embedc.artifact import read_meta
    from embedc.build.pipeline import build
    from embedc.spec import BuildSpec, CalibrationSpec, MatrixEntry, ModelSpec

    spec = BuildSpec(model=ModelSpec(name="random-tiny-pplx"),
                     calibration=CalibrationSpec(calib_per_lang=1, eval_per_lang=2, max_length=32, eval_max_length=64,
                                                 long_per_lang=0),
                     matrix=(MatrixEntry("ort-cpu", ("fp32",)),), out=str(tmp_path / "pplx"),
                     outputs=OutputsSpec(gates={"*": ""}))
    result = build(spec, cache_dir=stage_cache)
    a = result.artifacts[0]
    assert a.status == "pass", a.error
    folder = result.out / a.path
    meta = read_meta(folder)
    co = meta["compressed_outputs"]
    assert [(o["name"], o["dtype"], o["scheme"], o["source"]) for o in co["outputs"]] == [
        ("pooler_output_int8", "int8", "tanh", "pooler_output"), ("pooler_output_binary", "int8", None, "pooler_output")]
    assert co["warnings"] == [] and co["untrained"] == [] and "calibration" not in co  # tanh needs no ranges
    graph = onnx.load(str(folder / meta["model_file"]), load_external_data=False).graph
    elem = {o.name: o.type.tensor_type.elem_type for o in graph.output}
    assert elem["pooler_output_int8"] == onnx.TensorProto.INT8 == elem["pooler_output_binary"]
    assert co["formula_check"]["pooler_output_binary"]["exact"]
    enc = embedc.load(folder)
    q = enc.encode(["hello", "world"], output="int8")
    assert q.dtype == np.int8 and q.shape == (2, 64)
    assert set(np.unique(enc.encode(["hello"], output="binary"))) <= {-1, 1}
