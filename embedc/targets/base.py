"""The backend seam: what every hardware backend declares and implements.

A backend (one package under ``embedc/targets/``, like Olive's ``Pass``) is
found through the registry (``registry.register_backend``). It declares its
name, its targets (presets as data), the libraries whose versions shape its
output (cache key), its source package (code digest), and capabilities; it
validates options when the spec is validated (before any work), compiles the
validated FP32 reference ONNX into artifact files, loads an artifact to run
it, and names its model files (for sizes). Nothing outside the backend's
package branches on a backend's name."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Target:
    """A named hardware target: backend, device and the settings its hardware needs."""

    name: str
    backend: str                     # the backend's registry name
    device: str                      # "cpu", "gpu", "npu", "cuda", ...
    description: str
    precisions: tuple[str, ...]
    settings: dict = field(default_factory=dict)
    runs_here: bool = True           # can a CPU build host execute the artifact for parity?
    notes: tuple[str, ...] = ()

    @property
    def benchmarkable_on_cpu(self) -> bool:
        """Speed measured on this CPU means something only for CPU artifacts."""
        return self.device == "cpu" and self.runs_here


@dataclass(frozen=True)
class Capabilities:
    """What the rest of embedc may do with a backend's artifacts."""

    st_backend: str | None = None    # sentence-transformers backend name ("onnx", "openvino"), None if none
    engine: bool = False             # artifacts need a separate engine build on the device host (TensorRT)
    output_heads: bool = False       # can add compressed-output heads (int8/binary/...) to its artifacts
    report_marker: str = "o"         # matplotlib marker in report plots


@dataclass(frozen=True)
class CompileContext:
    """Everything a backend needs besides the target and precision."""

    reference_dir: Path                       # folder of the validated FP32 export (read-only: a cache entry)
    reference_meta: dict                      # its embedc.json (holds the model adapter)
    calibration: tuple[dict[str, np.ndarray], ...]  # tokenized calibration batches (batch 1, int64)
    length_stats: dict                        # token lengths of calibration texts: min/p50/p90/p99/max
    options: dict                             # options for this precision, already resolved by the backend
    work_dir: Path                            # scratch space in the build's own temp folder, removed after
    # int4 weights computed in torch (embedc.int4): settings -> (stage entry folder, info); None outside a build
    int4_weights: Callable | None = None

    @property
    def reference_onnx(self) -> Path:
        return self.reference_dir / self.reference_meta["model_file"]

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.reference_meta["inputs"]]

    @property
    def adapter(self) -> dict:
        """The model adapter as recorded by the export (families.ModelAdapter.to_dict())."""
        return self.reference_meta["adapter"]


@dataclass(frozen=True)
class CompileResult:
    """What a backend reports about the files it wrote into the artifact folder."""

    model_file: str                           # main file, relative to the artifact folder
    recipe: dict                              # exactly what was done (library calls, settings, exclusions)
    runtime: dict = field(default_factory=dict)    # how a user should load/compile it
    unverified: tuple[str, ...] = ()          # what could not be checked on this machine


class Runner(Protocol):
    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Run one tokenized batch; return the named graph outputs."""

    def embed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """``sentence_embedding`` as float32 (batch, dim)."""


class Backend(ABC):
    """One hardware backend. Subclasses set the class attributes and
    implement ``resolve_options``, ``compile`` and ``load``."""

    name: str = ""
    targets: tuple[Target, ...] = ()
    libraries: tuple[str, ...] = ()           # distributions whose versions shape the output (cache key)
    capabilities: Capabilities = Capabilities()

    @property
    def source_package(self) -> str:
        """The package whose source shapes this backend's artifacts (code digest)."""
        return type(self).__module__.rpartition(".")[0] or type(self).__module__

    @abstractmethod
    def resolve_options(self, target: Target, precision: str, options: Mapping) -> dict:
        """Defaults overlaid with ``options``. Raise ``TargetError`` (exit 2)
        naming a bad key or value and the valid ones. Called when the spec is
        validated, before any work; the result is what ``compile`` gets."""

    def cache_facts(self, target: Target, precision: str, options: Mapping) -> dict:
        """Facts of the build machine that change the artifact (e.g. a CPU
        flag that picks a recipe). Part of the artifact's cache key and
        recorded in it; a choice that must not depend on the build host
        belongs in the target's settings instead."""
        return {}

    @abstractmethod
    def compile(self, target: Target, precision: str, ctx: CompileContext, out_dir: Path) -> CompileResult:
        """Write the artifact's model file(s) into ``out_dir`` (tokenizer and
        JSON are the pipeline's). Third-party exceptions must come out as
        ``CompileError`` with a one-line reason."""

    @abstractmethod
    def load(self, artifact_dir: Path, meta: dict, *, threads: int | None = None) -> Runner:
        """Load an artifact folder for inference on this machine."""

    def model_files(self, artifact_dir: Path, meta: dict) -> list[str]:
        """Files (relative paths) that hold the model, for sizes: the model
        file and files sharing its stem (``.data``, ``.bin``)."""
        folder = Path(artifact_dir)
        stem = Path(meta["model_file"]).stem
        return sorted(p.relative_to(folder).as_posix() for p in folder.iterdir()
                      if p.is_file() and p.name.startswith(stem))

    def attach_output_heads(self, artifact_dir: Path, result: CompileResult, heads: Sequence, ranges: dict | None
                            ) -> dict:
        """Add compressed-output heads (``embedc.outputs.Head``: int8 / binary /
        ubinary / Matryoshka dims) to the compiled artifact's graph as extra
        outputs, computed from its float output; return what was done (for the
        artifact's record). Backends with ``capabilities.output_heads`` implement it."""
        from ..errors import CompileError

        raise CompileError(f"the {self.name} backend cannot add compressed outputs to its artifacts",
                           "build this target without [outputs] / --output")

    def st_model_kwargs(self, artifact_dir: Path, meta: dict) -> tuple[dict | None, str | None]:
        """``(model_kwargs, None)`` for ``SentenceTransformer(folder, backend=capabilities.st_backend,
        model_kwargs=...)``, or ``(None, reason)`` when this artifact cannot be loaded that way."""
        return None, f"sentence-transformers has no backend for {self.name} artifacts"
