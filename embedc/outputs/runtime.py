"""Which graph output ``encode(output=..., dims=...)`` reads."""
from __future__ import annotations

from ..errors import UsageError
from .spec import FORMATS


def pick_output(outputs: list[dict], output: str, dims: int | None, *, width: int, where: str) -> dict | None:
    """The compressed output for (format, dims); None for float32 (computed from the float output)."""
    if output not in FORMATS:
        raise UsageError(f"unknown output {output!r}", f"use one of {', '.join(FORMATS)}")
    d = width if dims is None else dims
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= width:
        raise UsageError(f"dims must be between 1 and the model's width {width}, got {dims!r}",
                         "leave it unset for the full width")
    def matches(o: dict) -> bool:
        if o["dims"] != d:
            return False
        if output == "int8-tanh":
            return o["format"] == "int8" and o["scheme"] == "tanh"
        return o["format"] == output
    found = sorted((o for o in outputs if matches(o)), key=lambda o: "_tanh" in o["name"])
    if found:
        return found[0]
    if output == "float32":
        return None
    have = ", ".join(f"{o['format']}{'/' + o['scheme'] if o.get('scheme') else ''}@{o['dims']}" for o in outputs)
    raise UsageError(f"{where} has no {output} output at {d} dims (it has: {have or 'no compressed outputs'})",
                     "rebuild it with --output/--dims (or the spec's [outputs] table)")
