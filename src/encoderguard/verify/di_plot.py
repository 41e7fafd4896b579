"""The two membership-score distributions (owner-train vs owner-heldout) per suspect: data and a plot.

:func:`score_distributions` returns plain numbers (histograms on shared bins) that a report can store as JSON;
:func:`plot_score_distributions` draws them with matplotlib (an optional dependency: ``pip install
'encoderguard[plots]'``), one panel per suspect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from encoderguard.optional import pyplot
from encoderguard.verify.dataset_inference import DITestResult


def score_distributions(results: Mapping[str, DITestResult], *, bins: int = 40) -> dict[str, dict[str, Any]]:
    """Histogram data of member and non-member scores for each suspect.

    Scores are first standardised by the non-members' mean and standard deviation of that suspect (suspects answer
    on different scales), so every panel reads in the same units: 0 is the typical held-out image.

    Args:
        results: suspect name -> :class:`~encoderguard.verify.dataset_inference.DITestResult` (with scores).
        bins: histogram bins per suspect (``>= 2``).

    Returns:
        name -> ``{"edges": [bins + 1], "members": [bins], "nonmembers": [bins]`` (densities), ``"member_mean"``,
        ``"p_value"``, ``"effect"``, ``"n_members"``, ``"n_nonmembers"}``.

    Raises:
        ValueError: ``bins < 2`` or a result without scores.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an int >= 2, got {bins!r}")
    out: dict[str, dict[str, Any]] = {}
    for name, result in results.items():
        members = np.asarray(result.member_scores, dtype=np.float64)
        nonmembers = np.asarray(result.nonmember_scores, dtype=np.float64)
        if members.size == 0 or nonmembers.size == 0:
            raise ValueError(f"result {name!r} carries no per-image scores")
        centre, scale = float(nonmembers.mean()), float(nonmembers.std())
        scale = scale if scale > 0 else 1.0
        m, h = (members - centre) / scale, (nonmembers - centre) / scale
        low, high = np.percentile(np.concatenate([m, h]), [0.5, 99.5])
        if not high > low:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, bins + 1)
        out[name] = {
            "edges": edges.tolist(),
            "members": np.histogram(np.clip(m, low, high), bins=edges, density=True)[0].tolist(),
            "nonmembers": np.histogram(np.clip(h, low, high), bins=edges, density=True)[0].tolist(),
            "member_mean": float(m.mean()),
            "p_value": result.p_value, "effect": result.effect,
            "n_members": int(members.size), "n_nonmembers": int(nonmembers.size),
        }
    return out


def plot_score_distributions(data: Mapping[str, Mapping[str, Any]], path: str | Path, *,
                             title: str = "membership scores") -> Path:
    """Draw :func:`score_distributions` output, one panel per suspect, into an image file.

    Args:
        data: output of :func:`score_distributions`.
        path: image file to write (format from the suffix, e.g. ``.png``).
        title: figure title.

    Returns:
        The written path.

    Raises:
        MissingDependencyError: matplotlib is not installed (an ``ImportError`` whose message gives the install
            command).
        ValueError: empty ``data``.
    """
    if not data:
        raise ValueError("nothing to plot: no suspects")
    plt = pyplot("plotting membership scores")
    n = len(data)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, item) in zip(axes.ravel(), data.items(), strict=False):
        edges = np.asarray(item["edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        width = edges[1] - edges[0]
        ax.bar(centres, item["nonmembers"], width=width, alpha=0.5, label=f"owner-heldout ({item['n_nonmembers']})")
        ax.bar(centres, item["members"], width=width, alpha=0.5, label=f"owner-train ({item['n_members']})")
        ax.axvline(item["member_mean"], color="C1", linestyle="--", linewidth=1)
        ax.set_title(f"{name}: p = {item['p_value']:.3g}, d = {item['effect']:+.2f}", fontsize=9)
        ax.set_xlabel("score (held-out mean 0, sd 1)", fontsize=8)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
