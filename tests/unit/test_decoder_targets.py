"""Every precision of the ORT and OpenVINO targets on the tiny decoders, both attention
modes: compiled from the real export, run with the runtime users get, judged against the
FP32 reference ONNX on held-out texts padded to the batch's longest.

Unlike the tiny encoder (which scores 1.0 under any quantization until its Linear weights
are scaled), the tiny Qwen3 decoders are sensitive as exported: RMSNorm and the q/k norms
amplify small changes. So they are judged unscaled, on their own floors (DECODER_FLOORS),
and INT8 weights rounded to 4-bit resolution miss the INT8 floor by far (shown per mode)."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from embedc.targets.openvino.backend import BACKEND as OPENVINO, PRECISIONS as OV_PRECISIONS, TARGETS as OV_TARGETS
from embedc.targets.ort.backend import BACKEND as ORT, PRECISIONS as ORT_PRECISIONS, TARGETS as ORT_TARGETS
from helpers import FLOORS, compile_once, cosines, embed, floor_of, meets_floor

MODELS = {"bidirectional": "random-tiny-pplx", "causal": "random-tiny-qwen3-embedding"}
TARGETS = {t.name: t for t in (*ORT_TARGETS, *OV_TARGETS)}
_BUILT: dict = {}
# (mean, min) per-text cosine. Measured (both modes, ORT and OpenVINO): int8 worst 0.99816 /
# 0.98782 (causal, ORT int8-dynamic per tensor; per block, the decoder default, 0.99983 / 0.99943),
# OpenVINO int8-static min 0.98998 (bidirectional);
# int4 worst 0.9689 / 0.91569 (causal, ORT); fp16 1.0. INT8 weights rounded to 4-bit resolution:
# 0.947 / 0.877 (bidirectional), 0.893 / 0.735 (causal).
DECODER_FLOORS = {**FLOORS, "int8": (0.997, 0.975), "int4": (0.96, 0.90)}


@dataclasses.dataclass
class Decoder:
    context: object        # CompileContext over the scaled export
    batches: list          # held-out texts, batches of 8 padded to their longest
    reference: np.ndarray  # the scaled reference ONNX's embeddings of them


@pytest.fixture(scope="module", params=sorted(MODELS))
def decoder(request, cached_export, tiny_splits, tmp_path_factory) -> Decoder:
    import onnxruntime as ort

    from embedc.artifact import read_meta
    from embedc.calibration import PromptStyle, length_distribution, tokenize_batches
    from embedc.models import load_tokenizer
    from embedc.targets.base import CompileContext

    ref = cached_export(MODELS[request.param])  # read only, as builds read it
    meta = read_meta(ref)
    tokenizer = load_tokenizer(ref)  # the tokenizer the export saved: padding side, pad and EOS as served
    style = PromptStyle(meta["prefixes"]["query"], meta["prefixes"]["passage"])
    names = [i["name"] for i in meta["inputs"]]
    calib = style.apply_all(tiny_splits.calibration)
    ctx = CompileContext(reference_dir=ref, reference_meta=meta, options={}, work_dir=tmp_path_factory.mktemp("work"),
                         calibration=tuple(tokenize_batches(tokenizer, calib, batch_size=1, max_length=128,
                                                            input_names=names)),
                         length_stats=length_distribution(tokenizer, calib, 512))
    batches = tokenize_batches(tokenizer, style.apply_all(tiny_splits.evaluation), batch_size=8, max_length=128,
                               input_names=names)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(ref / meta["model_file"]), opts, providers=["CPUExecutionProvider"])
    return Decoder(ctx, batches, np.concatenate([sess.run(["sentence_embedding"], b)[0] for b in batches]))


def _compile(decoder, tmp_path_factory, backend, target, precision, **options):
    build = compile_once(backend, TARGETS, decoder.context, tmp_path_factory,
                         _BUILT.setdefault(id(decoder), {}))
    return build(target, precision, **options)


def _cos(decoder, backend, out, res) -> np.ndarray:
    return _cos_against(decoder, backend, out, res, decoder.reference)


def _cos_against(decoder, backend, out, res, reference) -> np.ndarray:
    runner = backend.load(out, {"model_file": res.model_file, "runtime": res.runtime}, threads=1)
    emb = embed(runner, decoder.batches)
    assert emb.dtype == np.float32 and emb.shape == reference.shape
    return cosines(emb, reference)


@pytest.mark.parametrize("backend, target, precision",
                         [(ORT, "ort-cpu", p) for p in ORT_PRECISIONS]
                         + [(OPENVINO, "openvino-cpu", p) for p in OV_PRECISIONS])
def test_decoder_precision_meets_its_floor(decoder, tmp_path_factory, backend, target, precision):
    out, res = _compile(decoder, tmp_path_factory, backend, target, precision)
    cos = _cos(decoder, backend, out, res)
    assert meets_floor(cos, precision, DECODER_FLOORS), (target, precision, cos.mean(), cos.min(),
                                                         floor_of(precision, DECODER_FLOORS))
    if precision.startswith("int"):  # the scaled model is sensitive: quantization visibly moves it
        assert cos.min() < 0.999999, (target, precision, cos.min())


def test_decoder_int8_floor_fails_a_broken_quantizer(decoder, tmp_path_factory, tmp_path):
    """ORT int8-static with its INT8 weights rounded to 4-bit resolution must miss the INT8 floor."""
    from onnx import numpy_helper

    out, res = _compile(decoder, tmp_path_factory, ORT, "ort-cpu", "int8-static")
    model = onnx.load(str(out / res.model_file))
    broken_weights = 0
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2 and "embed" not in t.name:
            q = numpy_helper.to_array(t).astype(np.int32)
            t.CopyFrom(numpy_helper.from_array(np.clip(np.round(q / 16) * 16, -128, 127).astype(np.int8), t.name))
            broken_weights += 1
    assert broken_weights >= 7 * 2   # every Linear of both layers, at least
    broken = tmp_path / "broken"
    broken.mkdir()
    onnx.save(model, str(broken / res.model_file))
    assert meets_floor(_cos(decoder, ORT, out, res), "int8", DECODER_FLOORS)
    assert not meets_floor(_cos(decoder, ORT, broken, res), "int8", DECODER_FLOORS)


def test_decoder_int8_dynamic_quantizes_activations_per_block(decoder, tmp_path_factory):
    """On a decoder, ORT int8-dynamic defaults to 8-bit MatMulNBits (activations quantized per
    block of each token at run time): every Linear, no per-tensor MatMulInteger path."""
    out, res = _compile(decoder, tmp_path_factory, ORT, "ort-cpu", "int8-dynamic")
    model = onnx.load(str(out / res.model_file))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    attrs = [{a.name: a.i for a in n.attribute} for n in nbits]
    assert len(nbits) == len(res.recipe["quantized"]) == 7 * 2  # every Linear of both layers
    assert all(a["bits"] == 8 and a["accuracy_level"] == 4 and a["block_size"] == 32 for a in attrs)
    assert not {"MatMulInteger", "DynamicQuantizeLinear"} & {n.op_type for n in model.graph.node}
    assert res.recipe["activations"] == "per-block (auto: decoder family)"
    per_block = _cos(decoder, ORT, out, res)
    out_t, res_t = _compile(decoder, tmp_path_factory, ORT, "ort-cpu", "int8-dynamic", activations="per-tensor")
    assert {"MatMulInteger"} <= {n.op_type for n in onnx.load(str(out_t / res_t.model_file)).graph.node}
    per_tensor = _cos(decoder, ORT, out_t, res_t)
    # measured (mean / min): bidirectional 0.99994 / 0.99981 per block vs 0.99978 / 0.99924 per tensor,
    # causal 0.99983 / 0.99943 vs 0.99816 / 0.98782
    assert per_block.min() > per_tensor.min() and per_block.mean() > per_tensor.mean()


def test_decoder_int4_keeps_the_appended_eos_row_exact(decoder, tmp_path_factory):
    """ORT int4 keeps the table row of the token the tokenizer appends to every text (Qwen3-Embedding:
    its EOS) in FP32. With last-token pooling that token is the one pooled, so its row's 4-bit
    rounding moves every embedding the same way (SmolLM2-135M: benchmarks/int4_recipes.md).
    pplx appends nothing: its table is all 4-bit."""
    from embedc.models import load_tokenizer

    tokenizer = load_tokenizer(decoder.context.reference_dir)
    out, res = _compile(decoder, tmp_path_factory, ORT, "ort-cpu", "int4")
    if decoder.context.adapter["attention"] == "bidirectional":
        assert tokenizer("")["input_ids"] == [] and "exact_rows" not in res.recipe["embedding"]
        return
    last_tokens = {tuple(tokenizer(text)["input_ids"][-1:]) for text in ("a", "a longer text.", "日本語のテキスト")}
    assert [list(t) for t in last_tokens] == [res.recipe["embedding"]["exact_rows"]["token_ids"]]
    exact = _cos(decoder, ORT, out, res)
    out_off, res_off = _compile(decoder, tmp_path_factory, ORT, "ort-cpu", "int4", exact_template_rows=False)
    rounded = _cos(decoder, ORT, out_off, res_off)
    # measured (mean / min): 0.99509 / 0.98744 with the exact row, 0.99192 / 0.98381 without
    assert exact.mean() - rounded.mean() > 0.001


@pytest.mark.parametrize("options, named", [({"per_channel": False}, "per_channel does not apply"),
                                            ({"exclude": ["self_attn", "mlp"]}, "leaves no MatMul")])
def test_decoder_int8_dynamic_usage_errors_write_nothing(decoder, tmp_path, options, named):
    """activations=auto picks per-block on a decoder: a per-tensor-only option, or excluding
    every Linear, is a one-line usage error before any file is written."""
    from embedc.errors import TargetError

    ctx = dataclasses.replace(decoder.context, options=options, work_dir=tmp_path / "work")
    with pytest.raises(TargetError, match=named) as err:
        ORT.compile(TARGETS["ort-cpu"], "int8-dynamic", ctx, tmp_path / "out")
    assert err.value.exit_code == 2 and err.value.hint and "\n" not in str(err.value)
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_decoder_fp16_survives_residuals_whose_square_overflows_fp16(decoder, tmp_path):
    """A decoder's residual stream can reach ~25,000 (SmolLM2): representable in FP16, but
    mean(x^2) is not. With the word-embedding table scaled so every token's RMS exceeds 256,
    ORT fp16 must keep each RMSNorm whole in FP32 and still embed like the FP32 graph."""
    import onnxruntime as ort

    from embedc.artifact import read_meta
    from embedc.onnxkit.graph import word_embedding_gather
    from embedc.onnxkit.norms import rmsnorm_groups
    from embedc.targets.base import CompileContext
    from helpers import scaled_copy

    ref = scaled_copy(decoder.context.reference_dir, tmp_path / "loud", 3e4,
                      tensors=lambda m: [word_embedding_gather(m).input[0]])
    model = onnx.load(str(ref / "model.onnx"))
    table = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer
                                            if t.name == word_embedding_gather(model).input[0]))
    rms = np.sqrt((table.astype(np.float64) ** 2).mean(1))
    assert (rms[rms > 0] > 256).all()        # mean(x^2) > 65504 for every token (zero rows: unused ids)
    assert np.abs(table).max() < 30000                                      # x itself fits FP16
    ctx = CompileContext(reference_dir=ref, reference_meta=read_meta(ref), calibration=(), length_stats={},
                         options={}, work_dir=tmp_path / "work")
    out = tmp_path / "fp16"
    res = ORT.compile(TARGETS["ort-cpu"], "fp16", ctx, out)
    groups = rmsnorm_groups(model)  # per layer: input, post-attention, q and k norms; then the final one
    norm_nodes = sum(len(g.nodes) for g in groups)
    assert res.recipe["settings"]["node_block_list"] == f"{norm_nodes} RMSNorm nodes" and len(groups) >= 4 * 2 + 1
    assert res.recipe["settings"]["fp16_casts_removed"] >= 2 * 4 * len(groups)  # Pow -> ... -> Reciprocal
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(ref / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    want = np.concatenate([sess.run(["sentence_embedding"], b)[0] for b in decoder.batches])
    cos = _cos_against(decoder, ORT, out, res, want)
    assert meets_floor(cos, "fp16", DECODER_FLOORS), (cos.mean(), cos.min())
