"""report.md and a self-contained report.html (plots embedded as PNG data URIs)."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path



def _rows(manifest: dict) -> list[dict]:
    rows = []
    bench = {b["name"]: b for b in (manifest.get("bench") or {}).get("rows", [])}
    for a in manifest["artifacts"]:
        p = a.get("parity") or {}
        langs = p.get("languages") or {}
        worst = min(langs.items(), key=lambda kv: kv[1]["mean"]) if langs else ("-", {"mean": None})
        r = p.get("retrieval") or {}
        rows.append({"name": a["name"], "status": a["status"], "mean": p.get("mean"), "p01": p.get("p01"),
                     "min": p.get("min"), "worst_lang": worst[0], "worst_lang_mean": worst[1]["mean"],
                     "top10": r.get("topk_overlap"), "top1": r.get("top1_agreement"),
                     "mb": (a.get("bytes") or 0) / 1e6, "bench": bench.get(a["name"]), "error": a.get("error")})
    return rows


def _f(x, nd=4) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def render_markdown(manifest: dict) -> str:
    m = manifest["model"]
    lines = [f"# embedc build: {m['name']}", ""]
    if manifest.get("random_weights"):
        lines += ["**random weights**: numbers below say nothing about accuracy.", ""]
    v = manifest["reference_export"]["validation"]
    lines += [f"Reference export: opset {manifest['reference_export']['opset']}, validated on {v['texts']} texts, "
              f"min cosine {v['min_cosine']:.7f}, max abs diff {v['max_abs_diff']:.1e}.", "",
              f"Verdict: **{manifest['verdict']}**", "",
              "| artifact | status | mean | p01 | min | worst language | top-10 overlap | top-1 | size MB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in _rows(manifest):
        lines.append(f"| {r['name']} | {r['status']} | {_f(r['mean'])} | {_f(r['p01'])} | {_f(r['min'])} | "
                     f"{r['worst_lang']} {_f(r['worst_lang_mean'])} | {_f(r['top10'], 3)} | {_f(r['top1'], 3)} | "
                     f"{r['mb']:.1f} |")
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
                    lines.append(f"- {a['name']}: gate {o['metric']}>={o['threshold']} observed {_f(o['observed'], 6)}"
                                 + (f", languages {o.get('languages')}" if o.get("languages") else ""))
    if manifest.get("unverified"):
        lines += ["", "## Not verified on this machine", ""] + [f"- {u}" for u in manifest["unverified"]]
    mf = manifest["machine"]
    lines += ["", f"Machine: {mf['cpu']} ({mf['cores']} cores, flags {', '.join(mf['cpu_flags'])}); "
              f"versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items())]
    return "\n".join(lines) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(manifest: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arts = [a for a in manifest["artifacts"] if a.get("parity") and a["parity"].get("languages")]
    plots = []
    if arts:
        langs = sorted({lang for a in arts for lang in a["parity"]["languages"]})
        grid = np.array([[a["parity"]["languages"].get(lang, {}).get("mean", np.nan) for lang in langs]
                         for a in arts])
        fig, ax = plt.subplots(figsize=(max(8, 0.32 * len(langs)), 0.45 * len(arts) + 1.6))
        im = ax.imshow(grid, aspect="auto", cmap="RdYlGn", vmin=min(0.98, np.nanmin(grid)), vmax=1.0)
        ax.set_xticks(range(len(langs)), langs, rotation=90, fontsize=8)
        ax.set_yticks(range(len(arts)), [a["name"] for a in arts], fontsize=8)
        fig.colorbar(im, ax=ax, label="mean cosine vs FP32")
        ax.set_title("Per-language mean cosine: where does quality drop?")
        plots.append(("Per-language parity", _png(fig)))
        plt.close(fig)
        bench = {b["name"]: b for b in (manifest.get("bench") or {}).get("rows", [])}
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for a in arts:
            size = (a.get("bytes") or 0) / 1e6
            b = bench.get(a["name"])
            x = b["throughput"] if b else a["parity"]["mean"]
            ax.scatter(size, a["parity"]["mean"], s=40 + (x if b else 0) * 2)
            ax.annotate(a["name"], (size, a["parity"]["mean"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
        ax.set_xlabel("size on disk (MB)")
        ax.set_ylabel("mean cosine vs FP32")
        ax.set_title("Size vs parity" + (" (marker area ~ batch-32 throughput)" if bench else ""))
        ax.grid(alpha=0.3)
        plots.append(("Size, speed and parity", _png(fig)))
        plt.close(fig)
    return plots


def render_html(manifest: dict, markdown: str) -> str:
    body = []
    for line in markdown.splitlines():
        if line.startswith("|---"):
            continue
        if line.startswith("| "):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if body and body[-1].startswith("<tr>") and not line.startswith("|"):
            body.append("</table>")
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('**', '')}</p>")
        if line.startswith("| artifact") or line.startswith("| model"):
            body[-1] = "<table>" + body[-1].replace("<td>", "<th>").replace("</td>", "</th>")
    if body and body[-1].startswith("<tr>"):
        body.append("</table>")
    for title, uri in _plots(manifest):
        body.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='{uri}'>")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>embedc report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def write_reports(result, folder: Path) -> None:
    md = render_markdown(result.manifest)
    (Path(folder) / "report.md").write_text(md, encoding="utf-8")
    (Path(folder) / "report.html").write_text(render_html(result.manifest, md), encoding="utf-8")
