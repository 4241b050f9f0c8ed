"""report.html: one self-contained page (tables plus matplotlib plots embedded
as PNG data URIs), built from the manifest's data, not from report.md's text."""
from __future__ import annotations

import base64
import html
import io

from .markdown import fmt, summary_rows



def _marker(backend: str) -> str:
    """Each backend's own plot marker (its capabilities say which)."""
    from ..errors import TargetError
    from ..targets.registry import get_backend

    try:
        caps = get_backend(backend).capabilities
    except TargetError:
        return "D"
    return caps.report_marker
_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1250px;color:#222}"
          "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 9px;"
          "font-size:13px;text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
          "tr.row-fail td{background:#fde2e2}tr.row-error td{background:#f7d9a8}.pass{color:#1a7f37;font-weight:600}"
          ".fail,.error{color:#b42318;font-weight:600}img{max-width:100%;margin:.5em 0 1.5em}"
          "p.small{font-size:12px;color:#555}")


def _e(x) -> str:
    return html.escape(str(x))


def _table(headers: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(f"<tr class='{_e((classes or [''] * len(rows))[i])}'>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
                   for i, r in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)  # the figures' constrained layout fits labels and legend
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _loss(cos: float) -> float:
    """1 - cosine, floored so a bit-exact artifact still has a place on a log axis."""
    return max(1.0 - cos, 1e-7)


def _heatmap(arts: list[dict]) -> str:
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    langs = sorted({lang for a in arts for lang in a["parity"]["languages"]})
    loss = np.array([[_loss(a["parity"]["languages"][lg]["mean"]) if lg in a["parity"]["languages"] else np.nan
                      for lg in langs] for a in arts])
    fig, ax = plt.subplots(figsize=(max(8, 0.3 * len(langs) + 3), 0.42 * len(arts) + 1.8), layout="constrained")
    # Log scale of the loss: 0.9999 and 0.996 must look different, and the eye should go to the worst cells.
    im = ax.imshow(loss, aspect="auto", cmap="magma_r", norm=LogNorm(vmin=1e-6, vmax=max(1e-2, np.nanmax(loss))))
    ax.set_xticks(range(len(langs)), langs, rotation=90, fontsize=8)
    ax.set_yticks(range(len(arts)), [a["name"] for a in arts], fontsize=8)
    for i, a in enumerate(arts):  # mark each artifact's worst language (none when all are at the floor)
        j = int(np.nanargmax(loss[i]))
        if loss[i, j] <= 1e-6:
            continue
        ax.text(j, i, "×", ha="center", va="center", color="white" if loss[i, j] > 1e-3 else "black", fontsize=9)
    fig.colorbar(im, ax=ax, label="1 − mean cosine (log)")  # short: the figure can be 2 inches tall
    ax.set_title("Per-language parity vs torch FP32: where does quality drop?\n(darker = worse, × = worst language)",
                 fontsize=11)
    return _png(fig)


def _tradeoffs(arts: list[dict], bench: dict, batch_size: int) -> str:
    import matplotlib.pyplot as plt

    panels = 2 if bench else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels + 1.4, 4.6), squeeze=False, layout="constrained")
    precisions = sorted({a["precision"] for a in arts})
    colors = {p: plt.cm.tab10(i % 10) for i, p in enumerate(precisions)}
    for a in arts:
        style = dict(marker=_marker(a.get("backend") or "ort"), color=colors[a["precision"]], s=70, edgecolor="black",
                     linewidth=0.5)
        y = _loss(a["parity"]["mean"])
        axes[0][0].scatter((a.get("bytes") or 0) / 1e6, y, **style)
        if bench and a["name"] in bench:
            axes[0][1].scatter(bench[a["name"]]["throughput"], y, **style)
    if bench and "torch-fp32" in bench:
        axes[0][1].axvline(bench["torch-fp32"]["throughput"], color="grey", linestyle="--", linewidth=1)
        axes[0][1].annotate("torch FP32", (bench["torch-fp32"]["throughput"], 0.02), xycoords=("data", "axes fraction"),
                            rotation=90, fontsize=8, color="grey", xytext=(3, 0), textcoords="offset points")
    labels = [("size on disk (MB)", "Size vs parity")] + ([(f"batch-{batch_size} throughput (texts/s)",
                                                           "Speed vs parity")] if bench else [])
    for ax, (xlabel, title) in zip(axes[0], labels):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("1 − mean cosine (log; lower is better)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colors[p], label=p) for p in precisions]
    handles += [plt.Line2D([], [], marker=_marker(b), linestyle="", color="white", markeredgecolor="black", label=b)
                for b in sorted({a.get("backend") or "ort" for a in arts})]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    return _png(fig)


def _plots(manifest: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arts = [a for a in manifest["artifacts"] if (a.get("parity") or {}).get("languages")]
    if not arts:
        return []
    figures = manifest.get("bench") or {}
    bench = {b["name"]: b for b in figures.get("rows", [])}
    try:
        return [("Per-language parity", _heatmap(arts)),
                ("Size, speed and parity", _tradeoffs(arts, bench, figures.get("batch_size", 32)))]
    finally:
        plt.close("all")


def render_html(manifest: dict) -> str:
    m = manifest["model"]
    v = manifest["reference_export"]["validation"]
    out = [f"<h1>embedc build: {_e(m['name'])}</h1>"]
    if manifest.get("random_weights"):
        out.append("<p class='fail'>random weights: the numbers below say nothing about accuracy.</p>")
    out.append(f"<p>Verdict: <span class='{_e(manifest['verdict'])}'>{_e(manifest['verdict'])}</span>. "
               f"Reference export: opset {_e(manifest['reference_export']['opset'])}, validated on {_e(v['texts'])} "
               f"texts, min cosine {v['min_cosine']:.7f}, max abs diff {v['max_abs_diff']:.1e}. "
               f"Parity: torch FP32 reference on {_e(manifest['calibration']['evaluation']['size'])} held-out texts.</p>")
    rows = summary_rows(manifest)
    out.append("<h2>Parity and size</h2>")
    out.append(_table(["artifact", "status", "mean cos", "p01", "min", "worst language", "top-10 overlap", "top-1",
                       "size MB"],
                      [[_e(r["name"]), f"<span class='{_e(r['status'])}'>{_e(r['status'])}</span>", fmt(r["mean"], 5),
                        fmt(r["p01"], 5), fmt(r["min"], 5), f"{_e(r['worst_lang'])} {fmt(r['worst_lang_mean'], 5)}",
                        fmt(r["top10"], 3), fmt(r["top1"], 3), f"{r['mb']:.1f}"] for r in rows],
                      [f"row-{r['status']}" for r in rows]))
    plots = _plots(manifest)
    for title, uri in plots:
        out.append(f"<h2>{_e(title)}</h2><img alt='{_e(title)}' src='{uri}'>")
    bench = manifest.get("bench") or {}
    if bench.get("rows"):
        mf = bench.get("machine", {})
        out.append(f"<h2>Benchmark</h2><p class='small'>{_e(mf.get('cpu', ''))}, {_e(mf.get('cores', ''))} cores, "
                   f"{_e(bench.get('threads'))} threads; {_e(bench.get('n_queries'))} batch-1 queries, "
                   f"{_e(bench.get('n_passages'))} passages at batch {_e(bench.get('batch_size'))}; medians over "
                   f"{_e(bench.get('repeats'))} repeats after warm-up; each subject in its own process.</p>")
        out.append(_table(["model", "latency p50 ms", "p95 ms", "texts/s", "vs torch FP32", "peak RSS MB", "load s",
                           "size MB"],
                          [[_e(b["name"]), f"{b['latency_ms_p50']:.1f}", f"{b['latency_ms_p95']:.1f}",
                            f"{b['throughput']:.1f}", f"{b['speedup']:.2f}x", f"{b['peak_rss_mb']:.0f}",
                            f"{b['load_s']:.2f}", f"{b['size_mb']:.1f}"] for b in bench["rows"]]))
    elif bench.get("error"):
        out.append(f"<h2>Benchmark</h2><p class='fail'>Benchmark failed: {_e(bench['error'])}</p>")
    if bench.get("skipped"):
        out.append("<p class='small'>Not benchmarked here: " + "; ".join(
            f"{_e(s['name'])} ({_e(s['reason'])})" for s in bench["skipped"]) + ".</p>")
    failing = [a for a in manifest["artifacts"] if a["status"] != "pass"]
    if failing:
        items = []
        for a in failing:
            if a.get("error"):
                items.append(f"<li>{_e(a['name'])}: error: {_e(a['error'])}</li>")
            for o in (a.get("gates") or {}).get("outcomes", []):
                if o.get("status") == "fail":
                    langs = f", languages {_e(o['languages'])}" if o.get("languages") else ""
                    items.append(f"<li>{_e(a['name'])}: gate {_e(o['metric'])}&gt;={_e(o['threshold'])} "
                                 f"observed {fmt(o['observed'], 6)}{langs}</li>")
        out.append("<h2>Failures</h2><ul>" + "".join(items) + "</ul>")
    if manifest.get("unverified"):
        out.append("<h2>Not verified on this machine</h2><ul>" +
                   "".join(f"<li>{_e(u)}</li>" for u in manifest["unverified"]) + "</ul>")
    mf = manifest["machine"]
    out.append(f"<p class='small'>Machine: {_e(mf['cpu'])} ({_e(mf['cores'])} cores, flags "
               f"{_e(', '.join(mf['cpu_flags']))}). Versions: "
               + _e(", ".join(f"{k} {v}" for k, v in manifest["versions"].items())) + "</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>embedc report: {_e(m['name'])}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(out)}</body></html>")
