"""Library versions recorded in every artifact and cache key."""
from __future__ import annotations

import platform
from importlib import metadata

_TRACKED = ("embedc", "torch", "transformers", "tokenizers", "onnx", "onnxscript",
            "onnxruntime", "onnx-ir", "openvino", "nncf", "tensorrt", "numpy", "auto-round",
            "neural-compressor")


def library_versions(names: tuple[str, ...] = _TRACKED) -> dict[str, str]:
    """Installed versions of the libraries that shape an artifact (absent ones omitted)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
