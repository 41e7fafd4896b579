"""Helpers of the dashboard tests: a fake defence that reports risk scores and linked keys, the admin token."""

from __future__ import annotations

import threading
from typing import Any

import torch

ADMIN_TOKEN = "admin-0123456789abcdef0123456789"


def admin(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class FakeRiskDefence:
    """Answers unchanged; a key's risk is its images served over ``risky_after`` (clipped to 1), every key with
    images is in group ``"g1"``, and a per-key state of one byte per image is kept in the bound store."""

    name = "fake-risk"

    def __init__(self, risky_after: int = 10) -> None:
        self.risky_after = risky_after
        self.counts: dict[str, int] = {}
        self.store: Any = None
        self._lock = threading.Lock()

    def bind_store(self, store: Any) -> None:
        self.store = store

    def __call__(self, embeddings: torch.Tensor, *, inputs: Any, key: str) -> torch.Tensor:
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + int(embeddings.shape[0])
            if self.store is not None:
                self.store.put_state(key, "fake-risk", b"x" * self.counts[key])
        return embeddings

    def dashboard_state(self) -> dict[str, Any]:
        with self._lock:
            keys = {k: {"risk": min(n / self.risky_after, 1.0), "group": "g1", "images": n}
                    for k, n in self.counts.items()}
        return {"keys": keys, "groups": [{"group": "g1", "keys": sorted(keys)}] if keys else [],
                "alerts": [], "threshold": self.risky_after}


class AlertingDefence:
    """Answers unchanged; raises one ``fake_alarm`` alert per request through the alert log the server binds."""

    name = "alerting"

    def __init__(self) -> None:
        self.alerts: Any = None

    def bind_alerts(self, alerts: Any) -> None:
        self.alerts = alerts

    def __call__(self, embeddings: torch.Tensor, *, inputs: Any, key: str) -> torch.Tensor:
        if self.alerts is not None:
            self.alerts.raise_alert(key, "fake_alarm", f"{embeddings.shape[0]} answers looked odd", score=0.9)
        return embeddings
