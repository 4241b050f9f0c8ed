"""Quantization recipes of the ONNX Runtime backend, and the graph helpers they share.

Imported lazily by :mod:`embedc.targets.ort` (onnx / onnxruntime load here).
Every recipe returns a JSON-ready dict saying exactly what it did: library
calls, settings, and which nodes were quantized or kept out, by module path
(``encoder.encoder.layer.11.output.dense``) next to the opaque node name.

Recipe decisions (measured; see the ort backend report):

* INT8 static is QDQ via ``quantize_static`` on MatMuls with constant weights
  (``MatMulConstBOnly``), per-channel weights, not LayerNorm/Softmax/Add.
  Per-tensor activation scales collapse on the outlier channels of
  transformer residual streams, so MatMuls are ranked by the SQNR of their
  output with only that MatMul quantized (ORT's own scales applied to the
  float model's activations on the calibration texts), and the worst are
  taken out of static quantization until the sentence-embedding cosine on the
  *calibration* texts meets a target. Taken-out MatMuls become 8-bit
  ``MatMulNBits`` (weights INT8 per block of 32, activations quantized per
  block at run time with ``accuracy_level`` 4), so the size stays INT8.
* The word-embedding table (81% of multilingual-e5-small) is stored as
  ``GatherBlockQuantized`` with 8 bits, one scale and zero point per block of
  the row: ORT's QDQ/QOperator Gather quantization is per-tensor (row cosine
  0.9993 mean, 0.991 min on MiniLM's table vs 0.99998 / 0.9999 per block), and
  ORT 1.32's ``MatMulNBitsQuantizer`` writes only 4-bit Gathers, so the 8-bit
  table is written here; the op itself is ORT's.
"""
from __future__ import annotations

import ast
import contextlib
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
    """Replace a Gather over a float table by an 8-bit ``GatherBlockQuantized``
    (uint8, asymmetric, one fp32 scale and uint8 zero point per row block)."""
    inits = initializer_map(model)
    idx, node = next((i, n) for i, n in enumerate(model.graph.node) if n.name == node_name)
    table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    rows, width = table.shape
    block = _block_for(width, block_size)
    if width % block:
        raise CompileError(f"embedding width {width} has no power-of-two block >= 16",
                           "pass quantize_embedding=false for this model")
    blocks = table.reshape(rows, width // block, block)
    lo = np.minimum(blocks.min(axis=2, keepdims=True), 0.0)
    hi = np.maximum(blocks.max(axis=2, keepdims=True), 0.0)
    scale = (hi - lo) / 255.0
    scale[scale == 0] = 1.0
    zero = np.clip(np.round(-lo / scale), 0, 255)
    q = np.clip(np.round(blocks / scale) + zero, 0, 255).astype(np.uint8).reshape(rows, width)
    base = node.input[0]
    new_inits = [numpy_helper.from_array(q, base + "_Q8"),
                 numpy_helper.from_array(scale.reshape(rows, -1).astype(np.float32), base + "_scales"),
                 numpy_helper.from_array(zero.reshape(rows, -1).astype(np.uint8), base + "_zero_points")]
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    new = helper.make_node("GatherBlockQuantized", [new_inits[0].name, node.input[1], new_inits[1].name,
                                                    new_inits[2].name], list(node.output), name=node.name + "_Q8",
                           domain=MS_DOMAIN, gather_axis=axis, quantize_axis=1, block_size=block, bits=8)
    new.metadata_props.extend(node.metadata_props)
    model.graph.node.remove(node)
    model.graph.node.insert(idx, new)
    model.graph.initializer.extend(new_inits)
    _remove_unused_initializer(model, base)
    ensure_opset(model, MS_DOMAIN, 1)
    deq = ((q.reshape(blocks.shape).astype(np.float32) - zero) * scale).reshape(rows, width)
    cos = _row_cosines(table, deq)
    return {"node": node_name, "module": module_path(node), "op": "com.microsoft.GatherBlockQuantized",
            "bits": 8, "block_size": block, "scheme": "asymmetric uint8, fp32 scale + uint8 zero point per block",
            "rows": rows, "width": width, "row_cosine_mean": round(float(cos.mean()), 6),
            "row_cosine_min": round(float(cos.min()), 6)}


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = np.einsum("ij,ij->i", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)


def node_entries(model: onnx.ModelProto, names: Sequence[str]) -> list[dict]:
    paths = module_paths(model)
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
def quantize_int8_dynamic(src: Path, dst: Path, *, settings: dict, options: dict) -> dict:
    """``quantize_dynamic`` on the Linear MatMuls (+ the 8-bit block table)."""
    q = import_quantization()
    model = load_model(src)
    matmuls = weight_matmuls(model)
    excluded = [n.name for n in matmuls if scope_matches(module_path(n), options["exclude"])]
    recipe: dict = {"embedding": None}
    prep = Path(dst).with_name("dynamic-input.onnx")
    if options["quantize_embedding"]:
        recipe["embedding"] = _table(model, options)
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
        "quantized": node_entries(model, quantized),
        "excluded": [{**e, "reason": "option exclude", "as": "fp32"} for e in node_entries(model, excluded)],
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
    cal_method = q.CalibrationMethod[method]
    extra = {"per_channel": False}
    if method == "MinMax":
        extra["max_intermediate_outputs"] = 32
    if method == "Percentile":
        extra["percentile"] = options["percentile"]
    started = time.perf_counter()
    with quiet_ort_logs(), contextlib.redirect_stdout(None):
        calibrator = q.create_calibrator(Path(model_path), ["MatMul"],
                                         augmented_model_path=str(work / "augmented.onnx"),
                                         calibrate_method=cal_method,
                                         use_external_data_format=needs_external_data(onnx.load(str(model_path),
                                                                                                 load_external_data=False))
                                         if False else False, extra_options=extra)
        reader = feed_reader(feeds, input_names)
        if method == "MinMax":
            calibrator.collect_data(reader)
        else:
            for i in range(len(reader)):
                reader.set_range(i, i + 1)
                calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        q.save_tensors_data(ranges, cache)
    for p in work.glob("augmented.onnx*"):
        p.unlink()
    return {"method": method, "count": len(feeds), "seconds": round(time.perf_counter() - started, 1),
            "tensors": len(ranges.data), **({"percentile": options["percentile"]} if method == "Percentile" else {}),
            "how": "create_calibrator over the MatMul tensors, one batch-1 feed per collect_data call"
                   " (histograms merge), ranges saved with save_tensors_data and reused via"
                   " quantize_static(calibration_cache_path=...)"}
