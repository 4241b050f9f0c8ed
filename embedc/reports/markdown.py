"""report.md (the text a person reads in a terminal or a PR) and report.html
(report_html.py) from one manifest."""
from __future__ import annotations

from pathlib import Path


def summary_rows(manifest: dict) -> list[dict]:
    """One row per artifact: status, parity summary and size (both reports' main table)."""
    rows = []
    for a in manifest["artifacts"]:
        p = a.get("parity") or {}
        langs = p.get("languages") or {}
        worst = min(langs.items(), key=lambda kv: kv[1]["mean"]) if langs else ("-", {"mean": None})
        r = p.get("retrieval") or {}
        rows.append({"name": a["name"], "status": a["status"], "mean": p.get("mean"), "p01": p.get("p01"),
                     "min": p.get("min"), "worst_lang": worst[0], "worst_lang_mean": worst[1]["mean"],
                     "top10": r.get("topk_overlap"), "top1": r.get("top1_agreement"),
                     "mb": (a.get("bytes") or 0) / 1e6, "error": a.get("error")})
    return rows


def fmt(x, nd=4) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def render_markdown(manifest: dict) -> str:
    m = manifest["model"]
    lines = [f"# embedc build: {m['name']}", ""]
    if manifest.get("random_weights"):
        lines += ["**random weights**: numbers below say nothing about accuracy.", ""]
    v = manifest["reference_export"]["validation"]
    for note in manifest["model"].get("notes", []):  # e.g. "language model, not a trained embedder"
        lines += [f"Note: {note}.", ""]
    rp = manifest.get("remote_code_parity")
    if rp:
        lines += [f"Remote code vs embedc's own implementation ({rp['texts']} texts, torch FP32): mean cosine "
                  f"{rp['mean_cosine']:.7f}, min {rp['min_cosine']:.7f}, max abs diff {rp['max_abs_diff']:.1e}.", ""]
    lines += [f"Reference export: opset {manifest['reference_export']['opset']}, validated on {v['texts']} texts, "
              f"min cosine {v['min_cosine']:.7f}, max abs diff {v['max_abs_diff']:.1e}.", "",
              f"Verdict: **{manifest['verdict']}**", "",
              "| artifact | status | mean | p01 | min | worst language | top-10 overlap | top-1 | size MB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in summary_rows(manifest):
        lines.append(f"| {r['name']} | {r['status']} | {fmt(r['mean'])} | {fmt(r['p01'])} | {fmt(r['min'])} | "
                     f"{r['worst_lang']} {fmt(r['worst_lang_mean'])} | {fmt(r['top10'], 3)} | {fmt(r['top1'], 3)} | "
                     f"{r['mb']:.1f} |")
    lines += _length_table(manifest)
    from ..outputs.record import markdown_section

    lines += markdown_section(manifest)
    bench = manifest.get("bench")
    if bench and bench.get("error"):
        lines += ["", "## Benchmark", "", f"Benchmark failed: {bench['error']}"]
    elif bench:
        lines += ["", f"## Benchmark ({bench.get('machine', {}).get('cpu', '')}, {bench.get('threads')} threads)", "",
                  f"| model | batch-1 latency ms (p50 / p95) | batch-{bench.get('batch_size', 32)} texts/s | vs torch | peak RSS MB | load s | size MB |",
                  "|---|---|---|---|---|---|---|"]
        for b in bench["rows"]:
            lines.append(f"| {b['name']} | {b['latency_ms_p50']:.1f} / {b['latency_ms_p95']:.1f} | "
                         f"{b['throughput']:.1f} | {b['speedup']:.2f}x | {b['peak_rss_mb']:.0f} | "
                         f"{b['load_s']:.2f} | {b['size_mb']:.1f} |")
    skipped = (bench or {}).get("skipped", [])
    if skipped:
        lines += ["", "Not benchmarked here: " + "; ".join(f"{sk['name']} ({sk['reason']})" for sk in skipped) + "."]
    failing = [a for a in manifest["artifacts"] if a["status"] != "pass"]
    if failing:
        lines += ["", "## Failures", ""]
        for a in failing:
            if a.get("error"):
                lines.append(f"- {a['name']}: error: {a['error']}")
            for o in (a.get("gates") or {}).get("outcomes", []):
                if o.get("status") == "fail":
                    lines.append(f"- {a['name']}: gate {o['metric']}>={o['threshold']} observed {fmt(o['observed'], 6)}"
                                 + (f", languages {o.get('languages')}" if o.get("languages") else ""))
    if manifest.get("unverified"):
        lines += ["", "## Not verified on this machine", ""] + [f"- {u}" for u in manifest["unverified"]]
    mf = manifest["machine"]
    lines += ["", f"Machine: {mf['cpu']} ({mf['cores']} cores, flags {', '.join(mf['cpu_flags'])}); "
              f"versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items())]
    return "\n".join(lines) + "\n"


def _length_table(manifest: dict) -> list[str]:
    """Mean (min) cosine per input-length bucket, one row per artifact: long
    inputs are where truncation and position handling go wrong."""
    rows = [(a["name"], a["parity_by_length"]) for a in manifest["artifacts"] if a.get("parity_by_length")]
    if not rows:
        return []
    first = rows[0][1]
    labels = [f"{b['low']}-{b['high']}" for b in first["buckets"]]
    counts = " | ".join(str(b["count"]) for b in first["buckets"])
    out = ["", f"## Parity by input length (tokens; evaluation texts judged up to {first['max_length']}, "
               f"{first['at_max_length']} of them reach it)", "",
           "| artifact | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels), f"| texts | {counts} |"]
    for name, lp in rows:
        cells = ["-" if b["mean"] is None else f"{b['mean']:.5f} ({b['min']:.4f})" for b in lp["buckets"]]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out + ["", "Cells: mean cosine (min) vs torch FP32."]


def write_reports(result, folder: Path) -> None:
    md = render_markdown(result.manifest)
    (Path(folder) / "report.md").write_text(md, encoding="utf-8")
    from .html import render_html

    (Path(folder) / "report.html").write_text(render_html(result.manifest), encoding="utf-8")
