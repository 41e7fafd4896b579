"""Calibrate the ``coverage`` defence for an owner's encoder on the owner's own held-out data.

The owner simulates, on its ``owner-heldout`` images (private data, disjoint from the attacker's ``query`` split and
from the ``probe`` sets the evaluated honest users draw from), honest users of the evaluated pattern (``classes``
random classes, ``queries`` images each; default 3 classes and 600 images: the 100 + 100 per class of
``defend-eval``'s honest users) and sweeps (``sweep`` images in random order, the way a thief spends its budget), as
:func:`~encoderguard.scenarios.spread_calibration.simulate_traffic` draws them.

For each hashing resolution (``bits``; ``tables`` fixed) it records the coverage the honest users end at and how
many sweep queries reach it (a thief's allowance of near-clean answers), and keeps the resolution with the smallest
allowance. The cost function is then fixed by two points: ``sigma(c_low) = sigma_low`` at ``c_low = margin x`` the
largest honest coverage, and ``sigma(c_high) = alpha`` at ``c_high = ramp x c_low``; B4B's
``sigma(c) = lam ((alpha / lam)^(c / beta) - 1)`` gives ``beta = c_high`` and ``lam`` solved numerically.

Reference: Dubinski et al., "Bucks for Buckets (B4B)", NeurIPS 2023.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from encoderguard.data.image_set import ImageSet
from encoderguard.defences.coverage_noise import coverage_noise_scale, sequential_coverage
from encoderguard.defences.random_hyperplane_lsh import RandomHyperplaneLSH
from encoderguard.models.probe import encode
from encoderguard.scenarios.spread_calibration import simulate_traffic

DEFAULT_BITS = (5, 6, 7, 8, 9, 10)


def coverage_curve(lsh: RandomHyperplaneLSH, answers: torch.Tensor) -> np.ndarray:
    """The coverage after each of ``answers`` ``[N, D]`` sent in order by one fresh key (``[N]``)."""
    occupied = np.zeros((lsh.tables, lsh.buckets), dtype=bool)
    return sequential_coverage(occupied, lsh.codes(answers).numpy())[0]


def solve_lam(c_low: float, sigma_low: float, c_high: float, alpha: float) -> float:
    """The small ``lam`` with ``sigma(c_low) = sigma_low`` when ``beta = c_high`` (``sigma(beta) = alpha - lam``).

    ``sigma(c_low)`` as a function of ``lam`` rises from 0 (``lam -> 0``) to a peak and falls back to 0 at
    ``lam = alpha``; the root below the peak is the one whose noise stays small up to ``c_low``.

    Raises:
        ValueError: no ``lam`` reaches ``sigma_low`` at ``c_low``.
    """
    from scipy.optimize import brentq

    def gap(log_lam: float) -> float:
        lam = math.exp(log_lam)
        return float(coverage_noise_scale(c_low, lam=lam, alpha=alpha, beta=c_high)) - sigma_low

    grid = np.linspace(math.log(alpha) - 80, math.log(alpha) - 1e-6, 4001)
    peak = grid[int(np.argmax([gap(g) for g in grid]))]
    if gap(peak) <= 0:
        raise ValueError(f"no lam reaches sigma_low={sigma_low} at c_low={c_low} with beta={c_high}")
    return math.exp(brentq(gap, grid[0], peak))


def calibrate_coverage(encoder: torch.nn.Module, heldout: ImageSet, *, users: int = 30, classes: int = 3,
                       queries: int = 600, sweeps: int = 5, sweep: int = 2000, bits: Sequence[int] = DEFAULT_BITS,
                       tables: int = 8, alpha: float = 4.0, sigma_low: float = 0.01, margin: float = 1.05,
                       ramp: float = 1.1, secret: int = 12345) -> dict[str, Any]:
    """Choose the hashing resolution and the cost function of the coverage defence (see the module docstring).

    Args:
        encoder: the owner's encoder.
        heldout: the owner's held-out images (with labels: the honest users' classes).
        users, classes, queries: the honest pattern simulated.
        sweeps, sweep: the thieves simulated.
        bits: hashing resolutions tried.
        tables: hash tables.
        alpha: relative noise at ``c_high``.
        sigma_low: relative noise allowed at ``c_low``.
        margin, ramp: ``c_low = margin x`` largest honest coverage; ``c_high = ramp x c_low``.
        secret: the defence's secret seed (its hyperplanes).

    Returns:
        ``{"calibration_data", "honest_pattern", "sweep", "tables", "alpha", "sigma_low", "margin", "ramp",
        "scan" (one row per resolution), "chosen_bits", "beta", "lam", "spec"}``; ``spec`` is a ``coverage:...``
        spec for ``serve --defence`` and ``defend-eval``.

    Raises:
        ValueError: bad settings, or no cost function meets ``sigma_low``.
        DataError: too few held-out images or classes for the simulated traffic.
    """
    if margin < 1 or ramp <= 1:
        raise ValueError(f"margin must be >= 1 and ramp > 1, got margin={margin}, ramp={ramp}")
    if not bits:
        raise ValueError("bits must name at least one hashing resolution")
    answers = encode(encoder, heldout).double()
    traffic = simulate_traffic(heldout.labels.numpy(), users=users, classes=classes, queries=queries, sweeps=sweeps,
                               sweep=sweep)
    scan: list[dict[str, Any]] = []
    for b in bits:
        lsh = RandomHyperplaneLSH(dim=answers.shape[1], bits=int(b), tables=tables, seed=secret)
        honest = np.array([coverage_curve(lsh, answers[u])[-1] for u in traffic.users])
        mean_curve = np.stack([coverage_curve(lsh, answers[s]) for s in traffic.sweeps]).mean(axis=0)
        c_low = float(honest.max()) * margin
        c_high = c_low * ramp
        scan.append({"bits": int(b), "honest_coverage_mean": round(float(honest.mean()), 4),
                     "honest_coverage_max": round(float(honest.max()), 4),
                     "sweep_coverage": {str(n): round(float(mean_curve[n - 1]), 4)
                                        for n in (100, 200, 300, 500, 1000, sweep) if n <= sweep},
                     "c_low": round(c_low, 4), "c_high": round(c_high, 4),
                     # sweep queries a thief spends before its coverage reaches c_low / c_high
                     "sweep_queries_to_c_low": int(np.searchsorted(mean_curve, c_low)) + 1,
                     "sweep_queries_to_c_high": int(np.searchsorted(mean_curve, c_high)) + 1})
    best = min(scan, key=lambda s: (s["sweep_queries_to_c_low"], s["sweep_queries_to_c_high"]))
    beta = best["c_high"]
    lam = solve_lam(best["c_low"], sigma_low, beta, alpha)
    spec = f"coverage:bits={best['bits']},tables={tables},alpha={alpha:g},beta={beta:.4f},lam={lam:.4g},seed={secret}"
    return {"calibration_data": heldout.name,
            "honest_pattern": {"classes": classes, "queries": queries, "users": users}, "sweep": sweep,
            "tables": tables, "alpha": alpha, "sigma_low": sigma_low, "margin": margin, "ramp": ramp, "scan": scan,
            "chosen_bits": best["bits"], "beta": beta, "lam": lam, "spec": spec}
