"""A toy model family and a fake backend for the fast tier: the pipeline,
cache, gates, reports, JUnit and CLI run end to end through the real seams
(family registry, backend registry) without a torch export.

The toy model is a real (tiny) embedding model: byte-level tokenizer,
embedding table, one projection, tanh, LayerNorm; torch computes the
reference and a hand-written ONNX graph computes the same thing, so parity
numbers are real. The fake backend "compiles" by copying that graph, adding
seeded noise to the projection for the ``noisy`` precision (so gates can
fail for real), or raising a third-party error for ``broken``."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from embedc.errors import TargetError
from embedc.families.base import ModelAdapter, ModelFamily, Pooling
from embedc.reports import html as _html
from embedc.targets.base import Backend, Capabilities, CompileResult, Target

TOY_TYPE = "embedc-toy"
HIDDEN = 16
MAX_POSITIONS = 64
SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")
_DRAW_PLOTS = _html._plots  # the real renderer, before any test swaps it out


def make_toy_model(folder: Path, *, seed: int = 0, pooling: str = "mean") -> Path:
    """Write a toy model folder in the Hugging Face layout."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS)} | {c: i + len(SPECIALS) for i, c in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                            unk_token="[UNK]", model_max_length=MAX_POSITIONS).save_pretrained(str(folder))
    rng = np.random.default_rng(seed)
    weights = {"embed": rng.normal(0, 1, (len(vocab), HIDDEN)).astype(np.float32),
               "proj_w": rng.normal(0, 0.5, (HIDDEN, HIDDEN)).astype(np.float32),
               "proj_b": rng.normal(0, 0.1, (HIDDEN,)).astype(np.float32),
               "ln_w": (1 + rng.normal(0, 0.1, (HIDDEN,))).astype(np.float32),
               "ln_b": rng.normal(0, 0.1, (HIDDEN,)).astype(np.float32)}
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": TOY_TYPE, "hidden_size": HIDDEN,
                                                    "vocab_size": len(vocab),
                                                    "max_position_embeddings": MAX_POSITIONS}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(Pooling(pooling).st_config(HIDDEN)))
    return folder


@contextlib.contextmanager
def toy_family_registered():
    """The toy family registered while inside; removed after only if this call added it
    (another fixture of the same worker may hold it longer)."""
    from embedc.families.base import _FAMILIES, register_family

    added = ToyFamily.name not in _FAMILIES
    if added:
        register_family(ToyFamily())
    try:
        yield
    finally:
        if added:
            _FAMILIES.pop(ToyFamily.name, None)


@contextlib.contextmanager
def plots_drawn(drawn: bool):
    """Builds inside write report.html with (``True``) or without its two matplotlib plots:
    1.2-3 s a build, about half of a toy build's time. Suites that check files, exit codes and the
    cache turn them off; the tests that check the plots turn them back on."""
    before = _html._plots
    _html._plots = _DRAW_PLOTS if drawn else (lambda manifest: [])
    try:
        yield
    finally:
        _html._plots = before


def without_plots():
    return plots_drawn(False)


class ToyFamily(ModelFamily):
    name = "toy"
    model_types = (TOY_TYPE,)

    def adapter(self, source, config, tokenizer):
        return ModelAdapter(family=self.name, model_type=TOY_TYPE, attention="bidirectional",
                            pooling=Pooling.from_folder(source.path, Pooling("mean")),
                            max_length=int(config["max_position_embeddings"]), hidden_size=HIDDEN,
                            final_norm="layernorm", padding_side=tokenizer.padding_side)

    def load_torch(self, source, adapter=None):
        import torch
        from safetensors.torch import load_file

        w = load_file(str(source.path / "model.safetensors"))
        body = torch.nn.Module()
        body.embed = torch.nn.Embedding.from_pretrained(w["embed"])
        body.proj = torch.nn.Linear(HIDDEN, HIDDEN)
        body.proj.weight.data = w["proj_w"].T.contiguous()
        body.proj.bias.data = w["proj_b"]
        body.norm = torch.nn.LayerNorm(HIDDEN, eps=1e-5)
        body.norm.weight.data, body.norm.bias.data = w["ln_w"], w["ln_b"]
        return body.eval()

    def hidden_states(self, model, input_ids, attention_mask, adapter):
        import torch

        return model.norm(torch.tanh(model.proj(model.embed(input_ids))))

    def export_onnx(self, embedder, tokenizer, path, *, opset, external_data):
        """The same computation as ``hidden_states`` + mean pooling + L2 norm, written by hand."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        m = embedder.encoder
        inits = [numpy_helper.from_array(a, n) for n, a in (
            ("embed", m.embed.weight.detach().numpy()), ("proj_w", m.proj.weight.detach().numpy().T.copy()),
            ("proj_b", m.proj.bias.detach().numpy()), ("ln_w", m.norm.weight.detach().numpy()),
            ("ln_b", m.norm.bias.detach().numpy()), ("axis1", np.array([1], np.int64)),
            ("axis_last", np.array([-1], np.int64)), ("tiny", np.array(1e-9, np.float32)),
            ("eps", np.array(1e-12, np.float32)))]
        n = helper.make_node
        nodes = [n("Gather", ["embed", "input_ids"], ["e"]), n("MatMul", ["e", "proj_w"], ["p"], name="proj"),
                 n("Add", ["p", "proj_b"], ["pb"]), n("Tanh", ["pb"], ["t"]),
                 n("LayerNormalization", ["t", "ln_w", "ln_b"], ["last_hidden_state"], axis=-1, epsilon=1e-5),
                 n("Unsqueeze", ["attention_mask", "axis_last"], ["m3"]), n("Cast", ["m3"], ["mf"], to=1),
                 n("Mul", ["last_hidden_state", "mf"], ["hm"]), n("ReduceSum", ["hm", "axis1"], ["s"], keepdims=0),
                 n("ReduceSum", ["mf", "axis1"], ["c0"], keepdims=0), n("Max", ["c0", "tiny"], ["c"]),
                 n("Div", ["s", "c"], ["pooled"]), n("ReduceL2", ["pooled", "axis_last"], ["l2"], keepdims=1),
                 n("Max", ["l2", "eps"], ["l2c"]), n("Div", ["pooled", "l2c"], ["sentence_embedding"])]
        dims = ["batch", "sequence"]
        graph = helper.make_graph(
            nodes, "toy", [helper.make_tensor_value_info(i, TensorProto.INT64, dims)
                           for i in ("input_ids", "attention_mask")],
            [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", HIDDEN]),
             helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
            inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        onnx.checker.check_model(model)
        onnx.save(model, str(path))


class OrtRunner:
    def __init__(self, path: Path):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(self, feeds, outputs):
        return dict(zip(outputs, self.session.run(list(outputs), {k: feeds[k] for k in ("input_ids",
                                                                                          "attention_mask")})))

    def embed(self, feeds):
        return self.run(feeds, ["sentence_embedding"])["sentence_embedding"]


class FakeBackend(Backend):
    """fp32: a copy of the reference; int8-noisy: projection weights plus seeded noise
    (``noise`` x their std); int8-broken: a compile that raises a non-embedc error."""

    name = "fake"
    targets = (Target("fake-cpu", "fake", "cpu", "fake backend for the fast tests", ("fp32", "int8-noisy", "int8-broken")),
               Target("fake-gpu", "fake", "gpu", "fake GPU target (not benchmarkable here)", ("fp32",)))
    libraries = ("onnxruntime",)
    capabilities = Capabilities(report_marker="X")
    compiled: list = []   # names compiled in this process (cache tests read it)

    def resolve_options(self, target, precision, options):
        defaults = {"noise": 0.5 if precision == "int8-noisy" else 0.0}
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise TargetError(f"unknown option {unknown[0]!r} for {precision} on {target.name}",
                              f"valid options: {', '.join(defaults)}")
        out = {**defaults, **options}
        if not isinstance(out["noise"], (int, float)) or not 0 <= out["noise"] <= 10:
            raise TargetError(f"option noise={out['noise']!r} is invalid", "use a number in [0, 10]")
        return out

    def compile(self, target, precision, ctx, out_dir):
        import onnx
        from onnx import numpy_helper

        if precision == "int8-broken":
            raise RuntimeError("simulated third-party failure\nwith a second line nobody should see")
        model = onnx.load(str(ctx.reference_onnx))
        noise = float(self.resolve_options(target, precision, ctx.options)["noise"])
        for init in model.graph.initializer:
            if init.name == "proj_w" and noise:
                w = numpy_helper.to_array(init)
                w = w + np.random.default_rng(0).normal(0, noise * w.std(), w.shape).astype(np.float32)
                init.CopyFrom(numpy_helper.from_array(w, init.name))
        onnx.save(model, str(Path(out_dir) / "model.onnx"))
        FakeBackend.compiled.append(f"{target.name}/{precision}")
        return CompileResult(model_file="model.onnx", recipe={"noise": noise})

    def load(self, artifact_dir, meta, *, threads=None):
        return OrtRunner(Path(artifact_dir) / meta["model_file"])
