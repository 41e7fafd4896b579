"""Traffic-window detection: a two-sample test of the last ``W`` answers against the owner's benign answers.

The statistic is the squared maximum mean discrepancy (MMD, Gretton et al., "A Kernel Two-Sample Test", JMLR 2012)
with a Gaussian (RBF) kernel whose bandwidth is the median pairwise distance of the reference (the median
heuristic), between a window of answer vectors and a fixed reference of benign answer vectors. Answers, not inputs,
are compared, so the same detector serves image and text encoders.

Calibration: the statistic of ``n`` windows of benign answers held out from the reference (never the windows a
false-alarm rate is reported on) gives the null distribution; a window's p-value is its rank among them,
``(1 + #{calibration >= s}) / (n + 1)``, and an alarm is ``p <= alpha``. Under exchangeability of a benign window
with the calibration windows this holds the false-alarm rate at ``alpha`` in finite samples (the conformal
correction: the threshold is the ``ceil((n + 1)(1 - alpha))``-th smallest calibration statistic, not the plain
empirical quantile).

As a defence (``serve --defence window:reference=PATH``) it is an observer: answers leave unchanged. It keeps a
global window (all keys: a thief hiding among honest users) and one per key, tests each every ``stride`` new answers
once it is full, raises an alert when a window turns alarming (``AlertLog.raise_alert`` when the server binds one,
else a warning on the ``encoderguard.alerts`` logger) and reports its state in :meth:`TrafficWindow.dashboard_state`.
Put it first in the chain, so that it sees the clean answers its reference was made of.

Where the benign reference comes from: the owner's own held-out data answered by the encoder
(:func:`save_window_reference` on ``encode(encoder, owner_split(card, "owner-heldout"))``), the same data the
``spread`` defence is calibrated on; or, with ``warmup=N`` and no file, the first ``N`` answers the server gives,
which is only as benign as the traffic of the first hours (a thief active then poisons the reference).

``alpha`` is a per-test rate: a stream tested every ``stride`` answers raises about ``alpha`` false alarms per test,
and overlapping windows make consecutive tests dependent; an alert is raised when a window enters the alarm state,
not on every alarming test.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("encoderguard.alerts")

REFERENCE_KEY = "reference"
HELDOUT_KEY = "heldout"
GLOBAL = "*"


# -- statistics: pure functions ----------------------------------------------------------------------------------
def median_bandwidth(x: torch.Tensor, *, max_points: int = 1000, seed: int = 0) -> float:
    """The median heuristic: median Euclidean distance between distinct points of ``x`` ``[M, D]`` (a seeded
    subsample of ``max_points`` when larger).

    Raises:
        ValueError: for fewer than 2 points or a zero median (all points equal).
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a [M >= 2, D] tensor for the bandwidth, got shape {list(x.shape)}")
    if x.shape[0] > max_points:
        idx = torch.from_numpy(np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False))
        x = x[idx]
    d = torch.cdist(x, x)
    iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    median = float(d[iu[0], iu[1]].median())
    if not median > 0:
        raise ValueError("the reference points are all equal: no bandwidth")
    return median


def rbf_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``exp(-|x_i - y_j|^2 / (2 bandwidth^2))``, ``[N, D] x [M, D] -> [N, M]``."""
    d2 = torch.cdist(x, y).pow(2)
    return torch.exp(-d2 / (2.0 * bandwidth**2))


def rbf_mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float, *, yy_mean: float | None = None) -> float:
    """Unbiased squared MMD between samples ``x`` ``[N, D]`` and ``y`` ``[M, D]`` (N, M >= 2) with an RBF kernel.

    ``MMD_u^2 = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)``
    (Gretton et al. 2012, eq. 3). ``yy_mean`` is the second term when already known (a fixed reference).
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"both samples need >= 2 points, got {n} and {m}")
    kxx = rbf_kernel(x, x, bandwidth)
    xx = (float(kxx.sum()) - n) / (n * (n - 1))  # the diagonal is exp(0) = 1
    if yy_mean is None:
        kyy = rbf_kernel(y, y, bandwidth)
        yy_mean = (float(kyy.sum()) - m) / (m * (m - 1))
    xy = float(rbf_kernel(x, y, bandwidth).mean())
    return xx + yy_mean - 2.0 * xy


def rank_p_value(statistic: float, calibration: np.ndarray) -> float:
    """``(1 + #{calibration >= statistic}) / (n + 1)``: the conformal p-value of a statistic among ``n`` null ones."""
    cal = np.asarray(calibration, dtype=np.float64)
    return float((1 + np.count_nonzero(cal >= statistic)) / (cal.size + 1))


def conformal_threshold(calibration: np.ndarray, alpha: float) -> float:
    """The smallest statistic that is *not* an alarm's bound: alarms are statistics above the
    ``ceil((n + 1)(1 - alpha))``-th smallest calibration value (``inf`` when ``alpha < 1 / (n + 1)``)."""
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    rank = math.ceil((cal.size + 1) * (1 - alpha))
    return float("inf") if rank > cal.size else float(cal[rank - 1])


def wilson_interval(successes: int, n: int, *, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# -- the reference file ------------------------------------------------------------------------------------------
def save_window_reference(
    path: str | Path, answers: torch.Tensor | np.ndarray, *, reference_size: int = 1024, seed: int = 0
) -> Path:
    """Split the owner's benign answers into the reference and the held-out calibration pool and write them
    (safetensors, no pickle) for ``window:reference=PATH``.

    Args:
        path: the file to write.
        answers: ``[N, D]`` answers of the served encoder to the owner's held-out inputs (``N > reference_size``;
            a few thousand leave enough calibration windows).
        reference_size: answers kept as the reference; the rest calibrate.
        seed: the split's seed.

    Raises:
        ValueError: for non-finite answers or too few of them.
    """
    from safetensors.torch import save_file

    x = torch.as_tensor(np.asarray(answers), dtype=torch.float32)
    if x.ndim != 2 or not bool(torch.isfinite(x).all()):
        raise ValueError(f"answers must be a finite [N, D] array, got shape {list(x.shape)}")
    if not 2 <= reference_size < x.shape[0] - 1:
        raise ValueError(f"reference_size must be in [2, {x.shape[0] - 2}] for {x.shape[0]} answers, got "
                         f"{reference_size!r}")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(x.shape[0]))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({REFERENCE_KEY: x[perm[:reference_size]].contiguous(),
               HELDOUT_KEY: x[perm[reference_size:]].contiguous()}, str(out))
    return out


def load_window_reference(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(reference [M, D], held-out [P, D])`` written by :func:`save_window_reference`.

    Raises:
        ValueError: a missing or unreadable file, or one without both finite tensors of one width.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"window reference file not found: {p} (write one with "
                         "encoderguard.defences.save_window_reference)")
    try:
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"window reference file {p} is not a readable safetensors file ({exc})") from None
    ref, held = tensors.get(REFERENCE_KEY), tensors.get(HELDOUT_KEY)
    if ref is None or held is None or ref.ndim != 2 or held.ndim != 2 or ref.shape[1] != held.shape[1] or not (
        bool(torch.isfinite(ref).all()) and bool(torch.isfinite(held).all())
    ):
        raise ValueError(f"window reference file {p} must hold finite [M, D] {REFERENCE_KEY!r} and [P, D] "
                         f"{HELDOUT_KEY!r} tensors")
    return ref.double(), held.double()


# -- the detector ------------------------------------------------------------------------------------------------
class TrafficWindow:
    """MMD test of answer windows against benign answers, calibrated to a false-alarm rate; an observing defence.

    Args:
        window: answers per tested window ``W`` (>= 8).
        alpha: target false-alarm rate per test, in ``(0, 0.5]``.
        reference: a file of :func:`save_window_reference`; ``""`` fits later (:meth:`fit`) or on the first
            ``warmup`` answers.
        warmup: with no reference, calibrate on the first ``warmup`` answers the chain sees (0: never; fit
            explicitly). At least ``4 * window``.
        calibration_windows: benign windows drawn from the held-out pool for the null distribution.
        stride: test a full window again after this many new answers (default ``window // 8``).
        scope: ``"both"`` (a global window and one per key), ``"global"`` or ``"key"``.
        max_keys: most per-key windows kept (least recently used dropped).
        seed: seed of the calibration windows and the reference subsample.

    Raises:
        ValueError: for a bad setting (quoting it) or an unreadable reference file.
    """

    name = "window"
    PARAMS = {"window": int, "alpha": float, "reference": str, "warmup": int, "calibration_windows": int,
              "stride": int, "scope": str, "max_keys": int, "seed": int}

    def __init__(
        self,
        *,
        window: int = 256,
        alpha: float = 0.01,
        reference: str = "",
        warmup: int = 0,
        calibration_windows: int = 1000,
        stride: int = 0,
        scope: str = "both",
        max_keys: int = 10_000,
        seed: int = 0,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 8:
            raise ValueError(f"window must be an int >= 8, got {window!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 0.5:
            raise ValueError(f"alpha must be in (0, 0.5], got {alpha!r}")
        if isinstance(calibration_windows, bool) or not isinstance(calibration_windows, int) or (
            calibration_windows < math.ceil(1 / alpha)
        ):
            raise ValueError(f"calibration_windows must be an int >= 1/alpha = {math.ceil(1 / alpha)}, got "
                             f"{calibration_windows!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or (warmup != 0 and warmup < 4 * window):
            raise ValueError(f"warmup must be 0 or an int >= 4 * window = {4 * window}, got {warmup!r}")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
            raise ValueError(f"stride must be a non-negative int (0: window // 8), got {stride!r}")
        if scope not in ("both", "global", "key"):
            raise ValueError(f"scope must be 'both', 'global' or 'key', got {scope!r}")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be a positive int, got {max_keys!r}")
        self.window, self.alpha, self.warmup = window, float(alpha), warmup
        self.calibration_windows, self.stride = calibration_windows, stride or max(1, window // 8)
        self.scope, self.max_keys, self.seed = scope, max_keys, seed
        self.reference_path = reference
        self.reference_: torch.Tensor | None = None
        self.bandwidth_: float | None = None
        self.calibration_: np.ndarray | None = None
        self.threshold_: float | None = None
        self._yy: float | None = None
        self._alerts: Any = None
        self._lock = threading.Lock()
        self._windows: OrderedDict[str, deque[torch.Tensor]] = OrderedDict()
        self._since: dict[str, int] = {}
        self._seen: dict[str, int] = {}
        self._state: dict[str, dict[str, Any]] = {}
        self._warm: list[torch.Tensor] = []
        if reference:
            self.fit(*load_window_reference(reference))

    # -- fitting -------------------------------------------------------------------------------------------------
    def fit(self, reference: torch.Tensor | np.ndarray, heldout: torch.Tensor | np.ndarray) -> TrafficWindow:
        """Fix the reference and calibrate the threshold on windows drawn from ``heldout``.

        Args:
            reference: ``[M, D]`` benign answers (M >= 2); the bandwidth is their median distance.
            heldout: ``[P, D]`` other benign answers (P >= window), never the ones a false-alarm rate is reported on.

        Returns:
            ``self``.
        """
        ref = torch.as_tensor(np.asarray(reference), dtype=torch.float64)
        held = torch.as_tensor(np.asarray(heldout), dtype=torch.float64)
        if ref.ndim != 2 or held.ndim != 2 or ref.shape[1] != held.shape[1]:
            raise ValueError(f"reference and heldout must be [M, D] and [P, D], got {list(ref.shape)} and "
                             f"{list(held.shape)}")
        if held.shape[0] < self.window:
            raise ValueError(f"heldout has {held.shape[0]} answers, fewer than one window of {self.window}")
        bandwidth = median_bandwidth(ref, seed=self.seed)
        kyy = rbf_kernel(ref, ref, bandwidth)
        yy = (float(kyy.sum()) - ref.shape[0]) / (ref.shape[0] * (ref.shape[0] - 1))
        self.reference_, self.bandwidth_, self._yy = ref, bandwidth, yy
        cross = self.reference_means(held)  # once per held-out answer, not once per window
        rng = np.random.default_rng(self.seed)
        stats = np.empty(self.calibration_windows)
        for i in range(self.calibration_windows):
            idx = torch.from_numpy(rng.choice(held.shape[0], self.window, replace=False))
            stats[i] = self.statistic(held[idx], reference_means=cross[idx])
        self.calibration_ = np.sort(stats)
        self.threshold_ = conformal_threshold(stats, self.alpha)
        return self

    @property
    def fitted(self) -> bool:
        return self.calibration_ is not None

    def check_dim(self, dim: int) -> None:
        """Refuse a reference whose answers do not have the served encoder's size ``dim``."""
        if self.reference_ is not None and self.reference_.shape[1] != dim:
            raise ValueError(f"window reference answers have {self.reference_.shape[1]} values, the encoder's "
                             f"have {dim}")

    def bind_alerts(self, alerts: Any) -> None:
        """Raise alerts through ``alerts.raise_alert(key_id, kind, message, score=...)`` (the server's AlertLog)."""
        self._alerts = alerts

    # -- the test ------------------------------------------------------------------------------------------------
    def reference_means(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``mean_j k(x_i, reference_j)`` per answer ``[N, D] -> [N]`` (the cross term of MMD, reusable across
        windows that share answers)."""
        if self.reference_ is None or self.bandwidth_ is None:
            raise RuntimeError("the traffic-window detector is not fitted; give it a reference or call fit()")
        x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        return torch.cat([rbf_kernel(x[i: i + 4096], self.reference_, self.bandwidth_).mean(1)
                          for i in range(0, x.shape[0], 4096)]) if x.shape[0] else torch.empty(0, dtype=torch.float64)

    def statistic(self, window: torch.Tensor, *, reference_means: torch.Tensor | None = None) -> float:
        """The unbiased MMD^2 of ``window`` ``[W, D]`` against the reference (:func:`rbf_mmd2`), from precomputed
        :meth:`reference_means` of its answers when given."""
        if reference_means is None:
            reference_means = self.reference_means(window)
        x = torch.as_tensor(np.asarray(window), dtype=torch.float64)
        n = x.shape[0]
        assert self.bandwidth_ is not None and self._yy is not None
        xx = (float(rbf_kernel(x, x, self.bandwidth_).sum()) - n) / (n * (n - 1))
        return xx + self._yy - 2.0 * float(reference_means.mean())

    def score(self, window: torch.Tensor | np.ndarray) -> tuple[float, float]:
        """``(MMD^2 statistic, p-value)`` of a window ``[W, D]`` of answers against the reference.

        Raises:
            RuntimeError: before :meth:`fit`.
            ValueError: for a window of another size than ``window``.
        """
        if self.reference_ is None or self.calibration_ is None or self.bandwidth_ is None:
            raise RuntimeError("the traffic-window detector is not fitted; give it a reference or call fit()")
        x = torch.as_tensor(np.asarray(window), dtype=torch.float64)
        if x.ndim != 2 or x.shape[0] != self.window or x.shape[1] != self.reference_.shape[1]:
            raise ValueError(f"a window must be [{self.window}, {self.reference_.shape[1]}], got {list(x.shape)}")
        stat = self.statistic(x)
        return stat, rank_p_value(stat, self.calibration_)

    def alarm(self, window: torch.Tensor | np.ndarray) -> bool:
        """Whether the window's p-value is at most ``alpha``."""
        return self.score(window)[1] <= self.alpha

    # -- the observer --------------------------------------------------------------------------------------------
    def __call__(self, embeddings: torch.Tensor, *, inputs: Any, key: str) -> torch.Tensor:
        """Record the answers (unchanged) and test the windows that are due."""
        rows = embeddings.detach().to("cpu", torch.float64)
        if rows.ndim != 2 or rows.shape[0] == 0:
            return embeddings
        due: list[tuple[str, torch.Tensor]] = []
        with self._lock:
            if not self.fitted:
                self._warm_up(rows)
                return embeddings
            scopes = [GLOBAL] if self.scope == "global" else [key] if self.scope == "key" else [GLOBAL, key]
            for name in scopes:
                buf = self._windows.get(name)
                if buf is None:
                    buf = self._windows[name] = deque(maxlen=self.window)
                    if len(self._windows) > self.max_keys + 1:
                        dropped = next(k for k in self._windows if k != GLOBAL)
                        for table in (self._windows, self._since, self._seen, self._state):
                            table.pop(dropped, None)  # type: ignore[attr-defined]
                self._windows.move_to_end(name)
                buf.extend(rows[-self.window:])
                self._since[name] = self._since.get(name, 0) + rows.shape[0]
                self._seen[name] = self._seen.get(name, 0) + rows.shape[0]
                if len(buf) == self.window and self._since[name] >= self.stride:
                    self._since[name] = 0
                    due.append((name, torch.stack(list(buf))))
        for name, win in due:  # the test runs outside the lock
            self._test(name, win)
        return embeddings

    def _warm_up(self, rows: torch.Tensor) -> None:
        """Collect the first ``warmup`` answers, then fit on them (caller holds the lock)."""
        if self.warmup == 0:
            return
        self._warm.append(rows)
        have = sum(r.shape[0] for r in self._warm)
        if have >= self.warmup:
            pool = torch.cat(self._warm)[: self.warmup]
            self._warm = []
            cut = max(2, min(1024, self.warmup // 2))
            self.fit(pool[:cut], pool[cut:])
            logger.info("traffic window calibrated on the first %d answers (threshold %.3g)", self.warmup,
                        self.threshold_)

    def _test(self, name: str, win: torch.Tensor) -> None:
        stat, p = self.score(win)
        alarm = p <= self.alpha
        with self._lock:
            previous = self._state.get(name, {}).get("alarm", False)
            self._state[name] = {"statistic": stat, "p_value": p, "alarm": alarm, "tested_at": time.time(),
                                 "answers_seen": self._seen.get(name, 0), "alarms": self._state.get(name, {}).get(
                                     "alarms", 0) + int(alarm and not previous)}
        if alarm and not previous:
            who = "all keys" if name == GLOBAL else f"key {name}"
            message = (f"traffic window of the last {self.window} answers of {who} departs from benign traffic "
                       f"(MMD^2 {stat:.4g}, p = {p:.4f} <= alpha {self.alpha:g})")
            if self._alerts is not None:
                self._alerts.raise_alert(None if name == GLOBAL else name, "traffic_window", message, score=stat)
            else:
                logger.warning("alert traffic_window (key %s): %s", "-" if name == GLOBAL else name, message)

    def dashboard_state(self) -> dict[str, Any]:
        """What the owner's dashboard shows: per key and for the global window, the last test.

        Returns:
            ``{"keys": {key_id: {...}}, "windows": {"global": {...}, "window", "alpha", "threshold", "fitted",
            "bandwidth"}}``, each test as ``statistic``, ``p_value``, ``alarm``, ``tested_at``, ``answers_seen``,
            ``alarms`` (times the window entered the alarm state).
        """
        with self._lock:
            state = {name: dict(s) for name, s in self._state.items()}
            seen = dict(self._seen)
        keys = {name: state.get(name, {"answers_seen": n}) for name, n in seen.items() if name != GLOBAL}
        return {
            "keys": keys,
            "windows": {"global": state.get(GLOBAL, {"answers_seen": seen.get(GLOBAL, 0)}), "window": self.window,
                        "alpha": self.alpha, "threshold": self.threshold_, "fitted": self.fitted,
                        "bandwidth": self.bandwidth_, "scope": self.scope},
        }

    def __repr__(self) -> str:
        return (f"TrafficWindow(window={self.window}, alpha={self.alpha:g}, scope={self.scope!r}, "
                f"fitted={self.fitted})")
