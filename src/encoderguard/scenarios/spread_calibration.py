"""Calibrate the ``spread`` defence for an owner's encoder on the owner's own held-out data.

The owner's encoder answers its ``owner-heldout`` images (data the owner holds and never trained on, disjoint from
what attackers and the evaluated honest users send); k-means on those answers gives the cells
(:func:`~encoderguard.defences.fit_cells`). Simulated honest users (a few random classes each) and random sweeps
over the same images then fix the thresholds: ``start = margin x`` the largest honest spread after the honest
users' queries, ``full = ramp x start``. The result is a ``spread:...`` spec for ``serve --defence`` and
``defend-eval``, and the cells file it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoderguard.data.image_set import ImageSet
from encoderguard.errors import DataError
from encoderguard.models.probe import encode


@dataclass(frozen=True)
class SimulatedTraffic:
    """Index arrays into the held-out images: honest users' queries and thieves' sweeps (in query order)."""

    users: list[np.ndarray]
    sweeps: list[np.ndarray]


def simulate_traffic(labels: np.ndarray, *, users: int = 30, classes: int = 3, queries: int = 600,
                     sweeps: int = 5, sweep: int = 2000, seed: int = 0) -> SimulatedTraffic:
    """Honest users (``queries`` images from ``classes`` random classes each) and random sweeps of ``sweep`` images.

    Raises:
        DataError: too few images or classes for the pattern.
    """
    labels = np.asarray(labels)
    kinds = np.unique(labels)
    if classes > len(kinds):
        raise DataError(f"honest users of {classes} classes need {classes} classes; the data has {len(kinds)}")
    if sweep > len(labels):
        raise DataError(f"a sweep of {sweep} images needs {sweep} held-out images; there are {len(labels)}")
    rng = np.random.default_rng(seed)
    honest = []
    for _ in range(users):
        chosen = rng.choice(kinds, classes, replace=False)
        pool = np.flatnonzero(np.isin(labels, chosen))
        if queries > len(pool):
            raise DataError(f"an honest user of {queries} queries over {classes} classes needs {queries} images of "
                            f"those classes; there are {len(pool)}")
        honest.append(rng.choice(pool, queries, replace=False))
    thieves = [rng.choice(len(labels), sweep, replace=False) for _ in range(sweeps)]
    return SimulatedTraffic(users=honest, sweeps=thieves)


def calibrate_spread(encoder: torch.nn.Module, heldout: ImageSet, cells_out: str | Path, *, k: int = 20,
                     users: int = 30, classes: int = 3, queries: int = 600, sweeps: int = 5, sweep: int = 2000,
                     margin: float = 1.1, ramp: float = 1.15, alpha: float = 100.0, cap: float = 1000.0,
                     secret: int = 0) -> dict[str, Any]:
    """Fit the cells on ``encoder``'s answers to ``heldout`` and set the thresholds; write the cells file.

    Args:
        encoder: the owner's encoder.
        heldout: the owner's held-out images (with labels: the honest users' classes).
        cells_out: where the centroids go (safetensors).
        k: number of cells.
        users, classes, queries: the honest pattern simulated.
        sweeps, sweep: the thieves simulated (only reported: where a sweep passes ``start`` and ``full``).
        margin, ramp: ``start = margin x`` largest honest spread; ``full = ramp x start``.
        alpha, cap, secret: the defence's noise at ``full``, its largest noise and its secret seed.

    Returns:
        ``{"spec", "cells", "start", "full", "honest_spread_max", "honest_spread_mean", "sweep_queries_to_start",
        "sweep_queries_to_full", ...}``.
    """
    from encoderguard.defences import fit_cells, save_cells, sequential_spread

    if margin < 1 or ramp <= 1:
        raise ValueError(f"margin must be >= 1 and ramp > 1, got margin={margin}, ramp={ramp}")
    traffic = simulate_traffic(heldout.labels.numpy(), users=users, classes=classes, queries=queries,
                               sweeps=sweeps, sweep=sweep)
    answers = encode(encoder, heldout).double()
    centroids = fit_cells(answers, k, seed=0)
    cells = (torch.nn.functional.normalize(answers, dim=1) @ centroids.double().T).argmax(dim=1).numpy()
    empty = np.zeros(k, dtype=np.int64)
    honest = np.array([sequential_spread(empty, cells[u])[0][-1] for u in traffic.users])
    sweep_curve = np.stack([sequential_spread(empty, cells[s])[0] for s in traffic.sweeps]).mean(axis=0)
    start = float(honest.max()) * margin
    if start >= k:
        raise DataError(f"simulated honest users already spread over {honest.max():.1f} of {k} cells: use more "
                        "cells (k) or an honest pattern of fewer classes")
    full = start * ramp
    path = save_cells(cells_out, centroids)

    def first_above(level: float) -> int | None:
        above = sweep_curve > level
        return int(np.argmax(above)) + 1 if above.any() else None

    spec = f"spread:cells={path},start={start:.3f},full={full:.3f},alpha={alpha:g},cap={cap:g},seed={secret}"
    return {"spec": spec, "cells": str(path), "k": k, "start": start, "full": full, "alpha": alpha, "cap": cap,
            "honest_pattern": {"users": users, "classes": classes, "queries": queries},
            "honest_spread_max": float(honest.max()), "honest_spread_mean": float(honest.mean()),
            "sweep_spread_mean_end": float(sweep_curve[-1]), "sweep_queries_to_start": first_above(start),
            "sweep_queries_to_full": first_above(full), "calibration_data": heldout.name}

