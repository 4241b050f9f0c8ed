"""The reference ONNX as an OpenVINO model for a compile, in one of three forms.

- Small models (under ``KEEP_CONVERTED_BYTES``): ``ov.convert_model``, memoized
  per build thread (seconds for a 250k-vocabulary table) and cloned per precision
  (NNCF changes the model it is given). Above that size a kept copy would add the
  whole model to the build's peak memory, so each compile converts its own.
- Large models that NNCF will quantize: ``convert_model``, saved to an IR in the
  compile's scratch folder, then read back with ``Core.read_model``, which maps the
  ``.bin``. NNCF then works on weights in file-backed pages instead of a private
  heap copy (measured on a 0.6B decoder: 1.76 GB of anonymous memory after
  ``convert_model``).
- The low-memory path: ``Core.read_model`` of the ONNX itself, which maps the
  external data where ``convert_model`` copies it (4B export: 13.9 GB anonymous
  after ``convert_model``, 0.05 GB after ``read_model``).

``read_model`` on the ONNX skips ``convert_model``'s MOC passes, so MatMul weights
keep the exported ``[in, out]`` layout (``transpose_b = False``). NNCF 3.4's data-aware
weight compression assumes ``transpose_b = True`` (openvinotoolkit/nncf#3494): scale
estimation there silently gives wrong scales (multilingual-e5-small int4, mean cosine
0.99948 with ``convert_model``, 0.79901 with ``read_model``:
``benchmarks/openvino_weight_layout.py``).
``untransposed_weights`` finds such MatMuls so the caller can refuse.
"""
from __future__ import annotations

from pathlib import Path

KEEP_CONVERTED_BYTES = 256 << 20   # a memoized copy adds its whole size to the build's peak above this


def converted_reference(ov, onnx_file: Path, *, low_memory: bool = False,
                        mapped_in: Path | None = None) -> tuple[object, str]:
    """(the reference as an OpenVINO model the caller may change, how it was converted).

    ``mapped_in``: a scratch folder for the mapped IR of a large model (pass it when
    NNCF will run; the folder must outlive the returned model's use)."""
    from ...filememo import memoized

    onnx_file = Path(onnx_file)
    if low_memory:
        return (ov.Core().read_model(str(onnx_file)),
                "openvino.Core.read_model(reference ONNX), external data memory-mapped (low-memory path)")
    if not is_large(onnx_file):
        files = [onnx_file, *sorted(onnx_file.parent.glob("*.data"))]  # the graph and its external data
        return (memoized("openvino.convert_model", files, lambda: ov.convert_model(str(onnx_file))).clone(),
                "openvino.convert_model(reference ONNX)")
    if mapped_in is None:
        return ov.convert_model(str(onnx_file)), "openvino.convert_model(reference ONNX)"
    return (_mapped_conversion(ov, onnx_file, Path(mapped_in)),
            "openvino.convert_model(reference ONNX), saved to a scratch IR and read back memory-mapped")


def is_large(onnx_file: Path) -> bool:
    """Whether the ONNX with its external data is over ``KEEP_CONVERTED_BYTES``."""
    onnx_file = Path(onnx_file)
    files = [onnx_file, *onnx_file.parent.glob("*.data")]
    return sum(f.stat().st_size for f in files) > KEEP_CONVERTED_BYTES


def _mapped_conversion(ov, onnx_file: Path, folder: Path):
    """``convert_model``'s graph with its weights in a mapped IR file, not on the heap."""
    from ...memory import release_memory

    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / "converted.xml"
    model = ov.convert_model(str(onnx_file))
    ov.save_model(model, str(xml), compress_to_fp16=False)
    del model
    release_memory()  # the converted copy's pages go back before NNCF starts
    return ov.Core().read_model(str(xml), str(xml.with_suffix(".bin")))


def untransposed_weights(model) -> list[str]:
    """MatMuls whose constant weight is not in the ``transpose_b = True`` layout
    that NNCF's data-aware weight compression assumes."""
    found = []
    for node in model.get_ops():
        if node.get_type_name() != "MatMul" or node.get_attributes().get("transpose_b"):
            continue
        weight = node.input_value(1).get_node()
        if weight.get_type_name() == "Constant" or (
                weight.get_type_name() == "Convert"
                and weight.input_value(0).get_node().get_type_name() == "Constant"):
            found.append(node.get_friendly_name())
    return found
