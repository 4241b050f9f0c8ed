"""Plain-text rendering of gate outcomes, and the gate -> exception step.

The table is fixed-width ASCII with no color codes so it reads the same in a
log file, a terminal and a JSON string; the CLI may wrap it with rich.
"""
from __future__ import annotations

from typing import Sequence

from ..errors import ParityGateError
from .gates import GateOutcome

_HEADERS = ("STATUS", "GATE", "OBSERVED", "DETAIL")


def _gate_text(o: GateOutcome) -> str:
    return f"{o.metric}{o.op}{o.threshold:g}"


def _detail_lines(o: GateOutcome) -> list[str]:
    lines = [o.note] if o.note else []
    if o.failed:
        lines += [f"language {lang} {value:.6f}" for lang, value in o.languages]
        lines += [f"text {tid} [{lang}] {cos:.6f}" for tid, lang, cos in o.worst]
        lines += [f"query {qid}: {detail}" for qid, detail in o.queries]
    return lines or [""]


def render_table(outcomes: Sequence[GateOutcome], *, title: str | None = None) -> str:
    """One row per gate; a failed gate's languages and texts follow on
    continuation lines in the DETAIL column."""
    rows: list[tuple[str, str, str, list[str]]] = [
        (
            o.status.upper(),
            _gate_text(o),
            "-" if o.observed is None else f"{o.observed:.6f}",
            _detail_lines(o),
        )
        for o in outcomes
    ]
    widths = [len(h) for h in _HEADERS[:3]]
    for status, gate, observed, _ in rows:
        for i, cell in enumerate((status, gate, observed)):
            widths[i] = max(widths[i], len(cell))
    detail_w = max([len(_HEADERS[3])] + [len(line) for *_, lines in rows for line in lines])

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(w) for c, w in zip(cells[:3], widths)]
        return "  ".join(padded + [cells[3]]).rstrip()

    out: list[str] = []
    if title is not None:
        out.append(title)
    out.append(line(_HEADERS))
    out.append(line(["-" * w for w in widths] + ["-" * detail_w]))
    blank = ["", "", ""]
    for status, gate, observed, lines in rows:
        out.append(line([status, gate, observed, lines[0]]))
        out.extend(line(blank + [extra]) for extra in lines[1:])
    if not rows:
        out.append("(no gates)")
    return "\n".join(out)


def _failure_summary(o: GateOutcome) -> str:
    observed = "n/a" if o.observed is None else f"{o.observed:.6f}"
    where = f", {'/'.join(lang for lang, _ in o.languages)}" if o.languages else ""
    return f"{_gate_text(o)} (observed {observed}{where})"


def raise_if_failed(artifact_name: str, outcomes: Sequence[GateOutcome]) -> None:
    """Raise ``ParityGateError`` (exit code 3) if any gate failed.

    The message is one line naming the artifact, how many gates failed and
    which; the error carries ``.artifact``, ``.outcomes`` (all of them) and
    ``.table`` (``render_table`` output) for the CLI to print.
    """
    failed = [o for o in outcomes if o.failed]
    if not failed:
        return
    table = render_table(outcomes, title=f"parity gates for {artifact_name}")
    noun = "gate" if len(outcomes) == 1 else "gates"
    message = (
        f"{len(failed)} of {len(outcomes)} parity {noun} failed for {artifact_name}: "
        + "; ".join(_failure_summary(o) for o in failed)
    )
    err = ParityGateError(
        message,
        "see the parity table for the failing languages and texts; use a higher precision or "
        "keep sensitive layers in float, or override a threshold (e.g. 'min>=0.97') if the loss "
        "is acceptable",
    )
    err.artifact = artifact_name
    err.outcomes = list(outcomes)
    err.table = table
    raise err
