"""Artifacts load in sentence-transformers (onnx / openvino backends) and give
the same embeddings as embedc.load, on real builds of the tiny model. The tests that
load through sentence-transformers need optimum, which installs only on the legacy
lock: they are marked st_backends and run there (pytest -m legacy_stack)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import embedc
from embedc.artifact import read_meta
from embedc.runtime.st_compat import st_load_call, write_st_files

QUERIES = ["how tall is the Eiffel tower?", "¿Dónde está la estación de tren?", "東京の人口は何人ですか",
           "Wie spät ist es?", "x"]
PASSAGES = ["The Eiffel tower is 330 metres tall and stands in Paris.",
            "La estación de tren está en el centro de la ciudad, junto al río.",
            "東京都の人口は約1400万人です。", "Россия — самая большая страна в мире по площади.",
            "A passage longer than the model's 512 tokens, so truncation must agree too. " * 40]
PAIRS = ["ort-cpu/fp32", "ort-cpu/int8-dynamic", "openvino-cpu/fp32", "openvino-cpu/int8-weights"]


@pytest.fixture(scope="module")
def st_build(tmp_path_factory, stage_cache):
    """A real build of ORT and OpenVINO artifacts (the pipeline writes the ST files)."""
    from embedc.build.pipeline import build
    from embedc.spec import BuildSpec, CalibrationSpec, MatrixEntry, ModelSpec

    spec = BuildSpec(model=ModelSpec(name="random-tiny-xlmr"),
                     calibration=CalibrationSpec(calib_per_lang=2, eval_per_lang=4, max_length=64),
                     matrix=(MatrixEntry("ort-cpu", ("fp32", "int8-dynamic")),
                             MatrixEntry("openvino-cpu", ("fp32", "int8-weights"))),
                     out=str(tmp_path_factory.mktemp("st") / "build"))
    result = build(spec, cache_dir=stage_cache)
    assert [a.status for a in result.artifacts] == ["pass"] * len(PAIRS)
    return result.out


def _st_model(folder: Path, load: dict):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), backend=load["backend"], model_kwargs=dict(load["model_kwargs"]))


@pytest.mark.parametrize("pair", PAIRS[2:])
def test_runtime_load_reproduces_recorded_parity_of_openvino_artifacts(st_build, stage_cache, pair):
    from helpers import assert_load_reproduces_parity

    assert_load_reproduces_parity(st_build / pair, stage_cache)


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.st_backends
@pytest.mark.legacy_stack
def test_sentence_transformers_reproduces_the_artifact(st_build, pair):
    folder = st_build / pair
    meta = read_meta(folder)
    info = write_st_files(folder, meta, Path(meta["model"]["path"]))
    assert info["loadable"], info.get("reason")
    assert info["prompts"] == {"query": "query: ", "passage": "passage: "}
    assert all((folder / f).is_file() for f in info["files"])
    # the model's own maximum, not the calibration or parity length: ST must see what torch would
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == meta["max_length"] == 512
    json.dumps(info)  # recorded in embedc.json as is

    model = _st_model(folder, info["load"])
    assert len(model.tokenizer(PASSAGES[-1])["input_ids"]) > 512
    enc = embedc.load(folder)  # still verifies: the ST files are additions
    for kind, texts in (("query", QUERIES), ("passage", PASSAGES)):
        got = model.encode(texts, prompt_name=kind, convert_to_numpy=True)
        want = enc.encode(texts, kind=kind)
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert cos.min() > 0.99999, (pair, kind, cos)
        # and the prompt matters, so it really was applied
        bare = model.encode(texts, convert_to_numpy=True)
        assert ((bare * want).sum(1) < 0.99999).any()


def _copy_artifact(src: Path, dst: Path) -> tuple[Path, dict]:
    """The artifact as the pipeline made it (its inventory), without ST files."""
    meta = read_meta(src)
    st_files = set((meta.get("sentence_transformers") or {}).get("files", []))
    for entry in [f for f in meta["files"] if f["path"] not in st_files] + [{"path": "embedc.json"}]:
        (dst / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / entry["path"], dst / entry["path"])
    return dst, meta


@pytest.mark.st_backends
@pytest.mark.legacy_stack
def test_onnx_without_last_hidden_state_is_refused_and_st_would_fail(st_build, tmp_path):
    """optimum picks ``last_hidden_state`` by name: a graph whose token output
    is named otherwise cannot load, so no files are written."""
    import onnx

    folder, meta = _copy_artifact(st_build / "ort-cpu" / "fp32", tmp_path / "a")
    model = onnx.load(str(folder / "model.onnx"))
    for o in model.graph.output:
        o.name = "token_embeddings" if o.name == "last_hidden_state" else o.name
    for node in model.graph.node:
        for names in (node.input, node.output):
            names[:] = ["token_embeddings" if x == "last_hidden_state" else x for x in names]
    onnx.save(model, str(folder / "model.onnx"))

    info = write_st_files(folder, meta, None)
    assert not info["loadable"] and "'last_hidden_state'" in info["reason"] and info["files"] == []
    assert not (folder / "modules.json").exists()

    # the refusal is real: with the ST files in place, sentence-transformers fails on that name
    loadable = write_st_files(st_build / "ort-cpu" / "fp32", read_meta(st_build / "ort-cpu" / "fp32"), None)
    for f in loadable["files"]:
        (folder / f).parent.mkdir(exist_ok=True)
        shutil.copyfile(st_build / "ort-cpu" / "fp32" / f, folder / f)
    with pytest.raises(KeyError, match="last_hidden_state"):
        _st_model(folder, loadable["load"]).encode(["hello"], prompt_name="query")


@pytest.mark.st_backends
@pytest.mark.legacy_stack
def test_ir_named_model_xml_is_refused(st_build, tmp_path):
    # (no "openvino" in this test's name: optimum-intel matches its pattern against the whole path)
    folder, meta = _copy_artifact(st_build / "openvino-cpu" / "fp32", tmp_path / "ir")
    (folder / "openvino_model.xml").rename(folder / "model.xml")
    (folder / "openvino_model.bin").rename(folder / "model.bin")
    meta = {**meta, "model_file": "model.xml", "runtime": {**meta["runtime"], "weights": "model.bin"}}
    info = write_st_files(folder, meta, None)
    assert not info["loadable"] and "openvino_model.xml" in info["reason"]

    # the refusal is real: optimum-intel does not see model.xml and tries to export torch weights
    good = write_st_files(st_build / "openvino-cpu" / "fp32", read_meta(st_build / "openvino-cpu" / "fp32"), None)
    for f in good["files"]:
        (folder / f).parent.mkdir(exist_ok=True)
        shutil.copyfile(st_build / "openvino-cpu" / "fp32" / f, folder / f)
    kwargs = {**good["load"]["model_kwargs"], "file_name": "model.xml"}
    with pytest.raises(OSError, match="model.safetensors"):
        _st_model(folder, {"backend": "openvino", "model_kwargs": kwargs})


def test_backends_sentence_transformers_cannot_run(tmp_path):
    load, reason = st_load_call(tmp_path, {"backend": "tensorrt", "model_file": "model.engine"})
    assert load is None and "tensorrt" in reason
    load, reason = st_load_call(tmp_path, {"backend": "openvino", "model_file": "model_b1_l128.xml",
                                           "runtime": {"static_shapes": True}})
    assert load is None and "static-shape" in reason


def test_instruct_prompts_are_the_prefixes_embedc_applies():
    from embedc.runtime.st_compat import _prompts

    meta = {"prefixes": {"query": "", "passage": ""},
            "prompt_style": {"query_prefix": "", "passage_prefix": "", "instruct_task": "Find the answer"}}
    assert _prompts(meta) == {"query": "Instruct: Find the answer\nQuery: ", "passage": ""}
