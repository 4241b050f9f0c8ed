"""``embedc engine ARTIFACT`` on a GPU host: build the TensorRT engine from the
artifact's ``build.json``, run the artifact's evaluation split through it,
and record engine parity against the torch FP32 reference in the artifact's
``embedc.json`` (an ``engine`` section: GPU, TensorRT version, timings,
parity, gate outcomes), replacing the "unverified" entry.

The TensorRT calls are written against the TensorRT 10 Python API (Builder,
STRONGLY_TYPED network, OnnxParser, optimization profiles, timing cache,
``execute_async_v3`` with torch CUDA tensors as I/O buffers) and are
UNVERIFIED: no machine embedc was developed on had an NVIDIA GPU with
TensorRT. Without them, the command stops with ``MissingDependencyError``
naming what is missing, after checking the artifact. The orchestration
(:func:`record_engine`) takes the engine step as an object so that tests can
exercise the recording; only :class:`TensorRTEngine` may ever be recorded as
an engine. Engines are tied to the GPU model and TensorRT version and are not
byte-reproducible: compare outputs, not bytes.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ...errors import ArtifactError, CompileError, MissingDependencyError, ParityGateError
from ...fsutil import read_json
from .profiles import BUILD_FILE, BUILD_FORMAT

_HINT = "run on an NVIDIA GPU host with TensorRT >= 10 (pip install tensorrt) and a CUDA build of torch"


def _require_gpu_tensorrt():
    """(tensorrt, torch) or MissingDependencyError naming everything that is missing."""
    missing = []
    try:
        import tensorrt as trt
    except ImportError:
        trt = None
        missing.append("the 'tensorrt' Python package is not installed")
    except OSError as exc:  # installed, but its CUDA/TensorRT libraries do not load
        trt = None
        missing.append(f"the 'tensorrt' package does not load ({exc})")
    try:
        import torch

        if not torch.cuda.is_available():
            missing.append("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    except ImportError:
        torch = None
        missing.append("torch is not installed")
    if missing:
        raise MissingDependencyError("TensorRT engine needs an NVIDIA GPU with TensorRT: " + "; ".join(missing), _HINT)
    return trt, torch


def read_build(artifact_dir: Path) -> dict:
    path = Path(artifact_dir) / BUILD_FILE
    if not path.is_file():
        raise ArtifactError(f"{artifact_dir} has no {BUILD_FILE}", "pass a folder built for a tensorrt-* target")
    build = read_json(path)
    if build.get("format") != BUILD_FORMAT:
        raise ArtifactError(f"{path} has format {build.get('format')!r}, expected {BUILD_FORMAT!r}",
                            "rebuild the artifact with this embedc version")
    return build


def _network_flags(trt) -> tuple[int, bool]:
    """Creation flags and whether the network is strongly typed (TensorRT >= 9.1)."""
    flags, strong = 0, False
    f = trt.NetworkDefinitionCreationFlag
    if hasattr(f, "STRONGLY_TYPED"):
        flags |= 1 << int(f.STRONGLY_TYPED)
        strong = True
    if int(trt.__version__.split(".")[0]) < 10 and hasattr(f, "EXPLICIT_BATCH"):
        flags |= 1 << int(f.EXPLICIT_BATCH)  # implicit in 10+, deprecated there
    return flags, strong


def _weak_type_flags(trt, config, precision: str) -> None:
    """Old TensorRT without strong typing: ask for the precision via builder flags."""
    if precision == "int4":
        raise CompileError("INT4 weight-only engines need TensorRT >= 10", _HINT)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ in the graph give the scales


def _write_atomic(path: Path, data) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_engine(artifact_dir: Path, timing_cache: Path | None = None) -> Path:
    """Build ``model.plan`` next to the ONNX, as ``build.json`` describes; returns its path.

    ``timing_cache`` (default: build.json's ``timing_cache`` in the artifact
    folder) is loaded when it exists and saved after the build, so rebuilds
    and sibling precisions reuse measured tactics.
    """
    artifact_dir = Path(artifact_dir)
    build = read_build(artifact_dir)
    trt, _torch = _require_gpu_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags, strong = _network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    onnx_path = artifact_dir / build["onnx"]
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CompileError(f"TensorRT could not parse {onnx_path.name}: {errors}",
                           f"run 'embedc check-trt {onnx_path}' and check the TensorRT version")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(build["workspace_mb"]) << 20)
    if not strong:
        _weak_type_flags(trt, config, build["precision"])
    for shapes in build["profiles"]:
        profile = builder.create_optimization_profile()
        for name, s in shapes.items():
            profile.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
        config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else artifact_dir / build["timing_cache"]
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CompileError(f"TensorRT failed to build an engine from {onnx_path.name}",
                           "see the TensorRT log above; check the GPU's support for the precision")
    engine_path = artifact_dir / build["engine"]
    _write_atomic(engine_path, memoryview(serialized))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(cache_path, memoryview(config.get_timing_cache().serialize()))
    return engine_path


class EngineRunner:
    """Runs a serialized engine with torch CUDA tensors as bindings (no pycuda)."""

    def __init__(self, engine_path: Path):
        trt, torch = _require_gpu_tensorrt()
        self.trt, self.torch = trt, torch
        path = Path(engine_path)
        if not path.is_file():
            raise ArtifactError(f"engine {path} does not exist", "build it with 'embedc engine ARTIFACT'")
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"TensorRT could not load {path}",
                                "engines are tied to the GPU and TensorRT version: rebuild it here")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]

    def _dtype(self, name: str):
        trt, torch = self.trt, self.torch
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                 trt.int64: torch.int64, trt.int8: torch.int8, trt.bool: torch.bool}
        if hasattr(trt, "bfloat16"):
            table[trt.bfloat16] = torch.bfloat16
        return table[self.engine.get_tensor_dtype(name)]

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        torch = self.torch
        keep = {}
        for name in self.inputs:
            if name not in feeds:
                raise ArtifactError(f"engine input {name!r} is missing from the feeds",
                                    "tokenize with the artifact's inputs")
            t = torch.from_numpy(np.ascontiguousarray(feeds[name])).to("cuda", dtype=self._dtype(name))
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
            keep[name] = t
        for name in self.outputs:
            t = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtype(name), device="cuda")
            self.context.set_tensor_address(name, t.data_ptr())
            keep[name] = t
        stream = torch.cuda.Stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise CompileError("TensorRT engine execution failed", "check the input shapes against build.json")
        stream.synchronize()
        return {n: keep[n].float().cpu().numpy() for n in (outputs or self.outputs)}

    def embed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.run(feeds, ["sentence_embedding"])["sentence_embedding"].astype(np.float32)


# ---- the engine step and its record ---------------------------------------------------------------

class EngineStep(Protocol):
    """What :func:`record_engine` needs from an engine: facts, a build, a runner."""

    def facts(self) -> dict: ...

    def build(self, artifact_dir: Path, timing_cache: Path | None) -> Path: ...

    def runner(self, plan: Path): ...


class TensorRTEngine:
    """The real engine step: TensorRT on this host's first CUDA GPU."""

    def __init__(self):
        self.trt, self.torch = _require_gpu_tensorrt()

    def facts(self) -> dict:
        torch = self.torch
        major, minor = torch.cuda.get_device_capability(0)
        return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}",
                "tensorrt": self.trt.__version__, "cuda": torch.version.cuda, "runner": "TensorRT"}

    def build(self, artifact_dir: Path, timing_cache: Path | None) -> Path:
        try:
            return build_engine(artifact_dir, timing_cache)
        except (CompileError, ArtifactError, MissingDependencyError):
            raise
        except Exception as exc:  # TensorRT's own errors: one line, never a raw traceback
            raise CompileError(f"TensorRT engine build failed: {_first_line(exc)}",
                               "see the TensorRT log above; check the TensorRT version and the GPU") from exc

    def runner(self, plan: Path) -> EngineRunner:
        try:
            return EngineRunner(plan)
        except (ArtifactError, MissingDependencyError):
            raise
        except Exception as exc:
            raise ArtifactError(f"TensorRT cannot run {plan}: {_first_line(exc)}",
                                "rebuild the engine on this GPU with this TensorRT") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _recorded_gates(meta: dict) -> list:
    """The gates the build judged this artifact by (its recorded outcomes), else the defaults."""
    from ...parity.gates import Gate, resolve_gates

    outcomes = (meta.get("gates") or {}).get("outcomes") or []
    if outcomes:
        return [Gate(o["metric"], float(o["threshold"]), o.get("op", ">=")) for o in outcomes]
    return resolve_gates(meta["precision"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def record_engine(artifact_dir: Path, engine: EngineStep | None = None, *, timing_cache: Path | None = None,
                  cache_dir: Path | None = None) -> dict:
    """Build the engine, run the evaluation split through it, record the ``engine`` section.

    The artifact is checked first (a TensorRT artifact with ``build.json`` and intact files),
    then the engine step is set up (``TensorRTEngine()`` unless given: without a GPU and
    TensorRT that raises ``MissingDependencyError``). Raises ``ParityGateError`` (exit 3)
    after recording when the engine misses a gate the build judged the artifact by."""
    from ...artifact import read_meta, verify_files, write_meta
    from ...parity.gates import evaluate_gates
    from ...parity.harness import embed_texts
    from ...parity.metrics import compute_parity
    from ...parity.recheck import _reference_for_artifact
    from .backend import UNVERIFIED_ENGINE

    artifact_dir = Path(artifact_dir)
    meta = read_meta(artifact_dir)
    if meta.get("stage") != "artifact" or meta.get("backend") != "tensorrt":
        raise ArtifactError(f"{artifact_dir} is not a TensorRT artifact",
                            "pass a tensorrt-*/<precision> folder made by 'embedc build'")
    read_build(artifact_dir)
    verify_files(artifact_dir, meta)
    engine = engine if engine is not None else TensorRTEngine()
    facts = engine.facts()

    t0 = time.perf_counter()
    plan = engine.build(artifact_dir, timing_cache)
    build_s = time.perf_counter() - t0
    samples, texts, reference = _reference_for_artifact(artifact_dir, meta, cache_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(artifact_dir), use_fast=True)
    runner = engine.runner(plan)
    t0 = time.perf_counter()
    cand = embed_texts(runner.embed, tokenizer, texts, input_names=[i["name"] for i in meta["inputs"]],
                       max_length=int(meta["parity_max_length"]))
    run_s = time.perf_counter() - t0
    result = compute_parity(reference, cand, ids=[s.id for s in samples], langs=[s.lang for s in samples],
                            kinds=[s.kind for s in samples])
    outcomes = evaluate_gates(result, _recorded_gates(meta))
    passed = all(not o.failed for o in outcomes)
    parity = result.to_dict()
    onnx_parity = meta.get("parity") or {}
    section = {
        **facts,
        "engine_file": plan.name, "engine_sha256": _sha256(plan), "engine_bytes": plan.stat().st_size,
        "timing": {"build_seconds": round(build_s, 2), "parity_run_seconds": round(run_s, 3),
                   "texts": len(texts), "texts_per_second": round(len(texts) / run_s, 1) if run_s > 0 else None,
                   "batch_size": 16, "note": "one run of the evaluation split (sorted by length, batches of 16), "
                                             "not a benchmark"},
        "parity": parity,
        "vs_onnx_cpu": {k: round(parity[k] - onnx_parity[k], 6) for k in ("mean", "p01", "min")
                        if k in parity and k in onnx_parity},
        "gates": {"verdict": "pass" if passed else "fail", "outcomes": [o.to_dict() for o in outcomes]},
    }
    meta.pop("format", None)
    meta["engine"] = section
    meta["unverified"] = [u for u in meta.get("unverified", []) if u != UNVERIFIED_ENGINE]
    meta.setdefault("runtime", {})["engine_parity"] = "recorded (see 'engine')"
    write_meta(artifact_dir, meta)
    if not passed:
        failed = ", ".join(o.metric for o in outcomes if o.failed)
        raise ParityGateError(f"the TensorRT engine of {artifact_dir} fails its parity gate ({failed}); "
                              "recorded in embedc.json 'engine'",
                              "compare with the ONNX parity; rebuild with other options or keep it unshipped")
    return section
