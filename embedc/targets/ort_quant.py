"""Quantization recipes of the ONNX Runtime backend, and the graph helpers they share.

Imported lazily by :mod:`embedc.targets.ort` (onnx / onnxruntime load here).
Every recipe returns a JSON-ready dict saying exactly what it did: library
calls, settings, and which nodes were quantized or kept out, by module path
(``encoder.encoder.layer.11.output.dense``) next to the opaque node name.

Recipe decisions (measured on multilingual-e5-small and all-MiniLM-L6-v2):

* INT8 static is QDQ via ``quantize_static`` on the Linear MatMuls only,
  per-channel weights, outputs left float. ORT 1.32's QDQ MatMul ignores
  ``MatMulConstBOnly`` and quantizes MatMul outputs, and its QDQ pair rewires
  every reader of a quantized tensor, so the post-LayerNorm residual would be
  INT8 too: hence ``nodes_to_quantize``, ``OpTypesToExcludeOutputQuantization``
  and an Identity that gives each MatMul group its own input. (That config
  alone took MiniLM from mean cosine 0.917 to 0.993.)
* Outlier channels: SmoothQuant-style per-channel scaling on each MatMul
  group's input (an explicit Mul: BERT is post-LN, so it cannot fold into
  LayerNorm), alpha picked per group by emulated output SQNR. Then MatMuls are
  ranked by the SQNR of their output with only that MatMul quantized (ORT's own
  scales on the float activations), and the worst are taken out of static
  quantization until the sentence-embedding cosine on the *calibration* texts
  meets a target. Taken-out MatMuls become 8-bit ``MatMulNBits`` (INT8 weights
  per block of 32, activations quantized per block at run time with
  ``accuracy_level`` 4), so the size stays INT8.
* The word-embedding table (81% of multilingual-e5-small) is an 8-bit
  symmetric ``GatherBlockQuantized``, one scale per block of the row: ORT's
  QDQ/QOperator Gather quantization is per-tensor (row cosine 0.9993 mean,
  0.991 min on MiniLM's table vs 0.99998 / 0.9999 per block), and ORT 1.32's
  ``MatMulNBitsQuantizer`` writes only 4-bit Gathers, so the 8-bit table is
  written here; the op is ORT's.
"""
from __future__ import annotations

import ast
import contextlib
import io
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import CompileError, MissingDependencyError

SCOPE_KEY = "pkg.torch.onnx.name_scopes"
# Above this many bytes of initializers a model is saved with external data
# (protobuf's hard limit is 2 GiB; leave room for the graph itself).
EXTERNAL_DATA_BYTES = 1_800_000_000
MS_DOMAIN = "com.microsoft"


# --------------------------------------------------------------------------- graph helpers
def load_model(path: Path, *, what: str = "reference ONNX") -> onnx.ModelProto:
    """Load a model (and its external data); unreadable files raise CompileError."""
    try:
        onnx.checker.check_model(str(path))  # by path: works above 2 GB, catches truncated graphs
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, ValidationError, OSError, ...
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CompileError(f"{what} {path} is unreadable or invalid (truncated or corrupted?): {detail}",
                           "re-run 'embedc export' to rebuild the reference model") from exc


def module_path(node: onnx.NodeProto) -> str:
    """The torch module a node came from (dynamo's name scopes), else its node name."""
    for prop in node.metadata_props:
        if prop.key == SCOPE_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            modules = [s for s in scopes[:-1] if s]  # the last scope is the aten op itself
            if modules:
                return modules[-1]
    return node.name


def module_paths(model: onnx.ModelProto) -> dict[str, str]:
    return {n.name: module_path(n) for n in model.graph.node}


def scope_matches(path: str, patterns: Sequence[str]) -> bool:
    """True when a pattern occurs in the module path on dot boundaries
    (``layer.1`` matches ``...layer.1.output.dense``, not ``layer.11...``)."""
    padded = f".{path}."
    return any(f".{p.strip('.')}." in padded for p in patterns if p.strip("."))


def initializer_map(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMuls whose B input is a 2-D initializer (the Linear layers)."""
    inits = initializer_map(model)
    return [n for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]


def table_gathers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Gathers over a 2-D initializer table (word, position, token-type embeddings)."""
    inits = initializer_map(model)
    return [n for n in model.graph.node
            if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2]


def word_embedding_gather(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The Gather over the largest table: the word embeddings."""
    inits = initializer_map(model)
    gathers = table_gathers(model)
    return max(gathers, key=lambda n: inits[n.input[0]].dims[0]) if gathers else None


def initializer_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for t in model.graph.initializer:
        if t.raw_data:
            total += len(t.raw_data)
        else:
            itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            total += itemsize * math.prod(t.dims)
    return total


def needs_external_data(model: onnx.ModelProto) -> bool:
    return initializer_bytes(model) > EXTERNAL_DATA_BYTES


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """One file under the protobuf limit, else ``<name>.data`` beside it."""
    path = Path(path)
    external = needs_external_data(model)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)


def model_files(path: Path) -> list[Path]:
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return [path, data] if data.exists() else [path]


def files_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in model_files(path))


def copy_model(src: Path, dst: Path) -> None:
    """Copy a model file and its external data file (same relative name)."""
    for p in model_files(src):
        shutil.copyfile(p, Path(dst).with_name(Path(dst).name + p.name[len(Path(src).name):]))


def ensure_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    for op in model.opset_import:
        if op.domain == domain:
            op.version = max(op.version, version)
            return
    model.opset_import.append(helper.make_opsetid(domain, version))


def _remove_unused_initializer(model: onnx.ModelProto, name: str) -> None:
    if any(name in n.input for n in model.graph.node):
        return
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            del model.graph.initializer[i]
            return


def _block_for(width: int, block_size: int) -> int:
    """The largest power of two <= block_size (and >= 16) dividing ``width``."""
    b = block_size
    while b > 16 and width % b:
        b //= 2
    return b


def quantize_table_8bit(model: onnx.ModelProto, node_name: str, block_size: int = 128) -> dict:
    """Replace a Gather over a float table by an 8-bit ``GatherBlockQuantized``:
    symmetric, one fp32 scale per row block, stored as uint8 around ORT's
    default zero point 128 (no zero-point tensor: -0.75 MB on e5-small's table
    for a row cosine of 0.99998 mean / 0.9998 min vs 0.99999 / 0.99993 asymmetric)."""
    inits = initializer_map(model)
    idx, node = next((i, n) for i, n in enumerate(model.graph.node) if n.name == node_name)
    table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    rows, width = table.shape
    block = _block_for(width, block_size)
    if width % block:
        raise CompileError(f"embedding width {width} has no power-of-two block >= 16",
                           "pass quantize_embedding=false for this model")
    blocks = table.reshape(rows, width // block, block)
    scale = np.abs(blocks).max(axis=2, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.round(blocks / scale), -127, 127)
    base = node.input[0]
    data = numpy_helper.from_array((q + 128).astype(np.uint8).reshape(rows, width), base + "_Q8")
    scales = numpy_helper.from_array(scale.reshape(rows, -1).astype(np.float32), base + "_scales")
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    new = helper.make_node("GatherBlockQuantized", [data.name, node.input[1], scales.name], list(node.output),
                           name=node.name + "_Q8", domain=MS_DOMAIN, gather_axis=axis, quantize_axis=1,
                           block_size=block, bits=8)
    new.metadata_props.extend(node.metadata_props)
    model.graph.node.remove(node)
    model.graph.node.insert(idx, new)
    model.graph.initializer.extend([data, scales])
    _remove_unused_initializer(model, base)
    ensure_opset(model, MS_DOMAIN, 1)
    cos = _row_cosines(table, (q * scale).reshape(rows, width))
    return {"node": node_name, "module": module_path(node), "op": "com.microsoft.GatherBlockQuantized",
            "bits": 8, "block_size": block, "scheme": "symmetric int8 (uint8 + default zero point 128), "
                                                      "fp32 scale per row block",
            "rows": rows, "width": width, "row_cosine_mean": round(float(cos.mean()), 6),
            "row_cosine_min": round(float(cos.min()), 6)}


DEBUG_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node", "pkg.torch.onnx.class_hierarchy",
                  "namespace")


def strip_debug_metadata(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debug strings (stack traces with local
    paths, FX nodes: ~1 MB on e5-small); keep the module-path name scopes."""
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key not in DEBUG_METADATA]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(keep)


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = np.einsum("ij,ij->i", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)


def node_entries(paths: dict[str, str], names: Sequence[str]) -> list[dict]:
    """``[{"node": name, "module": module path}]`` for recipes."""
    return [{"node": n, "module": paths.get(n, n)} for n in names]


# --------------------------------------------------------------------------- ORT plumbing
@contextlib.contextmanager
def quiet_ort_logs() -> Iterator[None]:
    """ORT's quantizers log at INFO/WARNING on the root logger (and
    matmul_nbits_quantizer calls logging.basicConfig(INFO) at import);
    keep the user's logging as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)


def import_quantization():
    try:
        with quiet_ort_logs():
            import onnxruntime.quantization as q  # noqa: PLC0415
            from onnxruntime.quantization import matmul_nbits_quantizer  # noqa: F401, PLC0415
    except ImportError as exc:
        raise MissingDependencyError(f"onnxruntime quantization tools are unavailable ({exc})",
                                     "pip install 'embedc[ort]' (onnxruntime and onnx-ir)") from exc
    return q


def feed_reader(feeds: Sequence[dict[str, np.ndarray]], input_names: Sequence[str]):
    """A CalibrationDataReader over the shared tokenized batches (deep-copyable for GPTQ)."""
    q = import_quantization()

    class FeedReader(q.CalibrationDataReader):
        def __init__(self, items):
            self.items = [{n: np.ascontiguousarray(f[n], dtype=np.int64) for n in input_names} for f in items]
            self.start, self.end, self.pos = 0, len(self.items), 0

        def get_next(self):
            if self.start + self.pos >= self.end:
                return None
            self.pos += 1
            return self.items[self.start + self.pos - 1]

        def rewind(self):
            self.pos = 0

        def set_range(self, start_index: int, end_index: int):
            self.start, self.end, self.pos = start_index, min(end_index, len(self.items)), 0

        def __len__(self):
            return len(self.items)

    return FeedReader(feeds)


def session(path: Path, threads: int | None):
    import onnxruntime as ort  # noqa: PLC0415

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def embed_feeds(path: Path, feeds: Sequence[dict[str, np.ndarray]], input_names: Sequence[str],
                threads: int | None) -> np.ndarray:
    sess = session(path, threads)
    out = [sess.run(["sentence_embedding"], {n: f[n] for n in input_names})[0] for f in feeds]
    return np.concatenate(out, axis=0).astype(np.float32)


def cosine_stats(ref: np.ndarray, cand: np.ndarray) -> dict:
    cos = _row_cosines(ref.astype(np.float64), cand.astype(np.float64))
    return {"mean": round(float(cos.mean()), 6), "p01": round(float(np.percentile(cos, 1)), 6),
            "min": round(float(cos.min()), 6)}


# --------------------------------------------------------------------------- INT8 dynamic
def quantize_int8_dynamic(src: Path, dst: Path, *, settings: dict, options: dict, work: Path) -> dict:
    """``quantize_dynamic`` on the Linear MatMuls (+ the 8-bit block table)."""
    q = import_quantization()
    model = load_model(src)
    paths = module_paths(model)
    matmuls = weight_matmuls(model)
    excluded = [n.name for n in matmuls if scope_matches(paths[n.name], options["exclude"])]
    recipe: dict = {"embedding": None}
    prep = work / "dynamic-input.onnx"
    if options["quantize_embedding"]:
        recipe["embedding"] = _table(model, options)
    strip_debug_metadata(model)
    save_model(model, prep)
    kwargs = dict(op_types_to_quantize=["MatMul"], per_channel=options["per_channel"],
                  reduce_range=settings["reduce_range"], weight_type=q.QuantType[settings["weight_type"]],
                  nodes_to_exclude=excluded, use_external_data_format=needs_external_data(model),
                  extra_options={"MatMulConstBOnly": True})
    with quiet_ort_logs():
        q.quantize_dynamic(str(prep), str(dst), **kwargs)
    for p in model_files(prep):
        p.unlink()
    quantized = [n.name for n in matmuls if n.name not in excluded]
    recipe.update({
        "library_call": "onnxruntime.quantization.quantize_dynamic",
        "settings": {**{k: v for k, v in kwargs.items() if k not in ("weight_type", "nodes_to_exclude")},
                     "weight_type": settings["weight_type"], "activations": "uint8, per tensor, at run time"},
        "kernels": "DynamicQuantizeLinear + MatMulInteger (fused to DynamicQuantizeMatMul at load)",
        "quantized": node_entries(paths, quantized),
        "excluded": [{**e, "reason": "option exclude", "as": "fp32"} for e in node_entries(paths, excluded)],
    })
    return recipe


def _table(model: onnx.ModelProto, options: dict) -> dict | None:
    node = word_embedding_gather(model)
    if node is None:
        return None
    return quantize_table_8bit(model, node.name, options.get("embedding_block_size", 128))


# --------------------------------------------------------------------------- INT8 static
def calibrate(model_path: Path, feeds: Sequence[dict[str, np.ndarray]], input_names: Sequence[str],
              method: str, cache: Path, work: Path, options: dict) -> dict:
    """Activation ranges of every MatMul input/output over the calibration
    feeds, saved as ORT's calibration cache (reused by every quantize pass).

    Histogram methods (Entropy/Percentile) stack a batch's outputs, so they
    need equal shapes; here each feed is collected on its own (batch 1, its
    own length) and the histograms merge across calls, so no padding is needed
    and memory stays at one feed's activations."""
    q = import_quantization()
    extra: dict = {"per_channel": False}
    if method == "MinMax":
        extra["max_intermediate_outputs"] = 32
    if method == "Percentile":
        extra["percentile"] = options["percentile"]
    started = time.perf_counter()
    with quiet_ort_logs(), contextlib.redirect_stdout(io.StringIO()):  # the histogram collector prints per call
        calibrator = q.create_calibrator(Path(model_path), ["MatMul"], augmented_model_path=str(work / "augmented.onnx"),
                                         calibrate_method=q.CalibrationMethod[method],
                                         use_external_data_format=files_bytes(model_path) > EXTERNAL_DATA_BYTES,
                                         extra_options=extra)
        reader = feed_reader(feeds, input_names)
        if method == "MinMax":
            calibrator.collect_data(reader)
        else:
            for i in range(len(reader)):
                reader.set_range(i, i + 1)
                calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        q.save_tensors_data(ranges, cache)
    del calibrator
    for p in work.glob("augmented.onnx*"):
        p.unlink()
    out = {"method": method, "count": len(feeds), "seconds": round(time.perf_counter() - started, 1),
           "tensors": len(ranges.data),
           "how": "create_calibrator over the MatMul tensors, one batch-1 feed per collect_data call for "
                  "histogram methods (no padding), ranges saved with save_tensors_data and reused via "
                  "quantize_static(calibration_cache_path=...)"}
    if method == "Percentile":
        out["percentile"] = options["percentile"]
    return out


def weight_only_8bit(model: onnx.ModelProto, names: Sequence[str], *, block_size: int = 32,
                     accuracy_level: int = 4) -> onnx.ModelProto:
    """Turn the given float MatMuls into 8-bit ``MatMulNBits``: weights INT8 per
    block of ``block_size`` along K; with accuracy_level 4 the activations are
    quantized per block at run time, which is what outlier-heavy inputs need."""
    import_quantization()
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # noqa: PLC0415

    wanted = set(names)
    others = [n.name for n in weight_matmuls(model) if n.name not in wanted]
    with quiet_ort_logs():
        quant = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level, nodes_to_exclude=others,
                                     op_types_to_quantize=("MatMul",))
        quant.process()
    return quant.model.model


class ActivationStats:
    """One float pass over the calibration feeds: per-channel min/max of every
    MatMul input, a seeded sample of its rows (tokens) for local error
    estimates, and the float ``sentence_embedding`` of each feed."""

    def __init__(self, path: Path, tensors: Sequence[str], feeds, input_names, threads: int | None,
                 rows: int = 2048, seed: int = 0):
        model = onnx.load(str(path))
        have = {o.name for o in model.graph.output}
        model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                                  for t in tensors if t not in have)
        probe = path.with_name("stats-probe.onnx")
        save_model(model, probe)
        del model
        sess = session(probe, threads)
        total = sum(int(np.prod(f["input_ids"].shape)) for f in feeds)
        keep = min(1.0, rows / max(total, 1))
        rng = np.random.default_rng(seed)
        self.lo: dict[str, np.ndarray] = {}
        self.hi: dict[str, np.ndarray] = {}
        samples: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
        embeddings = []
        names = ["sentence_embedding", *tensors]
        for feed in feeds:
            out = sess.run(names, {n: feed[n] for n in input_names})
            embeddings.append(out[0])
            pick = None
            for t, x in zip(tensors, out[1:]):
                x = x.reshape(-1, x.shape[-1])
                if pick is None:
                    pick = rng.random(x.shape[0]) < keep
                self.lo[t] = np.minimum(self.lo[t], x.min(0)) if t in self.lo else x.min(0)
                self.hi[t] = np.maximum(self.hi[t], x.max(0)) if t in self.hi else x.max(0)
                samples[t].append(x[pick])
        del sess
        for p in model_files(probe):
            p.unlink()
        self.samples = {t: np.concatenate(v) for t, v in samples.items()}
        self.embeddings = np.concatenate(embeddings).astype(np.float32)


def _fake_quant_act(x: np.ndarray, lo: float, hi: float, signed: bool) -> np.ndarray:
    """Per-tensor MinMax activation quantization as ORT computes it (uint8
    asymmetric, or int8 symmetric), applied and undone."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if signed:
        a = max(-lo, hi)
        scale = a / 127.0 if a > 0 else 1.0
        return np.clip(np.round(x / scale), -127, 127) * scale
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_quant_weight(w: np.ndarray, reduce_range: bool) -> np.ndarray:
    """Per-output-channel symmetric INT8 weights (7 bits with reduce_range)."""
    qmax = 63.0 if reduce_range else 127.0
    scale = np.abs(w).max(0, keepdims=True) / qmax
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale), -qmax - 1, qmax) * scale


def _sqnr(y: np.ndarray, y_hat: np.ndarray) -> float:
    noise = float(np.square(y - y_hat, dtype=np.float64).sum())
    return 10 * math.log10(float(np.square(y, dtype=np.float64).sum()) / max(noise, 1e-30))


SMOOTH_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SMOOTH_MIN_GAIN_DB = 0.5


def smooth_matmul_inputs(model: onnx.ModelProto, stats: ActivationStats, settings: dict,
                         alpha: float | None) -> list[dict]:
    """SmoothQuant (arXiv 2211.10438) for per-tensor activation scales: per
    input channel j, s_j = max|X_j|^a / max|W_j,:|^(1-a); X is divided by s
    (one Mul per group of MatMuls sharing the input), W's rows multiplied by s.
    BERT is post-LayerNorm: the LayerNorm output is also the residual, so 1/s
    cannot fold into LayerNorm; the Mul is an element-wise pass.

    ``alpha=None`` picks a per group from SMOOTH_ALPHAS by the lowest output
    SQNR over the group (emulated INT8 on the sampled calibration rows), and
    leaves a group alone unless smoothing gains SMOOTH_MIN_GAIN_DB."""
    inits = initializer_map(model)
    signed = settings["activation_type"] == "QInt8"
    reduce_range = settings["reduce_range"]
    groups: dict[str, list[onnx.NodeProto]] = {}
    for n in weight_matmuls(model):
        if n.input[0] in stats.samples:
            groups.setdefault(n.input[0], []).append(n)
    report = []
    for x_name, nodes in groups.items():
        x = stats.samples[x_name]
        lo, hi = stats.lo[x_name], stats.hi[x_name]
        weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in nodes]
        refs = [x @ w for w in weights]

        def score(s: np.ndarray | None) -> float:
            if s is None:
                xq = _fake_quant_act(x, float(lo.min()), float(hi.max()), signed)
                return min(_sqnr(r, xq @ _fake_quant_weight(w, reduce_range)) for r, w in zip(refs, weights))
            xq = _fake_quant_act(x / s, float((lo / s).min()), float((hi / s).max()), signed)
            return min(_sqnr(r, xq @ _fake_quant_weight(w * s[:, None], reduce_range))
                       for r, w in zip(refs, weights))

        amax = np.maximum(np.maximum(-lo, hi), 1e-5)
        wmax = np.maximum(np.max([np.abs(w).max(1) for w in weights], axis=0), 1e-5)
        scales = {a: np.clip(amax ** a / wmax ** (1 - a), 1e-4, 1e4).astype(np.float32)
                  for a in ((alpha,) if alpha is not None else SMOOTH_ALPHAS)}
        before = score(None)
        scored = {a: score(s) for a, s in scales.items()}
        best = max(scored, key=scored.get)
        entry = {"modules": [module_path(n) for n in nodes], "sqnr_db_before": round(before, 2)}
        if alpha is None and scored[best] < before + SMOOTH_MIN_GAIN_DB:
            report.append({**entry, "alpha": None, "sqnr_db_after": round(before, 2)})
            continue
        out = _insert_smoothing(model, x_name, nodes, scales[best], inits)
        report.append({**entry, "alpha": best, "sqnr_db_after": round(scored[best], 2)})
        stats.samples[out] = x / scales[best]  # what the smoothed MatMuls now see
        stats.lo[out], stats.hi[out] = lo / scales[best], hi / scales[best]
    return report


def _insert_smoothing(model, x_name: str, nodes, s: np.ndarray, inits) -> str:
    scale = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{x_name}_smooth_inv_scale")
    out = f"{x_name}_smoothed"
    mul = helper.make_node("Mul", [x_name, scale.name], [out], name=f"{nodes[0].name}_smooth")
    mul.metadata_props.extend(nodes[0].metadata_props)
    model.graph.initializer.append(scale)
    first = min(i for i, n in enumerate(model.graph.node) if n.name in {m.name for m in nodes})
    model.graph.node.insert(first, mul)
    model.graph.value_info.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    for node in nodes:
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        smoothed = numpy_helper.from_array(w * s[:, None], f"{node.input[1]}_smoothed")
        model.graph.initializer.append(smoothed)
        old = node.input[1]
        node.input[0], node.input[1] = out, smoothed.name
        _remove_unused_initializer(model, old)
    _copy_value_info_shape(model, x_name, out)
    return out


def _copy_value_info_shape(model, src: str, dst: str) -> None:
    """The calibrator needs the Mul output's type/shape (same as its input)."""
    infos = {v.name: v for v in model.graph.value_info}
    if src in infos and dst in infos:
        infos[dst].CopyFrom(infos[src])
        infos[dst].name = dst


def isolate_matmul_inputs(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, str]:
    """Give each group of Linear MatMuls its own input tensor (an Identity)
    where the tensor has other readers. ORT's QDQ quantizer rewires *every*
    reader of a quantized tensor to its DequantizeLinear, so without this the
    post-LayerNorm residual Add would read the INT8 copy of the hidden state."""
    wanted = set(names)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in set(node.input):
            readers.setdefault(i, []).append(node)
    outputs = {o.name for o in model.graph.output}
    isolated = {}
    for x_name in sorted({n.input[0] for n in model.graph.node if n.name in wanted}):
        group = [n for n in readers[x_name] if n.name in wanted and n.input[0] == x_name]
        if len(group) == len(readers[x_name]) and x_name not in outputs:
            continue
        out = f"{x_name}_matmul_input"
        ident = helper.make_node("Identity", [x_name], [out], name=f"{group[0].name}_input")
        ident.metadata_props.extend(group[0].metadata_props)
        first = min(i for i, n in enumerate(model.graph.node) if n.name in {g.name for g in group})
        model.graph.node.insert(first, ident)
        model.graph.value_info.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
        _copy_value_info_shape(model, x_name, out)
        for node in group:
            node.input[0] = out
        isolated[x_name] = out
    return isolated


def _qdq_specs(qdq: onnx.ModelProto, names: Sequence[str]) -> dict:
    """For each statically quantized MatMul: its float input tensor, the
    activation scale/zero point ORT chose, and the dequantized weights."""
    qinit = initializer_map(qdq)
    producer = {o: n for n in qdq.graph.node for o in n.output}
    wanted = set(names)
    specs = {}
    for node in qdq.graph.node:
        if node.name not in wanted:
            continue
        dq_a, dq_w = producer.get(node.input[0]), producer.get(node.input[1])
        if not (dq_a and dq_w and dq_a.op_type == dq_w.op_type == "DequantizeLinear"):
            continue
        q_a = producer.get(dq_a.input[0])
        if q_a is None or q_a.op_type != "QuantizeLinear":
            continue
        zp_a = numpy_helper.to_array(qinit[dq_a.input[2]])
        w_q = numpy_helper.to_array(qinit[dq_w.input[0]]).astype(np.float32)
        s_w = numpy_helper.to_array(qinit[dq_w.input[1]]).astype(np.float32)
        zp_w = numpy_helper.to_array(qinit[dq_w.input[2]]).astype(np.float32) if len(dq_w.input) > 2 else 0.0
        info = np.iinfo(zp_a.dtype)
        specs[node.name] = {"x": q_a.input[0], "scale": float(numpy_helper.to_array(qinit[dq_a.input[1]])),
                            "zero": float(zp_a), "qmin": info.min, "qmax": info.max,
                            "w_deq": (w_q - zp_w) * s_w}  # per output channel: broadcasts over the last axis
    return specs


def local_sqnr(qdq_path: Path, float_model: onnx.ModelProto, names: Sequence[str],
               stats: ActivationStats) -> dict[str, float]:
    """SQNR (dB) of each MatMul's output with only that MatMul quantized: the
    float activations sampled on the calibration feeds, quantized with the
    scale/zero point and weights ORT wrote into the QDQ model, against X @ W."""
    inits = initializer_map(float_model)
    weights = {n.name: n.input[1] for n in float_model.graph.node if n.name in set(names)}
    out = {}
    for name, s in _qdq_specs(onnx.load(str(qdq_path)), names).items():
        if s["x"] not in stats.samples:
            continue
        x = stats.samples[s["x"]]
        xq = (np.clip(np.round(x / s["scale"]) + s["zero"], s["qmin"], s["qmax"]) - s["zero"]) * s["scale"]
        w = numpy_helper.to_array(inits[weights[name]]).astype(np.float32)
        out[name] = _sqnr(x @ w, xq @ s["w_deq"])
    return out


def quantize_int8_static(src: Path, dst: Path, *, feeds, input_names: Sequence[str], settings: dict,
                         options: dict, work: Path, threads: int | None) -> dict:
    """QDQ INT8 with calibration-driven outlier handling (see the module doc)."""
    q = import_quantization()
    work.mkdir(parents=True, exist_ok=True)
    model = load_model(src)
    paths = module_paths(model)
    names = [n.name for n in weight_matmuls(model)]
    forced = [n for n in names if scope_matches(paths[n], options["exclude"])]
    recipe: dict = {"embedding": _table(model, options) if options["quantize_embedding"] else None}
    started = time.perf_counter()
    stats = ActivationStats(src, sorted({n.input[0] for n in weight_matmuls(model)}), feeds, input_names, threads)
    recipe["activation_stats"] = {"feeds": len(feeds), "sampled_rows": int(next(iter(stats.samples.values())).shape[0]),
                                  "seconds": round(time.perf_counter() - started, 1)}
    recipe["smooth_quant"] = None
    if options["smooth_quant"]:
        alpha = None if options["smooth_alpha"] == "auto" else float(options["smooth_alpha"])
        groups = smooth_matmul_inputs(model, stats, settings, alpha)
        recipe["smooth_quant"] = {"alpha": options["smooth_alpha"], "alphas_tried": list(SMOOTH_ALPHAS),
                                  "min_gain_db": SMOOTH_MIN_GAIN_DB, "groups": groups,
                                  "smoothed": sum(g["alpha"] is not None for g in groups)}
    isolated = isolate_matmul_inputs(model, names)
    for x_name, alias in isolated.items():  # same values under the name the quantizer will see
        if x_name in stats.samples:
            stats.samples[alias], stats.lo[alias], stats.hi[alias] = (stats.samples[x_name], stats.lo[x_name],
                                                                      stats.hi[x_name])
    recipe["isolated_inputs"] = sorted(isolated)
    prep = work / "static-input.onnx"
    strip_debug_metadata(model)
    save_model(model, prep)
    external = needs_external_data(model)
    method = options["calibrate_method"]
    cache = work / "calibration-cache.json"
    recipe["calibration"] = calibrate(prep, feeds, input_names, method, cache, work, options)
    if recipe["calibration"]["tensors"] == 0:
        raise CompileError("calibration found no MatMul tensors to calibrate (no shape information)",
                           "re-run 'embedc export'; the reference must carry value_info")
    # ORT 1.32's QDQMatMul ignores MatMulConstBOnly (only the QOperator path reads it) and quantizes
    # MatMul outputs too: name the Linear MatMuls, and keep their outputs float, so Q.K^T, attn.V and
    # the residual stream stay FP32 (ORT then fuses DQ->MatMul into MatMulIntegerToFloat).
    extra = {"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": ["MatMul"],
             "ActivationSymmetric": settings["activation_symmetric"],
             "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}}
    qkw = dict(quant_format=q.QuantFormat.QDQ, op_types_to_quantize=["MatMul"], per_channel=True,
               reduce_range=settings["reduce_range"], activation_type=q.QuantType[settings["activation_type"]],
               weight_type=q.QuantType[settings["weight_type"]], calibrate_method=q.CalibrationMethod[method],
               calibration_cache_path=str(cache), use_external_data_format=external, extra_options=extra)

    def build(excluded: Sequence[str], out: Path) -> None:
        with quiet_ort_logs():
            q.quantize_static(str(prep), str(out), None, nodes_to_quantize=[n for n in names if n not in excluded],
                              nodes_to_exclude=list(excluded), **qkw)
        if excluded and options["excluded_as"] == "int8-weight-only":
            save_model(weight_only_8bit(onnx.load(str(out)), excluded), out)

    search = auto_exclude(build, lambda cand: local_sqnr(cand, model, names, stats),
                          [n for n in names if n not in forced], forced, stats.embeddings, feeds, input_names,
                          options, work, threads)
    del model
    excluded = forced + search["excluded"]
    build(excluded, dst)
    for p in [*model_files(prep), cache]:
        p.unlink(missing_ok=True)

    by_reason = {n: "option exclude" for n in forced}
    by_reason.update({n: f"auto: output SQNR {search['sqnr'][n]:.1f} dB" for n in search["excluded"]})
    excluded_as = ("com.microsoft.MatMulNBits bits=8 block_size=32 symmetric accuracy_level=4 "
                   "(INT8 weights, activations quantized per block at run time)"
                   if options["excluded_as"] == "int8-weight-only" else "fp32")
    recipe.update({
        "library_call": "onnxruntime.quantization.quantize_static",
        "settings": {"quant_format": "QDQ", "op_types_to_quantize": ["MatMul"], "per_channel": True,
                     "reduce_range": settings["reduce_range"], "activation_type": settings["activation_type"],
                     "weight_type": settings["weight_type"], "calibrate_method": method,
                     "extra_options": extra, "use_external_data_format": external},
        "quantized": node_entries(paths, [n for n in names if n not in excluded]),
        "excluded": [{"node": n, "module": paths[n], "reason": by_reason[n], "as": excluded_as} for n in excluded],
        "kept_fp32": [] if options["excluded_as"] == "int8-weight-only" else [paths[n] for n in excluded],
        "auto_exclude": {k: v for k, v in search.items() if k not in ("excluded", "sqnr")},
        "sensitivity_db": [{"module": paths[n], "node": n, "sqnr_db": round(v, 2)}
                           for n, v in sorted(search["sqnr"].items(), key=lambda kv: kv[1])],
    })
    return recipe


def _meets(stats: dict, options: dict) -> bool:
    return stats["mean"] >= options["target_mean"] and stats["min"] >= options["target_min"]


def auto_exclude(build, rank, candidates: Sequence[str], forced: Sequence[str], reference: np.ndarray,
                 feeds, input_names, options: dict, work: Path, threads: int | None) -> dict:
    """Smallest k such that keeping the k most sensitive MatMuls out of the
    precision's main quantization meets the calibration-cosine target
    (k = 0, 1, 2, 4, ... then bisection), at most ``options["auto_exclude"]``.

    ``build(excluded, path)`` writes a candidate model; ``rank(path)`` maps
    candidate MatMul names to an output SQNR in dB (lowest = most sensitive),
    given the all-quantized candidate at ``path``."""
    cap = options["auto_exclude"]
    out = {"enabled": cap > 0, "max": cap, "target": {"mean": options["target_mean"], "min": options["target_min"]},
           "judged_on": f"sentence-embedding cosine vs FP32 on the {len(feeds)} calibration texts "
                        "(never the evaluation split)",
           "steps": [], "excluded": [], "sqnr": {}}
    if cap <= 0:
        return out
    started = time.perf_counter()
    cand = work / "candidate.onnx"

    def evaluate(k: int, order: Sequence[str]) -> bool:
        build(list(forced) + list(order[:k]), cand)
        result = cosine_stats(reference, embed_feeds(cand, feeds, input_names, threads))
        ok = _meets(result, options)
        out["steps"].append({"excluded": k, **result, "meets_target": ok})
        return ok

    hi = 0
    out["target_met"] = evaluate(0, [])
    order: list[str] = []
    if not out["target_met"]:
        out["sqnr"] = rank(cand)
        order = sorted((n for n in candidates if n in out["sqnr"]), key=out["sqnr"].get)[:cap]
        lo, hi, k = 0, None, min(1, len(order))
        while 0 < k <= len(order):
            if evaluate(k, order):
                hi = k
                break
            lo = k
            if k == len(order):
                break
            k = min(k * 2, len(order))
        out["target_met"] = hi is not None
        if hi is None:
            hi = len(order)
        while hi - lo > 1 and out["target_met"]:
            mid = (lo + hi) // 2
            if evaluate(mid, order):
                hi = mid
            else:
                lo = mid
    for p in model_files(cand):
        p.unlink(missing_ok=True)
    out["excluded"] = list(order[:hi])
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


# --------------------------------------------------------------------------- INT4
INT4_ALGORITHMS = ("default", "rtn", "gptq", "hqq")


def _int4_config(mnq, options: dict, feeds, input_names):
    algo, bs, sym, acc = options["algorithm"], options["block_size"], options["is_symmetric"], options["accuracy_level"]
    matmul_only = ("MatMul",)
    if algo == "default":
        return (mnq.DefaultWeightOnlyQuantConfig(block_size=bs, is_symmetric=sym, accuracy_level=acc,
                                                 op_types_to_quantize=matmul_only),
                f"DefaultWeightOnlyQuantConfig(block_size={bs}, is_symmetric={sym}, accuracy_level={acc})")
    if algo == "rtn":
        return mnq.RTNWeightOnlyQuantConfig(op_types_to_quantize=matmul_only), "RTNWeightOnlyQuantConfig()"
    if algo == "gptq":
        # ORT's (INC's) GPTQ re-runs the whole model over every sample once per distinct MatMul input
        # (24 x 304 forward passes on MiniLM took > 20 min here): use an evenly spaced subset.
        subset = list(feeds)[:: max(1, math.ceil(len(feeds) / options["gptq_samples"]))]
        return (mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=feed_reader(subset, input_names),
                                              op_types_to_quantize=matmul_only),
                f"GPTQWeightOnlyQuantConfig(calibration_data_reader=<{len(subset)} of {len(feeds)} calibration feeds>)")
    # hqq: asymmetric with float zero points by construction
    return (mnq.HQQWeightOnlyQuantConfig(block_size=bs, bits=4, op_types_to_quantize=matmul_only),
            f"HQQWeightOnlyQuantConfig(block_size={bs}, bits=4)")


def int4_sqnr(model: onnx.ModelProto, names: Sequence[str], stats: ActivationStats, block: int,
              symmetric: bool) -> dict[str, float]:
    """Output SQNR (dB) of each MatMul with only its weights at 4 bits (block-wise
    round-to-nearest along K, emulated) on the sampled calibration activations."""
    inits = initializer_map(model)
    out = {}
    for node in model.graph.node:
        if node.name not in names or node.input[0] not in stats.samples:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        k = w.shape[0]
        pad = (-k) % block
        blocks = np.pad(w, ((0, pad), (0, 0))).reshape(-1, block, w.shape[1])
        if symmetric:
            scale = np.abs(blocks).max(1, keepdims=True) / 7.0
            scale[scale == 0] = 1.0
            wq = np.clip(np.round(blocks / scale), -8, 7) * scale
        else:
            lo, hi = np.minimum(blocks.min(1, keepdims=True), 0), np.maximum(blocks.max(1, keepdims=True), 0)
            scale = (hi - lo) / 15.0
            scale[scale == 0] = 1.0
            zero = np.round(-lo / scale)
            wq = (np.clip(np.round(blocks / scale) + zero, 0, 15) - zero) * scale
        x = stats.samples[node.input[0]]
        out[node.name] = _sqnr(x @ w, x @ wq.reshape(-1, w.shape[1])[:k])
    return out


def quantize_int4(src: Path, dst: Path, *, feeds, input_names: Sequence[str], options: dict, work: Path,
                  threads: int | None) -> dict:
    """MatMulNBits 4-bit weights (+ the word-embedding table as GatherBlockQuantized);
    MatMuls that the calibration-cosine search finds too sensitive stay 8-bit."""
    import_quantization()
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq  # noqa: PLC0415

    work.mkdir(parents=True, exist_ok=True)
    model = load_model(src)
    paths = module_paths(model)
    names = [n.name for n in weight_matmuls(model)]
    forced = [n for n in names if scope_matches(paths[n], options["exclude"])]
    gathers = [n.name for n in table_gathers(model)]
    bs, sym, acc = options["block_size"], options["is_symmetric"], options["accuracy_level"]
    recipe: dict = {}

    def build(excluded: Sequence[str], out: Path) -> None:
        m = onnx.load(str(src))
        cfg, recipe["algo_config"] = _int4_config(mnq, options, feeds, input_names)
        with quiet_ort_logs():
            quant = mnq.MatMulNBitsQuantizer(m, bits=4, block_size=bs, is_symmetric=sym, accuracy_level=acc,
                                             nodes_to_exclude=list(excluded) + gathers, algo_config=cfg)
            quant.process()
        m = quant.model.model
        if excluded:
            m = weight_only_8bit(m, excluded, block_size=bs, accuracy_level=acc)
        table = word_embedding_gather(m)
        if options["quantize_embedding"] and table is not None:
            if options["embedding_bits"] == 8:
                recipe["embedding"] = quantize_table_8bit(m, table.name, options["embedding_block_size"])
            else:
                m, recipe["embedding"] = _table_4bit(m, table, gathers, options)
        strip_debug_metadata(m)
        save_model(m, out)

    search = {"enabled": False, "excluded": [], "sqnr": {}}
    if options["auto_exclude"] > 0:
        stats = ActivationStats(src, sorted({n.input[0] for n in weight_matmuls(model)}), feeds, input_names, threads)
        candidates = [n for n in names if n not in forced]
        search = auto_exclude(build, lambda _: int4_sqnr(model, candidates, stats, bs, sym), candidates, forced,
                              stats.embeddings, feeds, input_names, options, work, threads)
        del stats
    excluded = forced + search["excluded"]
    build(excluded, dst)
    by_reason = {n: "option exclude" for n in forced}
    by_reason.update({n: f"auto: 4-bit output SQNR {search['sqnr'][n]:.1f} dB" for n in search["excluded"]})
    return {
        "library_call": f"onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer(bits=4, "
                        f"algo_config={recipe['algo_config']})",
        "settings": {"algorithm": options["algorithm"], "block_size": bs,
                     "is_symmetric": sym if options["algorithm"] != "hqq" else False,
                     "accuracy_level": acc, "op": "com.microsoft.MatMulNBits"},
        "block_size_reason": options["block_size_reason"],
        "quantized": node_entries(paths, [n for n in names if n not in excluded]),
        "excluded": [{"node": n, "module": paths[n], "reason": by_reason[n],
                      "as": f"com.microsoft.MatMulNBits bits=8 block_size={bs} symmetric accuracy_level={acc}"}
                     for n in excluded],
        "auto_exclude": {k: v for k, v in search.items() if k not in ("excluded", "sqnr")},
        "sensitivity_db": [{"module": paths[n], "node": n, "sqnr_db": round(v, 2)}
                           for n, v in sorted(search["sqnr"].items(), key=lambda kv: kv[1])],
        "embedding": recipe.get("embedding"),
    }


def _table_4bit(model: onnx.ModelProto, table: onnx.NodeProto, gathers: Sequence[str],
                options: dict) -> tuple[onnx.ModelProto, dict]:
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq  # noqa: PLC0415

    path = module_path(table)
    width = initializer_map(model)[table.input[0]].dims[1]
    block = _block_for(width, options["embedding_block_size"])
    sym = options["is_symmetric"]
    cfg = mnq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=sym, op_types_to_quantize=("Gather",),
                                           quant_axes=(("Gather", 1),))
    with quiet_ort_logs():
        quant = mnq.MatMulNBitsQuantizer(model, nodes_to_exclude=[g for g in gathers if g != table.name],
                                         algo_config=cfg)
        with np.errstate(divide="ignore", invalid="ignore"):  # it divides by all-zero blocks, then masks them
            quant.process()
    return quant.model.model, {"node": table.name, "module": path, "op": "com.microsoft.GatherBlockQuantized", "bits": 4,
            "block_size": block, "scheme": "symmetric int4" if sym else "asymmetric uint4 + zero points",
            "library_call": f"MatMulNBitsQuantizer(algo_config=DefaultWeightOnlyQuantConfig(block_size={block}, "
                            f"is_symmetric={sym}, op_types_to_quantize=('Gather',), quant_axes=(('Gather', 1),)))"}
