"""Prometheus metrics of the HTTP API, served at ``GET /metrics`` in the Prometheus text format.

Each app has its own :class:`~prometheus_client.CollectorRegistry` (never the global one), so that several apps in
one process (tests, benchmarks) count separately. Labels are key ids, statuses, error codes and endpoint paths
only: never a key's secret, hash or name, nor anything a client sent.

Counters (``_total`` in the exposition) count what this process answered since it started; the ``encoderguard_key_*``
gauges are read from the keys file and the ledger at scrape time, so they are the same on every replica of one
ledger. With ``serve --workers N`` each worker process keeps its own counters (a scrape reaches one of them).

Requires ``prometheus-client`` (the ``server`` extra).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from encoderguard.api.alerts import Alert
from encoderguard.api.keys import KeyStore
from encoderguard.api.ledger import Ledger

logger = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Metrics", "MetricsMiddleware"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The metrics of one app.

    Args:
        keys: the keys file (key ids, quotas, rate limits, revocations), read at scrape time.
        ledger: the ledger (images charged per key), read at scrape time.
        risk: ``() -> {key_id: risk in [0, 1]}`` from the defences that report one, read at scrape time; ``None``
            for none.

    Metric names:
        ``encoderguard_images_served_total{key_id}``, ``encoderguard_requests_total{key_id,status}``,
        ``encoderguard_rejected_requests_total{code}``, ``encoderguard_http_responses_total{endpoint,status}``,
        ``encoderguard_request_duration_seconds{endpoint}`` (histogram), ``encoderguard_alerts_total{kind}``;
        at scrape time ``encoderguard_key_images_charged_total{key_id}``, ``encoderguard_key_quota{key_id}``,
        ``encoderguard_key_quota_remaining{key_id}``, ``encoderguard_key_rate_limit{key_id}``,
        ``encoderguard_key_active{key_id}``, ``encoderguard_key_risk{key_id}``, ``encoderguard_ledger_up``.
    """

    def __init__(self, *, keys: KeyStore, ledger: Ledger,
                 risk: Callable[[], dict[str, float]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.images = Counter("encoderguard_images_served", "Images answered (and charged), per key id",
                              ["key_id"], registry=self.registry)
        self.requests = Counter("encoderguard_requests", "Authenticated requests per key id and HTTP status",
                                ["key_id", "status"], registry=self.registry)
        self.rejected = Counter("encoderguard_rejected_requests", "Rejected authenticated requests per error code",
                                ["code"], registry=self.registry)
        self.responses = Counter("encoderguard_http_responses", "HTTP responses per endpoint and status "
                                 "(unauthenticated ones included)", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("encoderguard_request_duration_seconds", "Seconds from a request's start to the "
                                 "end of its answer, per endpoint", ["endpoint"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.alerts = Counter("encoderguard_alerts", "Alerts raised per kind", ["kind"], registry=self.registry)
        self.registry.register(_KeyCollector(keys, ledger, risk))

    def served(self, key_id: str, n: int) -> None:
        """Count one answered request of ``n`` images."""
        self.images.labels(key_id=key_id).inc(n)
        self.requests.labels(key_id=key_id, status="200").inc()

    def rejected_request(self, key_id: str, status: int, code: str) -> None:
        """Count one rejected request of ``key_id``."""
        self.requests.labels(key_id=key_id, status=str(int(status))).inc()
        self.rejected.labels(code=code).inc()

    def alert(self, alert: Alert) -> None:
        """Count one alert (an :class:`~encoderguard.api.alerts.AlertLog` listener)."""
        self.alerts.labels(kind=alert.kind).inc()

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one HTTP response and its latency."""
        self.responses.labels(endpoint=endpoint, status=str(int(status))).inc()
        self.latency.labels(endpoint=endpoint).observe(max(seconds, 0.0))

    def render(self) -> bytes:
        """The exposition in the Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


class _KeyCollector(Collector):
    """Per-key gauges read from the keys file and the ledger when Prometheus scrapes."""

    def __init__(self, keys: KeyStore, ledger: Ledger, risk: Callable[[], dict[str, float]] | None) -> None:
        self.keys, self.ledger, self.risk = keys, ledger, risk

    def describe(self) -> Iterable[Metric]:
        return []  # collected only at scrape time: describing would read the ledger at registration

    def collect(self) -> Iterator[Metric]:
        charged = CounterMetricFamily("encoderguard_key_images_charged", "Images charged to the key in the ledger "
                                      "(all replicas)", labels=["key_id"])
        quota = GaugeMetricFamily("encoderguard_key_quota", "The key's total quota in images (keys with one)",
                                  labels=["key_id"])
        remaining = GaugeMetricFamily("encoderguard_key_quota_remaining", "Images left under the key's quota",
                                      labels=["key_id"])
        rate = GaugeMetricFamily("encoderguard_key_rate_limit", "The key's rate limit in images per second (keys "
                                 "with one)", labels=["key_id"])
        active = GaugeMetricFamily("encoderguard_key_active", "1 while the key is active, 0 once revoked",
                                   labels=["key_id"])
        risk = GaugeMetricFamily("encoderguard_key_risk", "Highest risk score in [0, 1] a defence reports for the "
                                 "key", labels=["key_id"])
        up = GaugeMetricFamily("encoderguard_ledger_up", "1 when the ledger could be read at this scrape")
        ok = 1.0
        try:
            records = self.keys.records()
        except Exception as exc:  # a keys file being rewritten or broken must not break the scrape
            logger.warning("metrics: cannot read the keys file: %s", exc)
            records = []
        for record in records:
            active.add_metric([record.key_id], 1.0 if record.active else 0.0)
            if record.rate is not None:
                rate.add_metric([record.key_id], record.rate)
            if record.quota is not None:
                quota.add_metric([record.key_id], float(record.quota))
            if not ok:
                continue
            try:
                used = self.ledger.used(record.key_id)
            except Exception as exc:
                logger.warning("metrics: cannot read the ledger: %s", exc)
                ok = 0.0
                continue
            charged.add_metric([record.key_id], float(used))
            if record.quota is not None:
                remaining.add_metric([record.key_id], float(max(record.quota - used, 0)))
        if self.risk is not None:
            try:
                scores = self.risk()
            except Exception as exc:
                logger.warning("metrics: cannot read the defences' risk scores: %s", exc)
                scores = {}
            for key_id, score in sorted(scores.items()):
                risk.add_metric([key_id], float(score))
        up.add_metric([], ok)
        yield from (charged, quota, remaining, rate, active, risk, up)


class MetricsMiddleware:
    """ASGI middleware timing every HTTP request into :meth:`Metrics.observe`.

    The endpoint label is the matched route's path (``/v1/embeddings``), or ``other`` for a request no route
    matched, so that a client probing random paths cannot grow the number of series.

    Args:
        app: the ASGI app it wraps.
        metrics: where to count.
    """

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                status[0] = int(message.get("status", 500))
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) if route is not None else None
            try:
                self.metrics.observe(str(endpoint) if endpoint else "other", status[0], time.perf_counter() - start)
            except Exception:  # pragma: no cover - counting must never fail a request
                logger.exception("metrics: cannot count a response")
