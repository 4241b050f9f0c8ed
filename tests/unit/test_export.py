"""FP32 reference export: real dynamo export of the tiny XLM-R, validated with ORT."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from embedc.artifact import ARTIFACT_JSON, read_meta
from embedc.errors import ExportValidationError, OutputExistsError, OutputLocationError, UsageError
from embedc.exporter import ValidationGate, export_reference


def test_reference_graph_is_dynamic_pooled_and_validated(tiny_reference, tiny_tokenizer):
    meta = read_meta(tiny_reference)
    assert meta["opset"] == 18 and meta["precision"] == "fp32"
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask"]
    v = meta["validation"]
    assert v["passed"] and v["min_cosine"] >= 0.99999 and v["max_abs_diff"] <= 1e-4
    # every cell of the probe grid ran: batch 1/3/8 x short/128/512 tokens
    assert {c["batch"] for c in v["cells"].values()} == {1, 3, 8}
    assert max(c["seq"] for c in v["cells"].values()) == 512
    model = onnx.load(str(tiny_reference / "model.onnx"))
    for inp in model.graph.input:
        assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert [o.name for o in model.graph.output] == ["sentence_embedding", "last_hidden_state"]
    assert (tiny_reference / "tokenizer.json").is_file()
    assert meta["model"]["random_weights"] is True


def test_embedding_is_masked_mean_and_normalized(tiny_reference, tiny_tokenizer):
    """Padding must not change a text's embedding; output has unit norm."""
    sess = ort.InferenceSession(str(tiny_reference / "model.onnx"), providers=["CPUExecutionProvider"])
    alone = tiny_tokenizer(["query: hello"], return_tensors="np")
    padded = tiny_tokenizer(["query: hello", "passage: a much longer text with many more tokens in it"],
                            padding=True, return_tensors="np")
    run = lambda b: sess.run(["sentence_embedding"], {k: b[k].astype(np.int64) for k in ("input_ids", "attention_mask")})[0]
    a, p = run(alone), run(padded)
    np.testing.assert_allclose(a[0], p[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-5)


def test_existing_output_refused_and_kept(tiny_source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("good earlier result")
    with pytest.raises(OutputExistsError, match="already exists.*--force"):
        export_reference(tiny_source, out)
    assert (out / "keep.txt").read_text() == "good earlier result"


@pytest.fixture()
def toy_source(tmp_path):
    """A model of the fast tier's toy family (hand-written ONNX graph): the export runs and is
    validated for real in ~1 s, where the tiny XLM-R's dynamo export takes 10-15 s."""
    from toy import make_toy_model, toy_family_registered

    from embedc.models import resolve_model

    with toy_family_registered():
        yield resolve_model(str(make_toy_model(tmp_path / "toy-model")))


def test_failed_run_with_force_keeps_earlier_result(toy_source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "embedc.json").write_text('{"format": "embedc-artifact/1", "stage": "export"}')  # --force replaces only embedc's
    (out / "keep.txt").write_text("good earlier result")
    # An impossible gate makes validation fail after the export: nothing may replace the old folder.
    with pytest.raises(ExportValidationError, match="disagrees with PyTorch"):
        export_reference(toy_source, out, force=True, gate=ValidationGate(min_cosine=1.1))
    assert sorted(p.name for p in out.iterdir()) == ["embedc.json", "keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "toy-model"]  # no temp folder left behind


def test_read_only_location(tiny_source, tmp_path):
    if os.geteuid() == 0:  # root ignores permission bits: use a read-only file system instead
        target = __import__("pathlib").Path("/sys/embedc-test-out")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "out"
    with pytest.raises(OutputLocationError, match="cannot (write|create)"):
        export_reference(tiny_source, target)
    assert not target.exists()


def test_output_path_is_a_file(tiny_source, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputLocationError, match="not a folder"):
        export_reference(tiny_source, f, force=True)


def test_bad_opset(tiny_source, tmp_path):
    with pytest.raises(UsageError, match="opset 23 is not supported"):
        export_reference(tiny_source, tmp_path / "o", opset=23)
    assert not (tmp_path / "o").exists()


def test_meta_records_versions_and_source(tiny_reference):
    meta = json.loads((tiny_reference / ARTIFACT_JSON).read_text())
    assert {"torch", "onnx", "onnxruntime", "transformers"} <= set(meta["versions"])
    assert meta["model"]["name"] == "random-tiny-xlmr"
    assert meta["prefixes"] == {"query": "query: ", "passage": "passage: "}
    assert {f["path"] for f in meta["files"]} >= {"model.onnx", "tokenizer.json"}
