"""Spread-aware noise: the more of the owner's data cells a key's answers spread over, the noisier its answers.

The owner clusters its own answers (k-means on its held-out data: :func:`fit_cells`, saved with
:func:`save_cells`) into ``k`` cells. Per API key the defence counts how many answers fell into each cell and
measures the key's *spread* as the effective number of cells it uses, ``exp(entropy of its cell histogram)``. A
user with a task of a few classes keeps to a few cells; a thief sweeping the data distribution spreads over all of
them from its first queries. Each answer gets Gaussian noise relative to its norm:

    sigma(e) = min(cap, alpha * max(0, e - start) / (full - start))

where ``e`` is the spread after that answer: clean up to ``start``, ``alpha`` at ``full``, rising linearly beyond.

Why not B4B's coverage of LSH buckets (:class:`~encoderguard.defences.CoverageNoise`)? Random hyperplanes ignore
where the data lies; on the CPU victim a 3-class user's answers cover as many buckets as a sweep's at every query
count, while its spread over k-means cells of the owner's data stays well below a sweep's from about 50 queries on
(``benchmarks/defence_coverage_curves.py``).

Answers within a request are charged one after another, so one large request or many small ones make no
difference. The state (``k`` counts per key) lives in a :class:`~encoderguard.defences.StateStore`: in memory by
default, the ledger database on a server, where it survives a restart.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import torch

from encoderguard.defences.memory_state_store import MemoryStateStore
from encoderguard.defences.noise_seeds import REPEAT_MODES, NoiseSource, derive_seed
from encoderguard.defences.state_store import StateStore, update_state

_MAGIC = b"EGS1"
CELLS_KEY = "cells"


def fit_cells(answers: torch.Tensor | np.ndarray, k: int, *, seed: int = 0) -> torch.Tensor:
    """k-means cells of the owner's own answers (cosine geometry: answers are L2-normalised first).

    Args:
        answers: ``[N, D]`` answers of the owner's encoder on the owner's own (held-out) images.
        k: number of cells (``2 <= k <= N``).
        seed: k-means seed.

    Returns:
        Unit-norm centroids ``[k, D]`` (float32).
    """
    from sklearn.cluster import KMeans

    x = torch.as_tensor(np.asarray(answers), dtype=torch.float64)
    if x.ndim != 2 or not bool(torch.isfinite(x).all()):
        raise ValueError(f"answers must be a finite [N, D] array, got shape {list(x.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= x.shape[0]:
        raise ValueError(f"k must be an integer in 2..{x.shape[0]}, got {k!r}")
    unit = torch.nn.functional.normalize(x, dim=1).numpy()
    centres = KMeans(k, n_init=3, random_state=seed).fit(unit).cluster_centers_
    return torch.nn.functional.normalize(torch.from_numpy(centres), dim=1).float()


def save_cells(path: str | Path, centroids: torch.Tensor) -> Path:
    """Write centroids ``[k, D]`` to a safetensors file (no pickle) for ``spread:cells=PATH``."""
    from safetensors.torch import save_file

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({CELLS_KEY: centroids.detach().float().contiguous()}, str(out))
    return out


def load_cells(path: str | Path) -> torch.Tensor:
    """Read centroids written by :func:`save_cells`; a clear ``ValueError`` for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"spread cells file not found: {p} (write one with encoderguard.defences.save_cells)")
    try:
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"spread cells file {p} is not a readable safetensors file ({exc})") from None
    cells = tensors.get(CELLS_KEY)
    if cells is None or cells.ndim != 2 or cells.shape[0] < 2 or not bool(torch.isfinite(cells).all()):
        raise ValueError(f"spread cells file {p} must hold a finite [k >= 2, D] tensor named {CELLS_KEY!r}")
    return torch.nn.functional.normalize(cells.double(), dim=1)


def sequential_spread(counts: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spread after each answer, charging answers in order: a pure function.

    Args:
        counts: int ``[k]`` answers per cell so far (not modified).
        cells: int ``[N]`` cell of each new answer.

    Returns:
        ``(spread [N], counts_after [k])``: ``spread[i]`` is ``exp(entropy)`` of the cell histogram once answers
        ``0..i`` are added.
    """
    k = counts.shape[0]
    running = counts[None, :].astype(np.float64) + np.cumsum(np.eye(k, dtype=np.float64)[cells], axis=0)
    after = counts + np.bincount(cells, minlength=k).astype(counts.dtype)
    return effective_cells(running), after


def effective_cells(counts: np.ndarray) -> np.ndarray:
    """``exp(entropy)`` of each row of cell counts ``[M, k]`` (rows with at least one count)."""
    share = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(share > 0, share * np.log(share), 0.0).sum(axis=1)
    return np.exp(entropy)


class CellSpreadNoise:
    """Noise that grows with how widely a key's answers spread over the owner's data cells (module docstring).

    Args:
        cells: path of the centroids file (:func:`save_cells`), e.g. from ``benchmarks/defence_calibrate_spread.py``.
        start: spread (effective number of cells) up to which answers stay clean.
        full: spread at which the relative noise reaches ``alpha`` (``> start``).
        alpha: relative noise at ``full`` (default 100).
        cap: the largest relative noise (default 1000). Noise must dwarf the answer to make it worthless: on the
            CPU victim a copy trained on 2000 answers with noise 10x their norm still recovered 0.59 of the
            victim's gain; with 1000x it ended below random init (benchmarks/results_defences.md).
        seed: the secret the noise derives from.
        repeat: ``"same"`` (a repeated input gets the same noise) or ``"fresh"``.
        store: where per-key state lives (default: in memory; a server binds its ledger).
    """

    name = "spread"
    PARAMS = {"cells": str, "start": float, "full": float, "alpha": float, "cap": float, "seed": int,
              "repeat": str}

    def __init__(self, *, cells: str, start: float, full: float, alpha: float = 100.0, cap: float = 1000.0,
                 seed: int = 0, repeat: str = "same", store: StateStore | None = None) -> None:
        for pname, number in (("start", start), ("full", full), ("alpha", alpha), ("cap", cap)):
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                    or number <= 0:
                raise ValueError(f"spread {pname} must be a finite number > 0, got {number!r}")
        if full <= start:
            raise ValueError(f"spread full must be larger than start, got start={start!r}, full={full!r}")
        if repeat not in REPEAT_MODES:
            raise ValueError(f"spread repeat must be one of {', '.join(REPEAT_MODES)}, got {repeat!r}")
        self.centroids = load_cells(cells)
        if start >= self.centroids.shape[0]:
            raise ValueError(f"spread start={start!r} must be below the number of cells ({self.centroids.shape[0]}): "
                             "no key can spread over more cells than there are")
        self.cells_path = str(cells)
        self.start, self.full, self.alpha, self.cap = float(start), float(full), float(alpha), float(cap)
        self.seed, self.repeat = int(seed), repeat
        self.store: StateStore = store if store is not None else MemoryStateStore()
        self._noise = NoiseSource(secret=self.seed, purpose=self.name, repeat=repeat)
        # State written under another secret or other cells is not this defence's: a new name ignores it.
        self._state_name = f"spread/{derive_seed(self.seed, self.centroids.numpy().tobytes()):016x}"
        self._lock = threading.Lock()

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def bind_store(self, store: StateStore) -> None:
        """Keep per-key state in ``store`` from now on (the server passes its ledger)."""
        self.store = store

    def check_dim(self, dim: int) -> None:
        """The cells must live in the answers' space."""
        if int(self.centroids.shape[1]) != dim:
            raise ValueError(f"spread cells are {self.centroids.shape[1]}-d but the API answers {dim}-d vectors: "
                             "fit the cells on this encoder's answers")

    def _load(self, key: str) -> np.ndarray:
        return self._decode(self.store.get_state(key, self._state_name), key)

    def _decode(self, raw: bytes | None, key: str) -> np.ndarray:
        if raw is None:
            return np.zeros(self.k, dtype=np.int64)
        if raw[:4] != _MAGIC or len(raw) != 4 + 8 * self.k:
            raise ValueError(f"spread state of key {key!r} is not in a known format")
        return np.frombuffer(raw[4:], dtype="<i8").astype(np.int64)


    def spread(self, key: str) -> float:
        """Current spread of ``key`` (effective number of cells; 0 before its first answer)."""
        counts = self._load(key)
        return float(effective_cells(counts[None, :])[0]) if counts.sum() else 0.0

    def noise_scale(self, spread: np.ndarray | float) -> np.ndarray:
        """Relative noise size at ``spread``."""
        e = np.asarray(spread, dtype=np.float64)
        return np.minimum(self.cap, self.alpha * np.maximum(0.0, e - self.start) / (self.full - self.start))

    def __call__(self, embeddings: torch.Tensor, *, inputs: torch.Tensor, key: str) -> torch.Tensor:
        """Answers ``[N, D]`` with spread-scaled noise; updates ``key``'s cell counts."""
        y = embeddings.double()
        n, dim = int(y.shape[0]), int(y.shape[1])
        if n == 0:
            return embeddings
        self.check_dim(dim)
        cells = (torch.nn.functional.normalize(y, dim=1) @ self.centroids.T).argmax(dim=1).numpy()
        seen: dict[str, np.ndarray] = {}

        def step(raw: bytes | None) -> bytes:
            seen["spread"], counts = sequential_spread(self._decode(raw, key), cells)
            return _MAGIC + counts.astype("<i8").tobytes()

        with self._lock:  # atomic across processes too when the store supports it (the ledger does)
            update_state(self.store, key, self._state_name, step)
        spread = seen["spread"]
        sigma = torch.from_numpy(self.noise_scale(spread)).unsqueeze(1)
        if not bool((sigma > 0).any()):
            return embeddings
        z = self._noise.rows(inputs, key=key, dim=dim)
        return (y + sigma * y.norm(dim=1, keepdim=True) / math.sqrt(dim) * z).float()

    def __repr__(self) -> str:
        return (f"CellSpreadNoise(cells={self.cells_path!r}, k={self.k}, start={self.start}, full={self.full}, "
                f"alpha={self.alpha}, cap={self.cap}, repeat={self.repeat!r})")
