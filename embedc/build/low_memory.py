"""Whether a model goes through the low-memory path (meta-device export,
weights one tensor at a time, no whole-model ONNX copies in the ORT int4
recipe).

``auto`` turns it on when the model's FP32 weights exceed
``AUTO_FRACTION`` of this machine's memory: the normal path holds the torch
model and the exporter's or quantizer's copies at once, 2-3x the FP32 size
(the 0.6B decoder's build peaked at 2.95x its 2.4 GB), so beyond ~45% of RAM
it cannot fit (the low-memory 4B build peaked at 1.2x its 16.1 GB). ``on`` forces it (tests; a machine shared with other jobs),
``off`` never uses it."""
from __future__ import annotations

import contextlib
import os

from ..errors import UsageError

SETTINGS = ("auto", "on", "off")
AUTO_FRACTION = 0.45


def machine_memory_bytes() -> int:
    """Physical memory, or the cgroup limit when that is smaller (containers)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError):  # no cgroup v2 limit file: the physical memory stands
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    return total


def resolve_low_memory(setting: str, family, source, adapter) -> dict:
    """``{"enabled", "setting", "reason"}`` for this model on this machine."""
    if setting not in SETTINGS:
        raise UsageError(f"low_memory is {setting!r}", f"choose one of: {', '.join(SETTINGS)}")
    if setting == "off":
        return {"enabled": False, "setting": setting, "reason": "low_memory = off"}
    if not getattr(family, "low_memory_path", False):
        if setting == "on":
            raise UsageError(f"the {family.name} model family has no low-memory path",
                             "use --low-memory auto or off, or [export] low_memory in the spec")
        return {"enabled": False, "setting": setting, "reason": f"the {family.name} family has no low-memory path"}
    if setting == "on":
        return {"enabled": True, "setting": setting, "reason": "low_memory = on"}
    from ..models.weights import fp32_bytes

    model, _ = family.weight_stream(source, adapter)
    need, ram = fp32_bytes(model), machine_memory_bytes()
    enabled = need > AUTO_FRACTION * ram
    return {"enabled": enabled, "setting": setting,
            "reason": f"FP32 weights {need / 1e9:.1f} GB {'>' if enabled else '<='} {AUTO_FRACTION:.0%} of this "
                      f"machine's {ram / 1e9:.1f} GB"}
