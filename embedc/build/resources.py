"""What each (target, precision) asks of a cluster node, and what a node offers.

Pure functions, no Ray import: ``request_for`` turns a target's hardware needs
into a Ray resource request; ``node_resources`` turns this machine's CPU flags
and devices into the custom resources a worker advertises
(``ray start --resources "$(embedc node-resources)"``); ``unmet`` says which
part of a request a node cannot give.

Custom resources are presence markers: a node advertises ``cpu_vnni: 1`` and a
pair asks for a sliver of it (``PRESENCE``), so concurrency stays bounded by
CPUs, not by the marker. Devices a pair uses exclusively (an NVIDIA GPU, an
Intel GPU or NPU) are counted: one per pair.

| target needs                          | request                                  |
|---------------------------------------|------------------------------------------|
| ``isa: any`` (portable CPU)           | CPUs only                                |
| x86-64 AVX2                           | ``cpu_avx2``                             |
| x86-64 AVX-512 VNNI / AVX-VNNI        | ``cpu_vnni`` (either flag; ``amx_int8``) |
| arm64                                 | ``cpu_arm64``                            |
| OpenVINO GPU / NPU                    | ``intel_gpu`` / ``intel_npu``: 1          |
| TensorRT smXY                         | ``GPU: 1`` and ``gpu_smXY``              |
| a model of B bytes                    | ``memory``: ``MEMORY_BASE + MEMORY_FACTOR * B`` |
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field

PRESENCE = 0.001            # what a pair asks of a presence marker
MEMORY_BASE = 1 << 30       # Python, torch, onnxruntime and the tokenizer in a worker
MEMORY_FACTOR = 4           # the model, its quantized copy, calibration activations, a session (an estimate)

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@dataclass(frozen=True)
class ResourceRequest:
    """One pair's request: Ray's ``num_cpus``, ``num_gpus``, ``memory`` and custom ``resources``."""

    num_cpus: float = 1
    num_gpus: float = 0
    memory: int = 0                                   # bytes (Ray's logical memory resource)
    resources: dict = field(default_factory=dict)     # custom resources
    needs: tuple[str, ...] = ()                       # the hardware in words, for messages

    def ray_options(self) -> dict:
        opts: dict = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            opts["num_gpus"] = self.num_gpus
        if self.memory:
            opts["memory"] = int(self.memory)
        if self.resources:
            opts["resources"] = dict(self.resources)
        return opts

    def as_totals(self) -> dict:
        """The request as Ray resource names -> amounts (what a node's totals must cover)."""
        out = {"CPU": float(self.num_cpus), **{k: float(v) for k, v in self.resources.items()}}
        if self.num_gpus:
            out["GPU"] = float(self.num_gpus)
        if self.memory:
            out["memory"] = float(self.memory)
        return {k: v for k, v in out.items() if v}

    def describe(self) -> str:
        return ", ".join(f"{k} {_fmt(k, v)}" for k, v in self.as_totals().items())


def _fmt(name: str, value: float) -> str:
    if name == "memory":
        return f"{value / 2**30:.1f} GiB"
    return "present" if value == PRESENCE else f"{value:g}"


def hardware_resources(target) -> tuple[dict, float, tuple[str, ...]]:
    """(custom resources, GPUs, needs in words) of a target: what its artifacts must be built and judged on."""
    settings = target.settings or {}
    device = target.device
    isa = str(settings.get("isa", ""))
    if device == "cuda":
        cc = str(settings.get("compute_capability", "")).replace(".", "")
        if not cc:
            return {}, 1.0, ("an NVIDIA GPU",)
        return {f"gpu_sm{cc}": PRESENCE}, 1.0, (f"an NVIDIA GPU of compute capability sm{cc}",)
    if device == "gpu":
        return {"intel_gpu": 1.0}, 0.0, ("an Intel GPU (OpenVINO GPU plugin)",)
    if device == "npu":
        return {"intel_npu": 1.0}, 0.0, ("an Intel NPU (OpenVINO NPU plugin)",)
    if "VNNI" in isa and "no VNNI" not in isa:
        return {"cpu_vnni": PRESENCE}, 0.0, ("an x86-64 CPU with AVX-512 VNNI or AVX-VNNI",)
    if isa.startswith("x86-64 AVX2"):
        return {"cpu_avx2": PRESENCE}, 0.0, ("an x86-64 CPU with AVX2",)
    if isa == "arm64":
        return {"cpu_arm64": PRESENCE}, 0.0, ("an arm64 CPU",)
    return {}, 0.0, ()


def memory_for(model_bytes: int | None) -> int:
    """Logical memory a pair asks for, from the reference export's size."""
    if not model_bytes:
        return 0
    return int(MEMORY_BASE + MEMORY_FACTOR * int(model_bytes))


def request_for(target, precision: str, *, model_bytes: int | None = None, cpus: float = 1,
                hardware: str = "required") -> ResourceRequest:
    """The resource request of one (target, precision). ``hardware="any"``
    drops the device/ISA part (the pair runs where a local build would, its
    artifact says what was not exercised); memory and CPUs stay."""
    res, gpus, needs = hardware_resources(target)
    if hardware == "any":
        res, gpus, needs = {}, 0.0, ()
    return ResourceRequest(num_cpus=cpus, num_gpus=gpus, memory=memory_for(model_bytes), resources=res,
                           needs=needs)


def unmet(request: ResourceRequest, offered: dict) -> list[str]:
    """Resource names in ``request`` that a node offering ``offered`` (its totals) cannot cover."""
    return sorted(k for k, v in request.as_totals().items() if float(offered.get(k, 0.0)) + 1e-9 < v)


def eligible(request: ResourceRequest, nodes: dict[str, dict]) -> list[str]:
    """Node ids (of ``{node_id: totals}``) whose totals cover ``request``."""
    return [n for n, offered in nodes.items() if not unmet(request, offered)]


# ---- what this machine offers ---------------------------------------------------------------------
def node_resources(flags: set[str] | None = None, machine: str | None = None, gpu_ccs: list[str] | None = None,
                   intel_devices: list[str] | None = None) -> dict:
    """Custom resources for ``ray start --resources``: this machine's CPU kernels and devices.

    Arguments override detection (tests); by default they are read from
    /proc/cpuinfo, ``platform.machine()``, ``nvidia-smi`` and OpenVINO."""
    from ..machine import cpu_flags

    flags = set(cpu_flags() or ()) if flags is None else set(flags)
    machine = (machine or platform.machine()).lower()
    out: dict[str, float] = {}
    if machine in ("x86_64", "amd64"):
        out["cpu_x86_64"] = 1.0
        if "avx2" in flags:
            out["cpu_avx2"] = 1.0
        for f in ("avx512_vnni", "avx_vnni", "amx_int8"):
            if f in flags:
                out[f"cpu_{f}"] = 1.0
        if flags & VNNI_FLAGS:
            out["cpu_vnni"] = 1.0
    elif machine in ("aarch64", "arm64"):
        out["cpu_arm64"] = 1.0
    ccs = detect_gpu_compute_capabilities() if gpu_ccs is None else gpu_ccs
    for cc in ccs:
        key = f"gpu_sm{cc.replace('.', '')}"
        out[key] = 1.0
    devices = detect_intel_devices() if intel_devices is None else intel_devices
    for d in devices:
        kind = d.split(".")[0].upper()
        if kind in ("GPU", "NPU"):
            name = f"intel_{kind.lower()}"
            out[name] = out.get(name, 0.0) + 1.0
    return out


def detect_gpu_compute_capabilities() -> list[str]:
    """Compute capability per NVIDIA GPU ("9.0", ...) from nvidia-smi; [] without one."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        res = subprocess.run([exe, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in res.stdout.splitlines() if line.strip()]


def detect_intel_devices() -> list[str]:
    """OpenVINO's GPU/NPU device names when OpenVINO is installed (``EMBEDC_NO_OPENVINO_PROBE=1`` skips)."""
    if os.environ.get("EMBEDC_NO_OPENVINO_PROBE"):
        return []
    from ..targets.openvino.telemetry import block_telemetry

    block_telemetry()
    try:
        import openvino as ov
    except ImportError:
        return []
    try:
        return [d for d in ov.Core().available_devices if d.split(".")[0] in ("GPU", "NPU")]
    except Exception:  # noqa: BLE001 - a broken plugin means no device
        return []
