"""TensorRT optimization profiles and the build files written with an artifact.

Dynamic shapes need a (min, opt, max) shape for every input. Kernels are tuned
for ``opt``; ``max`` bounds what the engine accepts. Defaults, from the
calibration texts' token lengths (``ctx.length_stats``) and the model:

- batch: min 1, opt 32, max 64;
- sequence: min 1, opt = p90 rounded up to a multiple of 16, max = the
  model's ``max_length`` (the tokenizer truncates there, so every input fits;
  this is always >= the longest calibration text).

Overrides come from ``ctx.options``: ``batch_min``, ``batch_opt``,
``batch_max``, ``seq_min``, ``seq_opt``, ``seq_max``, ``workspace_mb``
(default 4096) and ``timing_cache`` (file name, default ``timing.cache``).

``build.json`` is what :func:`embedc.targets.tensorrt.engine.build_engine` reads;
``trtexec.sh`` runs the same build with NVIDIA's ``trtexec``.
"""
from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from ...errors import UsageError
from ...fsutil import write_json_atomic

BUILD_FILE = "build.json"
TRTEXEC_FILE = "trtexec.sh"
ENGINE_FILE = "model.plan"
BUILD_FORMAT = "embedc-trt-build/1"
DEFAULT_BATCH = (1, 32, 64)
DEFAULT_WORKSPACE_MB = 4096
DEFAULT_TIMING_CACHE = "timing.cache"
SEQ_ROUND = 16
PROFILE_OPTIONS = ("batch_min", "batch_opt", "batch_max", "seq_min", "seq_opt", "seq_max")


@dataclass(frozen=True)
class Profile:
    """(min, opt, max) of batch and sequence; every input gets [batch, sequence]."""

    batch: tuple[int, int, int]
    seq: tuple[int, int, int]

    def shapes(self, input_names: list[str]) -> dict[str, dict[str, list[int]]]:
        return {name: {k: [self.batch[i], self.seq[i]] for i, k in enumerate(("min", "opt", "max"))}
                for name in input_names}


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(max(float(x), 1.0) / multiple) * multiple)


def _int_option(options: dict, key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"TensorRT option {key}={value!r} is invalid", f"set {key} to a positive integer")
    return value


def derive_profile(length_stats: dict, max_length: int, options: dict | None = None) -> Profile:
    """The optimization profile for an artifact (see the module docstring)."""
    options = options or {}
    seen_max = int(length_stats.get("max", max_length))
    seq_max = _int_option(options, "seq_max") or max(max_length, 1)
    p90 = length_stats.get("p90", seen_max)
    seq_min = _int_option(options, "seq_min") or 1
    seq_opt = _int_option(options, "seq_opt") or min(_round_up(p90, SEQ_ROUND), seq_max)
    b_min = _int_option(options, "batch_min") or DEFAULT_BATCH[0]
    b_max = _int_option(options, "batch_max") or max(DEFAULT_BATCH[2], b_min)
    b_opt = _int_option(options, "batch_opt") or min(max(DEFAULT_BATCH[1], b_min), b_max)
    batch, seq = (b_min, b_opt, b_max), (seq_min, max(seq_opt, seq_min), seq_max)
    for name, (lo, mid, hi) in (("batch", batch), ("seq", seq)):
        if not lo <= mid <= hi:
            raise UsageError(f"TensorRT profile {name} min/opt/max {lo}/{mid}/{hi} is not ordered",
                             f"set {name}_min <= {name}_opt <= {name}_max")
    if seq_max > max_length:
        raise UsageError(f"TensorRT profile seq_max {seq_max} exceeds the model's max_length {max_length}",
                         f"set seq_max <= {max_length}")
    return Profile(batch=batch, seq=seq)


def trtexec_command(build: dict) -> str:
    """The ``trtexec`` line equivalent to ``build`` (run from the artifact folder)."""
    def spec(kind: str) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, s[kind]))}" for name, s in build["profiles"][0].items())

    args = ["trtexec", f"--onnx={build['onnx']}", "--stronglyTyped",
            f"--minShapes={spec('min')}", f"--optShapes={spec('opt')}", f"--maxShapes={spec('max')}",
            f"--memPoolSize=workspace:{build['workspace_mb']}M",
            f"--timingCacheFile={build['timing_cache']}", f"--saveEngine={build['engine']}", "--skipInference"]
    return " ".join(shlex.quote(a) for a in args)


def build_spec(*, onnx_file: str, precision: str, target: str, compute_capability: str,
               input_names: list[str], profile: Profile, options: dict | None = None) -> dict:
    options = options or {}
    workspace = _int_option(options, "workspace_mb") or DEFAULT_WORKSPACE_MB
    build = {
        "format": BUILD_FORMAT,
        "onnx": onnx_file,
        "engine": ENGINE_FILE,
        "precision": precision,
        "target": target,
        "compute_capability": compute_capability,
        # Strongly typed: precision comes from the graph's dtypes and Q/DQ nodes,
        # so no FP16/INT8 builder flags are set (TensorRT 11 has none).
        "strongly_typed": True,
        "builder_flags": [],
        "profiles": [profile.shapes(input_names)],
        "workspace_mb": workspace,
        "timing_cache": str(options.get("timing_cache") or DEFAULT_TIMING_CACHE),
    }
    build["trtexec"] = trtexec_command(build)
    return build


def write_build_files(out_dir: Path, build: dict) -> None:
    """``build.json`` plus an executable ``trtexec.sh`` with the same build."""
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / BUILD_FILE, build)
    script = out_dir / TRTEXEC_FILE
    script.write_text("#!/bin/sh\n# Build the TensorRT engine on the GPU host (same settings as build.json).\n"
                      'set -e\ncd "$(dirname "$0")"\n' + build["trtexec"] + "\n", encoding="utf-8")
    os.chmod(script, 0o755)
