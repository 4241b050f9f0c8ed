"""Gates on compressed outputs: ``"metric>=x,metric>=y"`` per format
(``[outputs] gates = {int8 = "rescored_top10>=0.97"}``; ``"*"`` for every
format; an empty string turns a format's gates off).

Default gates apply to the heads the model is trained for (full width, or
Matryoshka dims on a model trained for them, and not the tanh scheme on a
model not trained for it): those combinations carry a warning in the report
instead, and only gates the spec sets. Defaults come from measurements on
multilingual-e5-small (benchmarks/compressed_outputs.md), set a little below
what it scored, so a broken head fails while an honest one passes."""
from __future__ import annotations

from ..errors import SpecError
from .parity import flat_metrics
from .spec import Head

METRICS = ("cosine_mean", "cosine_min", "lang_cosine_min", "top10", "top1", "lang_top1_min", "rescored_top10",
           "rescored_top1", "rescored_lang_top1_min")

# multilingual-e5-small, ort-cpu-avx2/int8-static, 304 x 304 texts, rescoring x4 (vs torch FP32):
# int8 calibrated cosine 0.9989, rescored top-10 0.910 / top-1 0.895 (the artifact's own float
# output scores 0.925 top-10: the model's quantization is most of that loss); ubinary rescored
# with int8 top-10 0.455 (sign bits of e5's anisotropic vectors carry little). A broken head
# scores ~0.03 (random ranking).
DEFAULTS = {
    "float32": "top10>=0.90,top1>=0.85",
    "int8": "cosine_mean>=0.99,rescored_top10>=0.85,rescored_top1>=0.80",
    "binary": "rescored_top10>=0.35",
    "ubinary": "rescored_top10>=0.35",
}


def parse_output_gates(text: str) -> list[tuple[str, float]]:
    out = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if ">=" not in part:
            raise SpecError(f"output gate {part!r} is not metric>=value", f"metrics: {', '.join(METRICS)}")
        metric, value = (s.strip() for s in part.split(">=", 1))
        if metric not in METRICS:
            raise SpecError(f"unknown output gate metric {metric!r}", f"metrics: {', '.join(METRICS)}")
        try:
            out.append((metric, float(value)))
        except ValueError:
            raise SpecError(f"output gate {part!r} has no number", "e.g. rescored_top10>=0.9") from None
    return out


def _format_key(h: Head) -> str:
    return "int8-tanh" if h.format == "int8" and h.scheme == "tanh" else h.format


def resolve(head: Head, spec_gates: dict, untrained: bool) -> list[tuple[str, float, str]]:
    """(metric, threshold, source) for one head."""
    key = _format_key(head)
    for k in (key, head.format, "*"):
        if k in (spec_gates or {}):
            return [(m, t, f"[outputs] gates.{k}") for m, t in parse_output_gates(spec_gates[k])]
    if untrained:
        return []
    return [(m, t, "default") for m, t in parse_output_gates(DEFAULTS.get(head.format, ""))]


def evaluate(heads: list[Head], parity: dict, spec_gates: dict, untrained: set[str]) -> list:
    from ..parity.gates import GateOutcome

    outcomes = []
    for h in heads:
        metrics = flat_metrics(parity.get(h.name, {}))
        for metric, threshold, source in resolve(h, spec_gates, h.name in untrained):
            observed = metrics.get(metric)
            if observed is None:
                outcomes.append(GateOutcome(f"{h.name}.{metric}", ">=", threshold, None, "skip",
                                            note="not measured for this output", source=source))
                continue
            status = "pass" if observed >= threshold - 1e-12 else "fail"
            langs = ()
            if status == "fail" and metric.endswith("lang_top1_min"):
                part = parity[h.name]["retrieval"]["rescored" if metric.startswith("rescored") else "compressed"]
                langs = tuple(sorted(((lg, v) for lg, v in part["lang_top1"].items() if v < threshold),
                                     key=lambda kv: kv[1]))
            outcomes.append(GateOutcome(f"{h.name}.{metric}", ">=", threshold, float(observed), status,
                                        languages=langs, source=source))
    return outcomes
