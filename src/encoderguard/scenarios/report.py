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


def _dashboard_section(summary: dict[str, Any]) -> list[str]:
    """The owner dashboard's snapshot taken while the demo's server was up: per-key usage and alerts, and a link."""
    entry = summary.get("dashboard") or {}
    snapshot = entry.get("snapshot")
    if not snapshot:
        return []
    try:
        state = json.loads(Path(snapshot).read_text())
    except (OSError, ValueError):
        return []
    rows = ["<h2>Owner dashboard (snapshot after the theft)</h2>",
            f"<p>Live at {html.escape(str(entry.get('url')))} while the server ran; state saved to "
            f"<a href='{html.escape(Path(snapshot).name)}'>{html.escape(Path(snapshot).name)}</a>.</p>",
            "<table><tr><th>key</th><th>name</th><th>inputs charged</th><th>quota</th><th>risk</th></tr>"]
    for key in state.get("keys", []) if isinstance(state.get("keys"), list) else []:
        rows.append(f"<tr><td>{_fmt(key.get('key_id'))}</td><td>{_fmt(key.get('name'))}</td>"
                    f"<td>{_fmt(key.get('used'))}</td><td>{_fmt(key.get('quota'))}</td>"
                    f"<td>{_fmt(key.get('risk'))}</td></tr>")
    rows.append("</table>")
    alerts = state.get("alerts") or []
    if alerts:
        rows.append("<ul>" + "".join(f"<li>{html.escape(str(a.get('kind')))}: {html.escape(str(a.get('message')))}"
                                     "</li>" for a in alerts[:20]) + "</ul>")
    return rows


def _output_watermark_figure(summary: dict[str, Any]) -> str | None:
    """Each suspect's output-watermark z-score beside the reference models' (the null it is compared with)."""
    rows = [(v["suspect"], v.get("statistic"), v.get("details") or {}) for v in summary.get("verdicts", [])
            if v.get("method") == "output-watermark" and isinstance(v.get("statistic"), (int, float))]
    if not rows:
        return None
    refs = {name: z for _, _, d in rows for name, z in (d.get("reference_scores") or {}).items()
            if isinstance(z, (int, float))}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [r[0] for r in rows] + list(refs)
    values = [float(r[1]) for r in rows] + [float(z) for z in refs.values()]
    colors = ["#c44e52"] * len(rows) + ["#8c8c8c"] * len(refs)
    ax.bar(range(len(names)), values, color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_ylabel("watermark z-score")
    ax.set_title("Serving-time watermark: suspects (red) vs independent references (grey)", fontsize=9)
    return _png(fig)


def _retrieval_figure(summary: dict[str, Any]) -> str | None:
    """Fidelity and retrieval agreement of the stolen copy (text runs)."""
    stolen = summary.get("stolen") or {}
    pairs = [(label, stolen.get(key)) for label, key in (("fidelity (cosine)", "fidelity_cosine"),
                                                         ("retrieval agreement", "retrieval_agreement"),
                                                         ("gain recovery", "gain_recovery"))]
    values = [(k, float(v)) for k, v in pairs if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([k for k, _ in values], [v for _, v in values], color="#dd8452")
    ax.set_ylim(min(0.0, min(v for _, v in values)), max(1.0, max(v for _, v in values)))
    paid = stolen.get("queries_paid")
    ax.set_title(f"What {paid} paid sentences bought the thief" if paid else "The stolen copy", fontsize=9)
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
               ("Dataset inference", _di_figure(summary)), ("Watermark", _watermark_figure(summary)),
               ("The stolen copy", _retrieval_figure(summary)),
               ("Serving-time watermark", _output_watermark_figure(summary))]
    text = (summary.get("settings") or {}).get("modality") == "text"
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
    if text:
        settings = summary.get("settings") or {}
        stolen = summary.get("stolen") or {}
        parts.append(f"<p>Text run: the owner serves {html.escape(str(settings.get('encoder')))} over HTTP (OpenAI "
                     "format) with the serving-time watermark; a thief pays for "
                     f"{_fmt(stolen.get('queries_paid'))} sentences ({_fmt(stolen.get('tokens_paid'))} tokens, about "
                     f"${_fmt(stolen.get('estimated_cost_usd'))}) and trains a "
                     f"{html.escape(str(settings.get('student')))} student. The decision rests on the serving-time "
                     "watermark alone, calibrated on independent text references (LSA and SimCSE students): "
                     "dataset inference and the training-time watermark do not apply to a pretrained encoder the "
                     "owner did not train. Limit: the references are weaker encoders than MiniLM; no other strong "
                     "sentence encoder is installable offline.</p>")
    parts.append("<h2>Models</h2><table><tr><th>model</th><th>linear probe</th><th>kNN</th><th>fidelity to victim"
                 "</th><th>queries paid</th>" + ("<th>retrieval agreement</th><th>tokens paid</th>" if text else "")
                 + "</tr>")
    for name in SUSPECTS:
        entry = summary.get(name) or {}
        extra = (f"<td>{_fmt(entry.get('retrieval_agreement'))}</td><td>{_fmt(entry.get('tokens_paid'))}</td>"
                 if text else "")
        parts.append(f"<tr><td>{name}</td><td>{_fmt(entry.get('linear_acc'))}</td><td>{_fmt(entry.get('knn_acc'))}"
                     f"</td><td>{_fmt(entry.get('fidelity_cosine'))}</td><td>{_fmt(entry.get('queries_paid'))}"
                     f"</td>{extra}</tr>")
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
                for w in v.get("warnings") or []]
    if warnings:
        parts.append("<h3>Warnings</h3><ul>")
        parts += [f"<li>{html.escape(str(s))} / {html.escape(str(m))}: {html.escape(str(w))}</li>"
                  for s, m, w in warnings]
        parts.append("</ul>")
    for title, uri in figures:
        if uri:
            parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='{uri}'>")
    parts += _dashboard_section(summary)
    parts.append("</body></html>")
    out = run / "report.html"
    atomic_write_bytes(out, "\n".join(parts).encode())
    return out
