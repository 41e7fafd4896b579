"""What the embedding service reports as it answers and rejects: metrics, and alerts when a key crosses a threshold.

:class:`UsageMonitor` is called by :class:`~encoderguard.api.service.EmbeddingService` after each charge and each
rejection. It counts into :class:`~encoderguard.api.metrics.Metrics` and raises alerts in an
:class:`~encoderguard.api.alerts.AlertLog`:

- ``quota_80`` / ``quota_100``: a key's charged images reach 80 % / 100 % of its quota (once per crossing);
- ``rejection_burst``: a key gets ``burst_rejections`` rejected requests within ``burst_window`` seconds (once per
  burst: it re-arms when the window holds fewer again);
- ``risk``: a defence in the chain that has a ``dashboard_state()`` method reports a per-key ``risk`` at or above
  ``risk_threshold`` (once per crossing: it re-arms when the risk falls below the threshold again).

A defence's ``dashboard_state()`` returns JSON-able data such as ``{"keys": {key_id: {"risk": float in [0, 1],
"group": str | None, ...}}, "groups": [...], "alerts": [...]}``; every key in it is optional.

Nothing here may fail a request: a broken hook is logged and the request goes on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from encoderguard.api.alerts import AlertLog
from encoderguard.api.http_errors import CODES, clean_message
from encoderguard.api.keys import KeyRecord

if TYPE_CHECKING:  # prometheus-client is imported only where the metrics are built
    from encoderguard.api.metrics import Metrics

logger = logging.getLogger(__name__)

__all__ = ["QUOTA_THRESHOLDS", "UsageMonitor", "jsonable"]

QUOTA_THRESHOLDS = (0.8, 1.0)
_MAX_DEPTH = 8
_MAX_ITEMS = 10_000


class UsageMonitor:
    """Metrics and threshold alerts of one server.

    Args:
        metrics: where counts go.
        alerts: where alerts go.
        defences: the server's defence chain; those with a ``dashboard_state()`` method report risk scores.
        quota_thresholds: fractions of a key's quota whose crossing raises an alert, each in ``(0, 1]``.
        burst_rejections: rejected requests of one key within ``burst_window`` seconds that make a burst (>= 1).
        burst_window: see ``burst_rejections``, in seconds (> 0).
        risk_threshold: risk score in ``(0, 1]`` at or above which a key is alerted.
        risk_interval: least seconds between two reads of the defences' state after a charge (they are read at
            every dashboard refresh and scrape too).
        clock: monotonic clock in seconds (injectable for tests).

    Raises:
        ValueError: for a bad setting.
    """

    def __init__(
        self,
        *,
        metrics: Metrics,
        alerts: AlertLog,
        defences: Sequence[Any] = (),
        quota_thresholds: Sequence[float] = QUOTA_THRESHOLDS,
        burst_rejections: int = 20,
        burst_window: float = 60.0,
        risk_threshold: float = 0.5,
        risk_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        thresholds = tuple(sorted(float(t) for t in quota_thresholds))
        if any(not 0 < t <= 1 for t in thresholds):
            raise ValueError(f"quota_thresholds must be fractions in (0, 1], got {tuple(quota_thresholds)!r}")
        if isinstance(burst_rejections, bool) or not isinstance(burst_rejections, int) or burst_rejections < 1:
            raise ValueError(f"burst_rejections must be a positive int, got {burst_rejections!r}")
        if not burst_window > 0:
            raise ValueError(f"burst_window must be > 0 seconds, got {burst_window!r}")
        if not 0 < risk_threshold <= 1:
            raise ValueError(f"risk_threshold must be in (0, 1], got {risk_threshold!r}")
        if not risk_interval >= 0:
            raise ValueError(f"risk_interval must be >= 0 seconds, got {risk_interval!r}")
        self.metrics, self.alerts = metrics, alerts
        self.defences = tuple(d for d in defences if callable(getattr(d, "dashboard_state", None)))
        self.quota_thresholds = thresholds
        self.burst_rejections, self.burst_window = burst_rejections, float(burst_window)
        self.risk_threshold, self.risk_interval = float(risk_threshold), float(risk_interval)
        self._clock = clock
        self._lock = threading.Lock()
        self._quota_armed: dict[str, set[float]] = {}  # key -> thresholds already crossed
        self._rejections: dict[str, deque[float]] = {}
        self._in_burst: set[str] = set()
        self._risky: set[str] = set()
        self._last_risk_check = -math.inf
        alerts.add_listener(metrics.alert)

    # -- the service's hooks -------------------------------------------------------------------------------------
    def served(self, record: KeyRecord, n: int, used: int) -> None:
        """After a charge of ``n`` images that brought ``record``'s usage to ``used``."""
        try:
            self.metrics.served(record.key_id, n)
            self._check_quota(record, used)
            if self.defences and self._clock() - self._last_risk_check >= self.risk_interval:
                self.defence_states()
        except Exception:
            logger.exception("usage monitor: cannot count a charge of key %s", record.key_id)

    def rejected(self, record: KeyRecord, status: int, code: str | None = None) -> None:
        """After a rejected request of ``record`` answered ``status`` (with error ``code``)."""
        try:
            self.metrics.rejected_request(record.key_id, status, code or CODES.get(status, "error"))
            self._check_burst(record.key_id)
        except Exception:
            logger.exception("usage monitor: cannot count a rejection of key %s", record.key_id)

    # -- thresholds ---------------------------------------------------------------------------------------------
    def _check_quota(self, record: KeyRecord, used: int) -> None:
        if record.quota is None:
            return
        fraction = used / record.quota if record.quota > 0 else 1.0
        crossed = []
        with self._lock:
            done = self._quota_armed.setdefault(record.key_id, set())
            done &= {t for t in self.quota_thresholds if fraction >= t}  # re-arm below (a raised quota)
            for threshold in self.quota_thresholds:
                if fraction >= threshold and threshold not in done:
                    done.add(threshold)
                    crossed.append(threshold)
        for threshold in crossed:
            percent = round(threshold * 100)
            self.alerts.raise_alert(
                record.key_id, f"quota_{percent}",
                f"key {record.key_id} ({record.name}) has used {used} of its {record.quota} images "
                f"({percent} % threshold)", score=min(fraction, 1.0),
            )

    def _check_burst(self, key_id: str) -> None:
        now = self._clock()
        with self._lock:
            times = self._rejections.setdefault(key_id, deque(maxlen=self.burst_rejections))
            times.append(now)
            burst = len(times) >= self.burst_rejections and now - times[0] <= self.burst_window
            start = burst and key_id not in self._in_burst
            if burst:
                self._in_burst.add(key_id)
            else:
                self._in_burst.discard(key_id)
        if start:
            self.alerts.raise_alert(
                key_id, "rejection_burst",
                f"key {key_id} had {self.burst_rejections} requests rejected within {self.burst_window:g} s",
                score=float(self.burst_rejections),
            )

    def _check_risk(self, scores: dict[str, float]) -> None:
        crossed = []
        with self._lock:
            for key_id, score in scores.items():
                if score >= self.risk_threshold and key_id not in self._risky:
                    self._risky.add(key_id)
                    crossed.append((key_id, score))
                elif score < self.risk_threshold:
                    self._risky.discard(key_id)
        for key_id, score in crossed:
            self.alerts.raise_alert(key_id, "risk", f"key {key_id}: a defence reports risk {score:.2f} (threshold "
                                    f"{self.risk_threshold:g})", score=score)

    def forget(self, key_id: str) -> None:
        """Re-arm every threshold of ``key_id`` (after its defence state was reset)."""
        with self._lock:
            self._quota_armed.pop(key_id, None)
            self._rejections.pop(key_id, None)
            self._in_burst.discard(key_id)
            self._risky.discard(key_id)

    # -- the defences' state ------------------------------------------------------------------------------------
    def defence_states(self) -> list[dict[str, Any]]:
        """``[{"defence": name, "state": dashboard_state() made JSON-able}]`` of every defence that has one, and
        raise the risk alerts they call for. A defence whose method fails shows ``{"error": message}``."""
        self._last_risk_check = self._clock()
        states = []
        for defence in self.defences:
            name = str(getattr(defence, "name", type(defence).__name__))
            try:
                state = jsonable(defence.dashboard_state())
            except Exception as exc:
                logger.warning("defence %s: dashboard_state() failed: %s", name, exc)
                state = {"error": clean_message(exc)}
            states.append({"defence": name, "state": state if isinstance(state, dict) else {"value": state}})
        self._check_risk(risk_scores(states))
        return states

    def risk_scores(self) -> dict[str, float]:
        """The highest risk in ``[0, 1]`` any defence reports per key (``{}`` without such defences)."""
        return risk_scores(self.defence_states()) if self.defences else {}


def risk_scores(states: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The highest finite ``risk`` per key over the states of :meth:`UsageMonitor.defence_states`, clipped to
    ``[0, 1]``."""
    scores: dict[str, float] = {}
    for entry in states:
        keys = entry.get("state", {}).get("keys")
        if not isinstance(keys, dict):
            continue
        for key_id, info in keys.items():
            risk = info.get("risk") if isinstance(info, dict) else None
            if isinstance(risk, (int, float)) and not isinstance(risk, bool) and math.isfinite(risk):
                scores[str(key_id)] = max(scores.get(str(key_id), 0.0), min(max(float(risk), 0.0), 1.0))
    return scores


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data: non-finite floats become ``None``, numpy scalars and arrays numbers and lists,
    anything else its ``str``; nesting deeper than 8 levels and containers past 10,000 items are cut."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= _MAX_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in list(value.items())[:_MAX_ITEMS]}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in list(value)[:_MAX_ITEMS]]
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays, torch tensors
    if callable(tolist):
        try:
            return jsonable(tolist(), depth + 1)
        except Exception:
            pass
    return str(value)
