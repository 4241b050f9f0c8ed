"""Loading and saving ONNX models, and the one external-data policy.

Protobuf cannot serialize a message over 2 GiB, so a model whose initializers
exceed ``EXTERNAL_DATA_BYTES`` is saved with its tensors in ``<file>.data``
beside it (the margin leaves room for the graph and metadata). Every save,
every quantizer call and every shape-inference decision asks
:func:`needs_external_data`, so one threshold decides (tests lower it to run
the > 2 GB code path on a tiny model).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

from ..errors import CompileError

PROTOBUF_LIMIT = 2 * 1024**3
EXTERNAL_DATA_BYTES = 1_800_000_000


def initializer_bytes(model) -> int:
    """Bytes of the model's initializers (their raw data or typed fields)."""
    from onnx import helper

    total = 0
    for t in model.graph.initializer:  # tensors held externally count by their dims
        if t.raw_data:
            total += len(t.raw_data)
        else:
            total += helper.tensor_dtype_to_np_dtype(t.data_type).itemsize * math.prod(t.dims)
    return total


def tensor_bytes_need_external_data(n_bytes: int) -> bool:
    """The policy for a model not yet in memory (e.g. an exporter that knows its parameter bytes)."""
    return n_bytes > EXTERNAL_DATA_BYTES


def needs_external_data(model) -> bool:
    return tensor_bytes_need_external_data(initializer_bytes(model))


def load_model(path: Path, *, what: str = "reference ONNX", external_data: bool = True):
    """Load a model (with its external data unless ``external_data=False``: the
    graph alone, for names and shapes); unreadable or invalid files raise CompileError."""
    import onnx

    try:
        onnx.checker.check_model(str(path))  # by path: works above 2 GB, catches truncated graphs
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # protobuf DecodeError, ValidationError, OSError, ...
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CompileError(f"{what} {path} is unreadable or invalid (truncated or corrupted?): {detail}",
                           "re-run 'embedc export' to rebuild the reference model") from exc


def data_file(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".data")


def save_model(model, path: Path, *, keep: bool = True) -> None:
    """One file under the policy's threshold, else ``<name>.data`` beside it.

    ``model`` is left as it was: onnx moves tensors out of the proto while
    writing external data, so they are read back (callers keep using it).
    ``keep=False`` skips that for a caller that drops the model right after
    (reading 2.4 GB back only to free it doubles the peak on a 0.6B model)."""
    import onnx

    path = Path(path)
    external = needs_external_data(model)
    data = data_file(path)
    if data.exists():
        data.unlink()
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    if external and keep:
        onnx.load_external_data_for_model(model, str(path.parent))


def model_files(path: Path) -> list[Path]:
    path = Path(path)
    data = data_file(path)
    return [path, data] if data.exists() else [path]


def files_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in model_files(path))


def copy_model(src: Path, dst: Path) -> None:
    """Copy a model file and its external data file (same relative name)."""
    for p in model_files(src):
        shutil.copyfile(p, Path(dst).with_name(Path(dst).name + p.name[len(Path(src).name):]))


def remove_model(path: Path) -> None:
    for p in model_files(path):
        p.unlink(missing_ok=True)


def file_needs_external_data(path: Path) -> bool:
    """The policy for a saved model, read without its tensor data (dims give the sizes)."""
    import onnx

    return needs_external_data(onnx.load(str(path), load_external_data=False))
