"""What manifests and reports say about compressed outputs (the artifact's
``embedc.json`` holds the full record under ``compressed_outputs``: each
output's name, scheme, dims, dtype, bytes per vector, the calibration ranges
file and its sha256, the formula check and the parity)."""
from __future__ import annotations


def manifest_entry(record: dict) -> dict:
    def slim(entry: dict) -> dict:
        out = {k: v for k, v in entry.items() if k != "retrieval"}
        r = entry.get("retrieval") or {}
        out["retrieval"] = {part: {k: v for k, v in r[part].items() if k != "lang_top1"}
                            for part in ("compressed", "rescored") if part in r}
        return out

    return {"outputs": [{k: o[k] for k in ("name", "format", "scheme", "dims", "dtype", "shape", "bytes_per_vector",
                                          "source", "renormalize")} for o in record["outputs"]],
            "calibration": record.get("calibration"), "warnings": record.get("warnings", []),
            "untrained": record.get("untrained", []), "rescore_multiplier": record.get("rescore_multiplier"),
            "formula_check": record.get("formula_check"),
            "parity": {name: slim(e) for name, e in record["parity"].items()}}


def _f(x, nd=3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def rows(manifest: dict) -> list[list[str]]:
    out = []
    for a in manifest["artifacts"]:
        co = a.get("compressed_outputs")
        if not co:
            continue
        for o in co["outputs"]:
            e = co["parity"].get(o["name"], {})
            r = e.get("retrieval") or {}
            c, rs = r.get("compressed", {}), r.get("rescored", {})
            scheme = f"{o['format']}" + (f" ({o['scheme']})" if o.get("scheme") else "")
            out.append([a["name"], o["name"], scheme, str(o["dims"]), str(o["bytes_per_vector"]),
                        _f(e.get("cosine_mean"), 4), _f(c.get("top10")), _f(c.get("top1")),
                        _f(rs.get("top10")), _f(rs.get("top1")),
                        f"{rs.get('lang_top1_worst', c.get('lang_top1_worst', '-'))} "
                        f"{_f(rs.get('lang_top1_min', c.get('lang_top1_min')))}",
                        "yes" if o["name"] in co.get("untrained", []) else ""])
    return out


def markdown_section(manifest: dict) -> list[str]:
    body = rows(manifest)
    if not body:
        return []
    lines = ["", "## Compressed outputs", "",
             "Extra outputs of each artifact's graph, judged against the FP32 model on the evaluation split: "
             "retrieval vs the full-width FP32 ranking (all languages pooled); rescored = candidates retrieved "
             "with the compressed vectors, rescored with the float query against int8 document vectors.", "",
             "| artifact | output | format | dims | bytes/vector | cosine | top-10 | top-1 | rescored top-10 | "
             "rescored top-1 | worst language top-1 | not trained for |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    warnings = sorted({w for a in manifest["artifacts"] for w in ((a.get("compressed_outputs") or {})
                                                                  .get("warnings", []))})
    if warnings:
        lines += [""] + [f"**Warning**: {w}." for w in warnings]
    return lines
