"""ONNX graph helpers shared by the ONNX Runtime recipes: load and save (external
data above the protobuf limit), module paths, the Linear MatMuls and embedding
Gathers, and small graph edits.

Imported lazily by :mod:`embedc.targets.ort.backend` (onnx loads here). Recipes name
each node by its module path (``encoder.encoder.layer.11.output.dense``, from
dynamo's name scopes) next to the opaque node name.
"""
from __future__ import annotations

import ast
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import helper

from ...errors import CompileError

SCOPE_KEY = "pkg.torch.onnx.name_scopes"
# Above this many bytes of initializers a model is saved with external data
# (protobuf's hard limit is 2 GiB; leave room for the graph itself).
EXTERNAL_DATA_BYTES = 1_800_000_000
MS_DOMAIN = "com.microsoft"


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


def node_entries(paths: dict[str, str], names: Sequence[str]) -> list[dict]:
    """``[{"node": name, "module": module path}]`` for recipes."""
    return [{"node": n, "module": paths.get(n, n)} for n in names]


def _copy_value_info_shape(model, src: str, dst: str) -> None:
    """The calibrator needs the Mul output's type/shape (same as its input)."""
    infos = {v.name: v for v in model.graph.value_info}
    if src in infos and dst in infos:
        infos[dst].CopyFrom(infos[src])
        infos[dst].name = dst
