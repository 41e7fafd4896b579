"""The guard: spread-aware noise that follows a thief across its keys (sybil groups), with keyed answers.

A thief who splits a sweep of the owner's data over many API keys keeps every key narrow, so a defence that
looks at one key at a time (``coverage``, ``spread``) answers all of them cleanly: four keys were enough to get
the whole victim back (``benchmarks/results_defences.md``). The guard keeps, per key, a decaying summary of where
its answers fall and links keys that look like one client; the noise of every answer then grows with the
*group's* spread (the union of its keys' cells), not only the key's own.

Per key it keeps (in a :class:`~encoderguard.defences.StateStore`: the ledger on a server):

- a histogram of its answers over the owner's cells (k-means cells of the owner's answers, :func:`fit_cells`,
  or, without a cells file, ``2^bits`` random-hyperplane cells), decayed with a half-life in seconds;
- a bottom-``m`` MinHash sketch of two keyed LSH codes of its clean answers (:func:`answer_codes`, ``2 x
  code_bits`` signs, so that only near-duplicates share an element): keys that ask
  the same or nearly the same inputs (the shared anchors an attacker needs to align per-key rotations, repeats
  spread over keys) have similar sketches;
- a fingerprint of client metadata when the server passes ``context`` (e.g. ``{"client": "203.0.113.7"}``).

Two keys are *linked* when their sketches' estimated Jaccard similarity reaches ``link`` or their client
fingerprints are equal; a *group* is a connected set of linked keys. A key's *spread* is the effective number of
cells its histogram uses (``exp`` of its entropy, with ``prior`` pseudo-answers in one extra cell so that a key
with few or decayed answers counts as narrow), as a fraction of the cells; a group's spread is that of the sum of
its keys' histograms. Each answer gets Gaussian noise relative to its norm,

    sigma = min(cap, alpha * max(0, s - start) / (full - start)),   s = max(key's spread, group's spread)

(``solo_cap`` instead of ``cap`` for a key with no link), charged answer by answer within a request. The noise is
seeded by ``(secret, key, keyed LSH code of the clean answer)`` (:func:`answer_seeds`): the same input from the
same key always gets the same answer, and near-duplicates (jittered copies) get the same noise, so averaging
repeats gains nothing. Last (``rotate=1``), every key's answers are turned by its own secret rotation
(:class:`OrthogonalTransform`), so that answers bought under several keys do not combine without shared anchors,
and shared anchors link the keys.

Per-key ``risk`` in ``[0, 1]`` and the groups are in :meth:`SybilGuard.dashboard_state`; a key's state is
cleared by :meth:`SybilGuard.reset` or ``encoderguard keys reset-state`` (:meth:`~encoderguard.api.Ledger.reset_state`).

Reference: Dubinski et al., "Bucks for Buckets (B4B): Active Defenses Against Stealing Encoders", NeurIPS 2023
(coverage-scaled noise, per-user transformations, sybils); Broder, "On the resemblance and containment of
documents", 1997 (MinHash).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from encoderguard.defences.cell_spread import effective_cells, load_cells
from encoderguard.defences.memory_state_store import MemoryStateStore
from encoderguard.defences.noise_seeds import answer_codes, answer_seeds, derive_seed, gaussian_rows
from encoderguard.defences.orthogonal_transform import OrthogonalTransform
from encoderguard.defences.random_hyperplane_lsh import RandomHyperplaneLSH
from encoderguard.defences.state_store import StateStore, update_state

logger = logging.getLogger(__name__)

_MAGIC = b"EGG1"
DIRECTORY_KEY = "__guard__"  # the reserved key id under which the guard lists the keys it has seen
_EXPIRY_HALF_LIVES = 6.0  # a key idle for this many half-lives is dropped from the directory (its weight < 2%)


def group_spread(histograms: np.ndarray, prior: float) -> float:
    """Effective number of cells of the summed histograms ``[M, k]`` with ``prior`` pseudo-answers in an extra
    cell, divided by ``k``: a pure function (0 for no answers and no prior)."""
    total = np.asarray(histograms, dtype=np.float64).reshape(-1, histograms.shape[-1]).sum(axis=0)
    return float(sequential_group_spread(total, np.zeros(0, dtype=np.int64), prior)[1])


def sequential_group_spread(base: np.ndarray, cells: np.ndarray, prior: float) -> tuple[np.ndarray, float]:
    """Spread (fraction of ``k`` cells) after each new answer added to the histogram ``base`` [k]: a pure function.

    Returns:
        ``(spread [N], spread of base + all new answers)``.
    """
    k = base.shape[0]
    extended = np.append(base.astype(np.float64), prior)
    running = extended[None, :] + np.cumsum(np.eye(k + 1, dtype=np.float64)[cells], axis=0) if len(cells) \
        else extended[None, :]
    with np.errstate(invalid="ignore"):
        spread = np.where(running.sum(axis=1) > 0, effective_cells(np.maximum(running, 0.0)), 0.0) / k
    spread = np.nan_to_num(spread)
    return (spread if len(cells) else np.zeros(0)), float(spread[-1])


def sketch_jaccard(a: Mapping[int, float], b: Mapping[int, float], size: int) -> float:
    """Bottom-``size`` MinHash estimate of the Jaccard similarity of two sets from their sketches (hash -> time):
    the share of the ``size`` smallest hashes of the union that both hold. A pure function."""
    if not a or not b:
        return 0.0
    union = sorted(set(a) | set(b))[:size]
    return sum(1 for h in union if h in a and h in b) / len(union)


class _KeyState:
    """One key's summary: decayed cell histogram, MinHash sketch, counts, times, client fingerprint."""

    def __init__(self, k: int) -> None:
        self.hist = np.zeros(k, dtype=np.float64)
        self.sketch: dict[int, float] = {}
        self.answered = 0
        self.first = self.last = 0.0
        self.client: str | None = None

    @classmethod
    def decode(cls, raw: bytes | None, k: int, key: str) -> _KeyState:
        state = cls(k)
        if not raw:  # absent, or cleared by SybilGuard.reset
            return state
        if raw[:4] != _MAGIC:
            raise ValueError(f"guard state of key {key!r} is not in a known format")
        data = json.loads(raw[4:].decode())
        hist = np.asarray(data["hist"], dtype=np.float64)
        if hist.shape != (k,):
            raise ValueError(f"guard state of key {key!r} has {hist.shape[0]} cells, expected {k}")
        state.hist = hist
        state.sketch = {int(h): float(t) for h, t in data["sketch"]}
        state.answered, state.first, state.last = int(data["n"]), float(data["first"]), float(data["last"])
        state.client = data.get("client")
        return state

    def encode(self) -> bytes:
        data = {"hist": [round(float(v), 6) for v in self.hist], "sketch": sorted(self.sketch.items()),
                "n": self.answered, "first": self.first, "last": self.last, "client": self.client}
        return _MAGIC + json.dumps(data, separators=(",", ":")).encode()

    def decayed(self, now: float, half_life: float) -> np.ndarray:
        """The histogram as of ``now``."""
        if self.last <= 0 or now <= self.last:
            return self.hist.copy()
        return self.hist * 0.5 ** ((now - self.last) / half_life)

    def live_sketch(self, now: float, half_life: float) -> dict[int, float]:
        horizon = now - _EXPIRY_HALF_LIVES * half_life
        return {h: t for h, t in self.sketch.items() if t >= horizon}


class SybilGuard:
    """Group-aware spread noise with keyed deterministic answers and per-key rotations (module docstring).

    The defaults fit the CPU preset victim with cells fitted on its ``owner-heldout`` answers (``cells=PATH``):
    ``start``/``full`` 0.70/0.80 of the cells are the ``spread`` calibration (14.1 and 16.2 of 20 cells) as
    fractions. Without ``cells`` the guard uses ``2^bits`` random-hyperplane cells, which ignore where the owner's
    data lies: calibrate ``start`` on the owner's data before relying on it.

    Args:
        cells: centroids file (:func:`~encoderguard.defences.save_cells`); ``""``: random-hyperplane cells.
        bits: hyperplanes of the fallback cells (``2^bits`` cells; used only without ``cells``).
        start: spread (fraction of the cells) up to which answers stay clean.
        full: spread at which the relative noise reaches ``alpha`` (``> start``, ``<= 1``).
        alpha: relative noise at ``full``.
        cap: the largest relative noise of a key linked to others (and of every key when ``solo_cap`` is unset).
        solo_cap: the largest relative noise of a key with no link (``0``: ``cap``). Lower it to spare honest
            users whose own task spans the whole space, at the price of a single-key thief.
        prior: pseudo-answers in an extra cell: a key with few (or decayed) answers counts as narrow.
        half_life: seconds after which a key's histogram weighs half (idle keys drop out after 6 half-lives).
        link: estimated Jaccard similarity of two keys' answer sketches at which they are linked.
        sketch: MinHash sketch size per key.
        code_bits: bits of the keyed answer code (seeds of the noise and the sketch's elements).
        rotate: ``1``: a secret rotation per key after the noise; ``0``: none.
        max_keys: keys compared when linking (the most recently active ones).
        seed: the secret of the noise, codes, fallback cells and rotations.
        store: where per-key state lives (default: in memory; a server binds its ledger).
        clock: seconds since the epoch (tests pass a fake clock).

    Raises:
        ValueError: for a setting out of range (quoting it), or an unreadable cells file.
    """

    name = "guard"
    PARAMS = {"cells": str, "bits": int, "start": float, "full": float, "alpha": float, "cap": float,
              "solo_cap": float, "prior": float, "half_life": float, "link": float, "sketch": int,
              "code_bits": int, "rotate": int, "max_keys": int, "seed": int}

    def __init__(self, *, cells: str = "", bits: int = 4, start: float = 0.70, full: float = 0.80,
                 alpha: float = 100.0, cap: float = 1000.0, solo_cap: float = 0.0, prior: float = 10.0,
                 half_life: float = 86400.0, link: float = 0.2, sketch: int = 256, code_bits: int = 48,
                 rotate: int = 1, max_keys: int = 512, seed: int = 0, store: StateStore | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        for pname, value, low, high in (("bits", bits, 1, 12), ("sketch", sketch, 8, 4096),
                                        ("code_bits", code_bits, 4, 62), ("rotate", rotate, 0, 1),
                                        ("max_keys", max_keys, 2, 100_000)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"guard {pname} must be an integer in {low}..{high}, got {value!r}")
        for pname, number in (("start", start), ("full", full), ("alpha", alpha), ("cap", cap),
                              ("half_life", half_life), ("link", link)):
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                    or number <= 0:
                raise ValueError(f"guard {pname} must be a finite number > 0, got {number!r}")
        for pname, number in (("solo_cap", solo_cap), ("prior", prior)):
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                    or number < 0:
                raise ValueError(f"guard {pname} must be a finite number >= 0, got {number!r}")
        if not start < full <= 1:
            raise ValueError(f"guard needs start < full <= 1 (fractions of the cells), got start={start!r}, "
                             f"full={full!r}")
        if link > 1:
            raise ValueError(f"guard link is a Jaccard similarity and must be <= 1, got {link!r}")
        self.cells_path, self.bits = str(cells), bits
        self.centroids = load_cells(cells) if cells else None
        self.start, self.full, self.alpha, self.cap = float(start), float(full), float(alpha), float(cap)
        self.solo_cap = float(solo_cap) if solo_cap > 0 else self.cap
        self.prior, self.half_life, self.link = float(prior), float(half_life), float(link)
        self.sketch_size, self.code_bits, self.rotate, self.max_keys = sketch, code_bits, bool(rotate), max_keys
        self.seed = int(seed)
        self.store: StateStore = store if store is not None else MemoryStateStore()
        self.clock = clock or time.time
        self._rotation = OrthogonalTransform(seed=derive_seed(self.seed, "guard-rotation") % 2**62)
        self._lsh: RandomHyperplaneLSH | None = None
        self._dim: int | None = None if self.centroids is None else int(self.centroids.shape[1])
        self._lock = threading.RLock()

    # -- set-up ------------------------------------------------------------------------------------------------
    def bind_store(self, store: StateStore) -> None:
        """Keep per-key state in ``store`` from now on (the server passes its ledger)."""
        self.store = store

    def check_dim(self, dim: int) -> None:
        """The cells must live in the answers' space."""
        if self.centroids is not None and int(self.centroids.shape[1]) != dim:
            raise ValueError(f"guard cells are {self.centroids.shape[1]}-d but the API answers {dim}-d vectors: "
                             "fit the cells on this encoder's answers")
        self._dim = dim

    @property
    def k(self) -> int:
        """Number of cells."""
        return int(self.centroids.shape[0]) if self.centroids is not None else 2**self.bits

    def _state_name(self, dim: int) -> str:
        # State written under other cells, another secret or another answer size is not this guard's.
        digest = hashlib.sha256(self.centroids.numpy().tobytes()).hexdigest()[:16] if self.centroids is not None \
            else f"lsh{self.bits}"
        return f"guard/{derive_seed(self.seed, digest, dim, self.code_bits):016x}"

    def _cells_of(self, y: torch.Tensor) -> np.ndarray:
        if self.centroids is not None:
            return (torch.nn.functional.normalize(y, dim=1) @ self.centroids.T).argmax(dim=1).numpy()
        dim = int(y.shape[1])
        if self._lsh is None or self._lsh.dim != dim:
            self._lsh = RandomHyperplaneLSH(dim=dim, bits=self.bits, tables=1, seed=derive_seed(self.seed, "cells"))
        return self._lsh.codes(y)[:, 0].numpy()

    def noise_scale(self, spread: np.ndarray | float, *, linked: bool) -> np.ndarray:
        """Relative noise size at ``spread`` (fraction of the cells) for a linked or a lone key."""
        s = np.asarray(spread, dtype=np.float64)
        cap = self.cap if linked else self.solo_cap
        return np.minimum(cap, self.alpha * np.maximum(0.0, s - self.start) / (self.full - self.start))

    def risk_of(self, spread: float) -> float:
        """Risk in ``[0, 1]``: 0 up to half of ``start``, 1 at ``full`` (linear between)."""
        low = self.start / 2
        return float(min(1.0, max(0.0, (spread - low) / (self.full - low))))

    # -- state -------------------------------------------------------------------------------------------------
    def _key_state(self, key: str, dim: int) -> _KeyState:
        return _KeyState.decode(self.store.get_state(key, self._state_name(dim)), self.k, key)

    def _directory(self, dim: int) -> dict[str, float]:
        raw = self.store.get_state(DIRECTORY_KEY, self._state_name(dim))
        return {} if not raw else {str(k): float(t) for k, t in json.loads(raw.decode()).items()}

    def _touch_directory(self, key: str, dim: int, now: float) -> dict[str, float]:
        seen: dict[str, dict[str, float]] = {}
        horizon = now - _EXPIRY_HALF_LIVES * self.half_life

        def step(raw: bytes | None) -> bytes:
            entries = {} if not raw else {str(k): float(t) for k, t in json.loads(raw.decode()).items()}
            entries[key] = now
            entries = {k: t for k, t in entries.items() if t >= horizon}
            seen["entries"] = entries
            return json.dumps(entries, separators=(",", ":")).encode()

        update_state(self.store, DIRECTORY_KEY, self._state_name(dim), step)
        return seen["entries"]

    def reset(self, key: str, dim: int) -> None:
        """Forget ``key``: its histogram, sketch and links (it starts as a new key)."""
        with self._lock:
            self.store.put_state(key, self._state_name(dim), b"")

    def _others(self, key: str, directory: Mapping[str, float], dim: int) -> dict[str, _KeyState]:
        recent = sorted((k for k in directory if k != key), key=lambda k: -directory[k])[: self.max_keys - 1]
        states = {k: self._key_state(k, dim) for k in recent}
        return {k: s for k, s in states.items() if s.answered > 0}

    def _linked(self, a: _KeyState, b: _KeyState, now: float) -> bool:
        if a.client is not None and a.client == b.client:
            return True
        return sketch_jaccard(a.live_sketch(now, self.half_life), b.live_sketch(now, self.half_life),
                              self.sketch_size) >= self.link

    def _group(self, key: str, states: Mapping[str, _KeyState], now: float) -> list[str]:
        """The keys connected to ``key`` by links (``key`` first)."""
        group, frontier = [key], [key]
        rest = set(states) - {key}
        while frontier and rest:
            current = states[frontier.pop()]
            found = [k for k in rest if self._linked(current, states[k], now)]
            for k in found:
                rest.discard(k)
                group.append(k)
                frontier.append(k)
        return group

    # -- the defence -------------------------------------------------------------------------------------------
    def __call__(self, embeddings: torch.Tensor, *, inputs: Any, key: str,
                 context: Mapping[str, Any] | None = None) -> torch.Tensor:
        """Answers ``[N, D]`` with group-spread-scaled, answer-seeded noise (then the key's rotation).

        Args:
            embeddings: clean answers ``[N, D]``.
            inputs: the request's batch (unused: everything is keyed on the answers, for any modality).
            key: the caller's API key id.
            context: optional client metadata from the server (e.g. ``{"client": address}``); keys with equal
                metadata are linked.
        """
        y = embeddings.double()
        n, dim = int(y.shape[0]), int(y.shape[1])
        if n == 0:
            return embeddings
        self.check_dim(dim)
        cells = self._cells_of(y)
        # two independent codes: only near-duplicates agree on all 2 x code_bits signs
        codes = zip(answer_codes(y, secret=derive_seed(self.seed, "guard-sketch", 0), bits=self.code_bits).tolist(),
                    answer_codes(y, secret=derive_seed(self.seed, "guard-sketch", 1), bits=self.code_bits).tolist(),
                    strict=True)
        hashes = [derive_seed(self.seed, "guard-minhash", a, b) >> 32 for a, b in codes]
        client = None
        if context:
            client = f"{derive_seed(self.seed, json.dumps(dict(context), sort_keys=True, default=str)):016x}"
        now = float(self.clock())
        seen: dict[str, Any] = {}

        def step(raw: bytes | None) -> bytes:
            state = _KeyState.decode(raw, self.k, key)
            before = state.decayed(now, self.half_life)
            seen["before"] = before
            seen["own"], _ = sequential_group_spread(before, cells, self.prior)
            state.hist = before + np.bincount(cells, minlength=self.k)
            sketch = state.live_sketch(now, self.half_life)
            for h in hashes:
                sketch[h] = now
            state.sketch = dict(sorted(sketch.items())[: self.sketch_size])
            state.answered += n
            state.first = state.first or now
            state.last = now
            state.client = client if client is not None else state.client
            seen["state"] = state
            return state.encode()

        with self._lock:  # atomic across processes too when the store supports it (the ledger does)
            update_state(self.store, key, self._state_name(dim), step)
            directory = self._touch_directory(key, dim, now)
            others = self._others(key, directory, dim)
        own_state: _KeyState = seen["state"]
        states = {key: own_state, **others}
        group = self._group(key, states, now)
        linked = len(group) > 1
        spread = seen["own"]
        if linked:
            base = seen["before"] + sum((states[k].decayed(now, self.half_life) for k in group[1:]),
                                        np.zeros(self.k))
            group_seq, _ = sequential_group_spread(base, cells, self.prior)
            spread = np.maximum(spread, group_seq)
            logger.debug(f"guard: key {key} linked to {len(group) - 1} keys, group spread {group_seq[-1]:.3f}")
        sigma = torch.from_numpy(self.noise_scale(spread, linked=linked)).unsqueeze(1)
        out = y
        if bool((sigma > 0).any()):
            z = gaussian_rows(answer_seeds(y, secret=self.seed, key=key, purpose=self.name, bits=self.code_bits), dim)
            out = y + sigma * y.norm(dim=1, keepdim=True) / math.sqrt(dim) * z
        return self.rotate_answers(out, key=key) if self.rotate else out.to(embeddings.dtype)

    def rotate_answers(self, answers: torch.Tensor, *, key: str) -> torch.Tensor:
        """``answers`` [N, D] as ``key`` sees them after the guard's rotation (identity with ``rotate=0``)."""
        if not self.rotate:
            return answers.float()
        q = self._rotation.matrix(key, int(answers.shape[1])).numpy()
        return torch.from_numpy(answers.detach().double().cpu().numpy() @ q).float()

    # -- the owner's view --------------------------------------------------------------------------------------
    def dashboard_state(self, dim: int | None = None) -> dict[str, Any]:
        """Every known key's risk, spread and group, and the groups of linked keys (for the owner's dashboard).

        Args:
            dim: answer size (default: the cells' size, else the size of the answers seen or checked so far;
                before any, the state is empty).

        Returns:
            ``{"keys": {key_id: {"risk", "group", "coverage", "group_coverage", "answered", "first_seen",
            "last_seen"}}, "groups": [{"id", "keys", "coverage", "risk"}]}``; ``coverage`` is the key's spread
            (effective share of the cells its recent answers use), ``group`` the id of its group or ``None``.
        """
        dim = dim if dim is not None else self._dim
        if dim is None:
            return {"keys": {}, "groups": []}
        now = float(self.clock())
        with self._lock:
            directory = self._directory(dim)
            states = self._others("", directory, dim)
        remaining = set(states)
        groups: list[dict[str, Any]] = []
        for key in sorted(states, key=lambda k: -directory.get(k, 0.0)):
            if key not in remaining:
                continue
            members = self._group(key, {k: states[k] for k in remaining}, now)
            remaining -= set(members)
            if len(members) > 1:
                hist = np.stack([states[k].decayed(now, self.half_life) for k in members])
                spread = group_spread(hist, self.prior)
                groups.append({"id": "g-" + hashlib.sha256(",".join(sorted(members)).encode()).hexdigest()[:8],
                               "keys": sorted(members), "coverage": round(spread, 4),
                               "risk": round(self.risk_of(spread), 4)})
        group_of = {k: g for g in groups for k in g["keys"]}
        keys: dict[str, Any] = {}
        for key, state in sorted(states.items()):
            own = group_spread(state.decayed(now, self.half_life)[None, :], self.prior)
            group = group_of.get(key)
            effective = max(own, group["coverage"]) if group else own
            keys[key] = {"risk": round(self.risk_of(effective), 4), "group": group["id"] if group else None,
                         "coverage": round(own, 4), "group_coverage": group["coverage"] if group else None,
                         "answered": state.answered, "first_seen": state.first, "last_seen": state.last}
        return {"keys": keys, "groups": groups}

    def __repr__(self) -> str:
        return (f"SybilGuard(cells={self.cells_path!r}, k={self.k}, start={self.start}, full={self.full}, "
                f"alpha={self.alpha}, cap={self.cap}, solo_cap={self.solo_cap}, link={self.link}, "
                f"half_life={self.half_life}, rotate={int(self.rotate)})")
