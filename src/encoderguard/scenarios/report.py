"""``report.html``: a self-contained page (plots embedded as PNG data URIs, no external scripts or fonts).

Reads a run directory holding ``summary.json`` (written by the demo) and, where present, a stealing sweep table
``sweep/sweep.csv``. Needs matplotlib (the ``plots`` extra).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from encoderguard.errors import EncoderGuardError
from encoderguard.models.checkpoint import atomic_write_bytes
from encoderguard.optional import pyplot

SUSPECTS = ("victim", "stolen", "independent")
_MEANING = {
    "stolen": "the test found evidence (p < alpha) that this model is the owner's model or derived from it",
    "independent": "no evidence of derivation at this significance level (not a proof of independence)",
    "inconclusive": "the test could not have detected derivation here (see the reason); no verdict is claimed",
}


def _plt() -> Any:
    return pyplot("the report")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.2e}" if (value != 0 and abs(value) < 1e-3) else f"{value:.{digits}f}"
    return "n/a" if value is None else html.escape(str(value))


def _probe_figure(summary: dict[str, Any]) -> str | None:
    names, accs = [], []
    for name in SUSPECTS:
        entry = summary.get(name) or {}
        if isinstance(entry.get("linear_acc"), (int, float)):
            names.append(name)
            accs.append(entry["linear_acc"])
    base = (summary.get("victim") or {}).get("random_init_linear_acc")
    if not names:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(names, accs, color=["#4c72b0", "#dd8452", "#55a868"][: len(names)])
    if isinstance(base, (int, float)):
        ax.axhline(base, color="grey", linestyle="--", label=f"random init {base:.3f}")
        ax.legend(loc="lower right")
    low = min(accs + ([base] if isinstance(base, (int, float)) else [])) - 0.05
    ax.set_ylim(max(0.0, low), min(1.0, max(accs) + 0.03))
    ax.set_ylabel("linear-probe accuracy")
    ax.set_title("Downstream quality (probe-test)")
    return _png(fig)


def _sweep_figure(run_dir: Path) -> str | None:
    path = run_dir / "sweep" / "sweep.csv"
    if not path.is_file():
        return None
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for loss in sorted({r["loss"] for r in rows}):
        sel = sorted((r for r in rows if r["loss"] == loss), key=lambda r: float(r["queries_paid"]))
        q = [float(r["queries_paid"]) for r in sel]
        axes[0].plot(q, [float(r["gain_recovery"]) for r in sel], marker="o", label=loss)
        axes[1].plot(q, [float(r["fidelity_cosine"]) for r in sel], marker="o", label=loss)
    for ax, label in zip(axes, ("gain recovery", "fidelity (cosine)"), strict=False):
        ax.set_xscale("log")
        ax.set_xlabel("queries paid")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle("Stealing: what each query buys")
    return _png(fig)


def _di_histogram(entry: Any) -> dict[str, Any] | None:
    """The suspect's histogram from ``verify di --json``'s ``details.scores`` (edges + member/non-member densities)."""
    hist = entry.get("suspect") if isinstance(entry, dict) else None
    if not isinstance(hist, dict):
        return None
    edges, members, nonmembers = hist.get("edges"), hist.get("members"), hist.get("nonmembers")
    if not (isinstance(edges, list) and isinstance(members, list) and isinstance(nonmembers, list)):
        return None
    if len(edges) != len(members) + 1 or len(members) != len(nonmembers) or not members:
        return None
    return hist


def _di_figure(summary: dict[str, Any]) -> str | None:
    scores = summary.get("di_scores") or {}
    present = [(s, h) for s in SUSPECTS if (h := _di_histogram(scores.get(s))) is not None]
    if not present:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(present), figsize=(3.6 * len(present), 3), squeeze=False)
    for ax, (name, hist) in zip(axes[0], present, strict=False):
        ax.stairs(hist["members"], hist["edges"], fill=True, alpha=0.5, label="owner-train")
        ax.stairs(hist["nonmembers"], hist["edges"], fill=True, alpha=0.5, label="owner-heldout")
        p = hist.get("p_value")
        ax.set_title(f"{name}" + (f" (p = {p:.3g})" if isinstance(p, (int, float)) else ""), fontsize=9)
        ax.set_xlabel("membership score (held-out SDs)", fontsize=8)
    axes[0][0].set_ylabel("density")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Dataset inference: nearest-neighbour scores of training vs held-out images")
    fig.tight_layout()
    return _png(fig)


def _watermark_figure(summary: dict[str, Any]) -> str | None:
    rows = [(v["suspect"], (v.get("statistic"))) for v in summary.get("verdicts", [])
            if v.get("method") == "watermark" and isinstance(v.get("statistic"), (int, float))]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([r[0] for r in rows], [r[1] for r in rows], color="#8172b3")
    ax.axhline(0.5, color="grey", linestyle="--", label="chance (0.5)")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("watermark-task accuracy")
    ax.legend(loc="upper right")
    ax.set_title("Watermark: owner's secret head on each suspect")
    return _png(fig)


def render_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from ``run_dir/summary.json``; returns its path."""
    run = Path(run_dir)
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise EncoderGuardError(f"{run}: no summary.json (run 'encoderguard demo --out {run}' first)")
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError as exc:
        raise EncoderGuardError(f"{summary_path}: not valid JSON ({exc})") from exc
    figures = [("Downstream quality", _probe_figure(summary)), ("Stealing curve", _sweep_figure(run)),
               ("Dataset inference", _di_figure(summary)), ("Watermark", _watermark_figure(summary))]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>encoderguard report</title><style>",
             "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:980px;margin:2em auto;"
             "padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:4px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
             ".stolen{color:#b00020;font-weight:bold}.independent{color:#1b7f3b;font-weight:bold}"
             ".inconclusive{color:#a66a00;font-weight:bold}img{max-width:100%}.note{color:#555;font-size:.9em}"
             "</style></head><body>",
             "<h1>encoderguard report</h1>",
             f"<p class='note'>Run directory: {html.escape(str(run))}. Total time "
             f"{_fmt(summary.get('seconds'), 1)} s.</p>"]
    parts.append("<h2>Models</h2><table><tr><th>model</th><th>linear probe</th><th>kNN</th><th>fidelity to victim"
                 "</th><th>queries paid</th></tr>")
    for name in SUSPECTS:
        entry = summary.get(name) or {}
        parts.append(f"<tr><td>{name}</td><td>{_fmt(entry.get('linear_acc'))}</td><td>{_fmt(entry.get('knn_acc'))}"
                     f"</td><td>{_fmt(entry.get('fidelity_cosine'))}</td><td>{_fmt(entry.get('queries_paid'))}"
                     "</td></tr>")
    parts.append("</table>")
    if summary.get("combined"):
        parts.append("<h2>Decisions</h2><p class='note'>One decision per suspect: Holm-Bonferroni over the "
                     "calibrated tests that detect the owner's own model (and its own copy), family-wise error at "
                     "most alpha.</p><table><tr><th>suspect</th><th>decision</th><th>combined p</th><th>family</th>"
                     "<th>reason</th></tr>")
        for c in summary["combined"]:
            verdict = str(c.get("verdict"))
            parts.append(f"<tr><td>{_fmt(c.get('suspect'))}</td><td class='{html.escape(verdict)}'>"
                         f"{html.escape(verdict)}</td><td>{_fmt(c.get('combined_p'))}</td>"
                         f"<td>{html.escape(', '.join(c.get('family') or []))}</td>"
                         f"<td>{html.escape(str(c.get('reason') or ''))}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Verdicts per test</h2><table><tr><th>suspect</th><th>method</th><th>verdict</th><th>p-value</th>"
                 "<th>effect</th><th>n</th><th>suspect queries</th></tr>")
    for v in summary.get("verdicts", []):
        verdict = str(v.get("verdict"))
        parts.append(f"<tr><td>{_fmt(v.get('suspect'))}</td><td>{_fmt(v.get('method'))}</td>"
                     f"<td class='{html.escape(verdict)}'>{html.escape(verdict)}</td><td>{_fmt(v.get('p_value'))}"
                     f"</td><td>{_fmt(v.get('effect'))}</td><td>{_fmt(v.get('n'))}</td>"
                     f"<td>{_fmt(v.get('queries_used'))}</td></tr>")
    parts.append("</table><ul>")
    parts += [f"<li><b>{k}</b>: {html.escape(m)}.</li>" for k, m in _MEANING.items()]
    parts.append("</ul>")
    warnings = [(v.get("suspect"), v.get("method"), w) for v in summary.get("verdicts", [])
                for w in v.get("warnings", [])]
    if warnings:
        parts.append("<h3>Warnings</h3><ul>")
        parts += [f"<li>{html.escape(str(s))} / {html.escape(str(m))}: {html.escape(str(w))}</li>"
                  for s, m, w in warnings]
        parts.append("</ul>")
    for title, uri in figures:
        if uri:
            parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='{uri}'>")
    parts.append("</body></html>")
    out = run / "report.html"
    atomic_write_bytes(out, "\n".join(parts).encode())
    return out
