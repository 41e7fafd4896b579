"""Coverage-aware noise (after B4B): the more of the representation space a key has seen, the noisier its answers.

Per API key the defence remembers which LSH buckets (:class:`RandomHyperplaneLSH`) its answers have fallen
into. A key's *coverage* is the fraction of buckets occupied, averaged over the tables. Each answer gets
Gaussian noise whose size grows exponentially with the coverage reached after that answer (B4B's cost function):

    sigma(c) = min(cap, max(0, lam * ((alpha / lam) ** (c / beta) - 1)))

relative to the answer's norm (noise vector of expected norm ``sigma * ||y||``). ``sigma(0) = 0``,
``sigma(beta) = alpha - lam``, and below ``beta`` the noise stays near ``lam``-small for most of the way, so a
user who keeps to a few regions gets near-clean answers while a key that sweeps the space gets answers that are
worth little to train a copy on.

Answers within a request are charged one after another (the ``i``-th answer's noise uses the coverage after
answers ``0..i``), so splitting a sweep into small requests or one large request makes no difference. The
state (an occupancy bitmap per key) lives in a :class:`~encoderguard.defences.StateStore`: in memory by default,
the ledger database on a server (:func:`~encoderguard.defences.prepare_chain`), where it survives a restart.

Reference: Dubinski, Pawlak, Boenisch, Trzcinski, Dziedzic, "Bucks for Buckets (B4B): Active Defenses Against
Stealing Encoders", NeurIPS 2023 (coverage by LSH buckets, exponential cost function, per-user transformations).
"""

from __future__ import annotations

import math
import struct
import threading

import numpy as np
import torch

from encoderguard.defences.memory_state_store import MemoryStateStore
from encoderguard.defences.noise_seeds import REPEAT_MODES, NoiseSource, derive_seed
from encoderguard.defences.random_hyperplane_lsh import RandomHyperplaneLSH
from encoderguard.defences.state_store import StateStore, update_state

_MAGIC = b"EGC1"


def coverage_noise_scale(coverage: np.ndarray | float, *, lam: float, alpha: float, beta: float,
                         cap: float = math.inf) -> np.ndarray:
    """B4B's cost function ``min(cap, max(0, lam * ((alpha / lam) ** (coverage / beta) - 1)))``: a pure function.

    Args:
        coverage: fraction(s) of buckets occupied, in ``[0, 1]``.
        lam: scale of the noise at low coverage (``> 0``, ``< alpha``).
        alpha: noise at ``coverage == beta`` (plus ``lam``).
        beta: the coverage at which the noise reaches ``alpha``.
        cap: the largest noise returned (the function grows without bound past ``beta``).

    Returns:
        Relative noise size(s), same shape as ``coverage``.
    """
    c = np.asarray(coverage, dtype=np.float64)
    exponent = np.minimum(math.log(alpha / lam) * c / beta, 700.0)  # exp(700) is still finite
    return np.minimum(cap, np.maximum(0.0, lam * (np.exp(exponent) - 1.0)))


def sequential_coverage(occupied: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage after each answer, charging answers in order: a pure function.

    Args:
        occupied: bool ``[T, B]`` buckets already occupied in each of ``T`` tables (not modified).
        codes: int ``[N, T]`` bucket of each new answer in each table.

    Returns:
        ``(coverage [N], occupied_after [T, B])``: ``coverage[i]`` is the mean over tables of the fraction of
        buckets occupied once answers ``0..i`` are added.
    """
    tables, buckets = occupied.shape
    n = codes.shape[0]
    counts = np.zeros((n, tables), dtype=np.int64)
    after = occupied.copy()
    for t in range(tables):
        uniq, first = np.unique(codes[:, t], return_index=True)
        fresh = ~occupied[t, uniq]
        increments = np.zeros(n, dtype=np.int64)
        increments[first[fresh]] = 1
        counts[:, t] = int(occupied[t].sum()) + np.cumsum(increments)
        after[t, uniq] = True
    return counts.mean(axis=1) / buckets, after


class CoverageNoise:
    """Noise that grows with the key's coverage of the representation space (see the module docstring).

    The defaults are ``benchmarks/defence_calibrate.py``'s choice for the CPU preset victim (128-d answers):
    near-clean answers up to coverage ~0.23 (where 3-class users of 600 queries end), noise ``alpha`` at
    ``beta = 0.25``. Another encoder needs its own calibration: coverage depends on how its answers spread.

    Args:
        bits: hyperplanes per LSH table (``2^bits`` buckets).
        tables: LSH tables (coverage is averaged over them: more tables, a smoother estimate).
        alpha: relative noise at coverage ``beta`` (``> lam``).
        beta: coverage (fraction in ``(0, 1]``) at which the noise reaches ``alpha``.
        lam: noise scale at low coverage (``> 0``): smaller keeps low-coverage answers cleaner for longer.
        cap: the largest relative noise (default 10; the cost function grows without bound past ``beta``). Not
            worthless: on the CPU victim a copy trained on 2000 answers with noise 10x their norm still recovered
            0.59 of the victim's gain (noise 1000x: none); see benchmarks/results_defences.md.
        seed: the secret the hyperplanes and the noise derive from.
        repeat: ``"same"`` (noise seeded by ``(seed, key, input)``: a repeated input gets the same noise
            direction) or ``"fresh"``.
        store: where per-key state lives (default: in memory; a server binds its ledger).

    Raises:
        ValueError: for a setting out of range.
    """

    name = "coverage"
    PARAMS = {"bits": int, "tables": int, "alpha": float, "beta": float, "lam": float, "cap": float, "seed": int,
              "repeat": str}

    def __init__(self, *, bits: int = 8, tables: int = 8, alpha: float = 4.0, beta: float = 0.25,
                 lam: float = 1e-28, cap: float = 10.0, seed: int = 0, repeat: str = "same",
                 store: StateStore | None = None) -> None:
        for pname, value, low, high in (("bits", bits, 1, 20), ("tables", tables, 1, 1024)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"coverage {pname} must be an integer in {low}..{high}, got {value!r}")
        for pname, number in (("alpha", alpha), ("beta", beta), ("lam", lam), ("cap", cap)):
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                    or number <= 0:
                raise ValueError(f"coverage {pname} must be a finite number > 0, got {number!r}")
        if beta > 1:
            raise ValueError(f"coverage beta is a fraction of buckets and must be <= 1, got {beta!r}")
        if lam >= alpha:
            raise ValueError(f"coverage lam must be smaller than alpha, got lam={lam!r}, alpha={alpha!r}")
        if repeat not in REPEAT_MODES:
            raise ValueError(f"coverage repeat must be one of {', '.join(REPEAT_MODES)}, got {repeat!r}")
        self.bits, self.tables = bits, tables
        self.alpha, self.beta, self.lam, self.cap = float(alpha), float(beta), float(lam), float(cap)
        self.seed, self.repeat = int(seed), repeat
        self.store: StateStore = store if store is not None else MemoryStateStore()
        self._noise = NoiseSource(secret=self.seed, purpose=self.name, repeat=repeat)
        self._lsh: RandomHyperplaneLSH | None = None
        self._lock = threading.Lock()

    # -- set-up ------------------------------------------------------------------------------------------------
    def bind_store(self, store: StateStore) -> None:
        """Keep per-key state in ``store`` from now on (the server passes its ledger)."""
        self.store = store

    def check_dim(self, dim: int) -> None:
        """Build the hyperplanes for answers of size ``dim``."""
        self._hasher(dim)

    def _hasher(self, dim: int) -> RandomHyperplaneLSH:
        if self._lsh is None or self._lsh.dim != dim:
            self._lsh = RandomHyperplaneLSH(dim=dim, bits=self.bits, tables=self.tables, seed=self.seed)
        return self._lsh

    def _state_name(self, dim: int) -> str:
        # State written under other settings (or another secret) is not this defence's: a new name ignores it.
        return f"coverage/{derive_seed(self.seed, self.bits, self.tables, dim):016x}"

    # -- state -------------------------------------------------------------------------------------------------
    def _load(self, key: str, dim: int) -> tuple[np.ndarray, int]:
        return self._decode(self.store.get_state(key, self._state_name(dim)), key)

    def _decode(self, raw: bytes | None, key: str) -> tuple[np.ndarray, int]:
        buckets = 2**self.bits
        if raw is None:
            return np.zeros((self.tables, buckets), dtype=bool), 0
        if raw[:4] != _MAGIC:
            raise ValueError(f"coverage state of key {key!r} is not in a known format")
        (answered,) = struct.unpack("<q", raw[4:12])
        bitmap = np.unpackbits(np.frombuffer(raw[12:], dtype=np.uint8), count=self.tables * buckets)
        return bitmap.astype(bool).reshape(self.tables, buckets), int(answered)

    @staticmethod
    def _encode(occupied: np.ndarray, answered: int) -> bytes:
        return _MAGIC + struct.pack("<q", answered) + np.packbits(occupied.ravel()).tobytes()

    def coverage(self, key: str, dim: int) -> float:
        """Current coverage of ``key`` (fraction of buckets occupied, mean over tables) for answers of size
        ``dim``."""
        occupied, _ = self._load(key, dim)
        return float(occupied.mean())

    def answered(self, key: str, dim: int) -> int:
        """Answers charged to ``key`` so far."""
        return self._load(key, dim)[1]

    def noise_scale(self, coverage: np.ndarray | float) -> np.ndarray:
        """Relative noise size at ``coverage`` (:func:`coverage_noise_scale` with this defence's settings)."""
        return coverage_noise_scale(coverage, lam=self.lam, alpha=self.alpha, beta=self.beta, cap=self.cap)

    # -- the defence -------------------------------------------------------------------------------------------
    def __call__(self, embeddings: torch.Tensor, *, inputs: torch.Tensor, key: str) -> torch.Tensor:
        """Answers ``[N, D]`` with coverage-scaled noise; updates ``key``'s coverage."""
        y = embeddings.double()
        n, dim = int(y.shape[0]), int(y.shape[1])
        codes = self._hasher(dim).codes(y).numpy()
        seen: dict[str, np.ndarray] = {}

        def step(raw: bytes | None) -> bytes:
            occupied, answered = self._decode(raw, key)
            seen["coverage"], occupied = sequential_coverage(occupied, codes)
            return self._encode(occupied, answered + n)

        with self._lock:  # atomic across processes too when the store supports it (the ledger does)
            update_state(self.store, key, self._state_name(dim), step)
        coverage = seen["coverage"]
        sigma = torch.from_numpy(self.noise_scale(coverage)).unsqueeze(1)
        if not bool((sigma > 0).any()):
            return embeddings
        z = self._noise.rows(inputs, key=key, dim=dim)
        return (y + sigma * y.norm(dim=1, keepdim=True) / math.sqrt(dim) * z).float()

    def __repr__(self) -> str:
        return (f"CoverageNoise(bits={self.bits}, tables={self.tables}, alpha={self.alpha}, beta={self.beta}, "
                f"lam={self.lam}, cap={self.cap}, repeat={self.repeat!r})")
