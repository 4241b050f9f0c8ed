"""What every hardware target backend implements (one module per backend).

A backend turns the validated FP32 reference ONNX (plus the shared
calibration batches) into artifact files, and can load an artifact back to
run it for parity and benchmarks. Target presets are data (``Target``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Target:
    """A named hardware target: backend, device and the settings its hardware needs."""

    name: str
    backend: str                     # "ort" | "openvino" | "tensorrt"
    device: str                      # e.g. "cpu", "gpu", "npu", "cuda"
    description: str
    precisions: tuple[str, ...]
    settings: dict = field(default_factory=dict)
    runs_here: bool = True           # can this machine execute the artifact for parity?
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompileContext:
    """Everything a backend needs besides the target and precision."""

    reference_dir: Path                       # folder of the validated FP32 export
    reference_meta: dict                      # its embedc.json
    calibration: tuple[dict[str, np.ndarray], ...]  # tokenized calibration batches (batch 1, int64)
    length_stats: dict                        # token lengths of calibration texts: min/p50/p90/p99/max
    options: dict                             # user options for this precision (method, block size, ...)
    work_dir: Path                            # scratch space, removed after the build

    @property
    def reference_onnx(self) -> Path:
        return self.reference_dir / self.reference_meta["model_file"]

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.reference_meta["inputs"]]


@dataclass(frozen=True)
class CompileResult:
    """What a backend reports about the files it wrote into the artifact folder."""

    model_file: str                           # main file, relative to the artifact folder
    recipe: dict                              # exactly what was done (library calls, settings, exclusions)
    runtime: dict = field(default_factory=dict)    # how a user should load/compile it
    unverified: tuple[str, ...] = ()          # what could not be checked on this machine


class Runner(Protocol):
    def embed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run one tokenized batch; return ``sentence_embedding`` as float32 (batch, dim)."""


class Backend(Protocol):
    name: str

    def compile(self, target: Target, precision: str, ctx: CompileContext, out_dir: Path) -> CompileResult:
        """Write the artifact's model file(s) into ``out_dir`` (tokenizer/JSON are written by the pipeline)."""

    def load(self, artifact_dir: Path, meta: dict, *, threads: int | None = None) -> Runner:
        """Load an artifact folder for inference on this machine."""
