"""The owner's live dashboard and the metrics endpoint of the HTTP API.

``GET /metrics`` (always served, unauthenticated, Prometheus text format; see :mod:`encoderguard.api.metrics`).

With ``create_app(dashboard=True, admin_token=...)`` also, each behind ``Authorization: Bearer <admin token>``
(compared with :func:`hmac.compare_digest`; anything else is 401 in the house error shape):

- ``GET /dashboard``: the page (one self-contained HTML file shipped with the package: no CDN, vanilla JS, which
  fetches only the JSON endpoints below). A browser (``Accept: text/html``) without the token gets the same page
  with status 401: its login form keeps the token in the tab's ``sessionStorage`` and sends it as a bearer header.
- ``GET /dashboard/api/state``: keys (id, name, quota, usage, rate limit, active or revoked), images per minute
  from the ledger, alerts, the defences' ``dashboard_state()`` (risk scores, linked-key groups), the defence state
  the ledger holds per key (names and sizes, not values) and the latest verification results.
- ``POST /dashboard/api/keys/{key_id}/revoke``: revoke the key in the keys file (as ``encoderguard keys revoke``;
  the server refuses it from its next request on).
- ``POST /dashboard/api/keys/{key_id}/reset-state``: delete the key's defence state in the ledger.

Nothing the dashboard sends holds a key's secret or hash: keys are shown by id and name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from encoderguard import __version__
from encoderguard.api import admission
from encoderguard.api.alerts import AlertLog
from encoderguard.api.auth_limiter import AuthFailureLimiter
from encoderguard.api.http_errors import error_response
from encoderguard.api.service import EmbeddingService
from encoderguard.api.usage_monitor import UsageMonitor, jsonable, risk_scores
from encoderguard.errors import EncoderGuardError

logger = logging.getLogger(__name__)

__all__ = ["Dashboard", "add_monitoring", "check_dashboard_settings", "read_admin_token"]

WINDOW_MINUTES = 30
MAX_VERIFICATION_BYTES = 2 * 2**20
MAX_VERIFICATION_RESULTS = 100
_KEY_ID_RE = re.compile(r"^[0-9a-f]{8}$")
_BLOCK_RE = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


def read_admin_token(path: str | os.PathLike[str]) -> str:
    """The dashboard's admin token: the content of ``path`` without surrounding white space.

    Warns (``logging``) when the file can be read by the group or others, or holds fewer than 16 characters.

    Args:
        path: the token file.

    Returns:
        The token.

    Raises:
        ValueError: if the file does not exist, cannot be read, or is empty.
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--admin-token-file {file} does not exist; write a long random token into it, e.g. "
                         f"'python -c \"import secrets; print(secrets.token_urlsafe(32))\" > {file}; chmod 600 {file}'")
    try:
        text = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read --admin-token-file {file}: {exc}") from None
    if not text:
        raise ValueError(f"--admin-token-file {file} is empty; write a long random token into it")
    if any(c.isspace() for c in text) or not text.isprintable():
        raise ValueError(f"--admin-token-file {file} must hold one token on one line (no spaces)")
    if os.stat(file).st_mode & 0o077:
        logger.warning("admin token file %s is readable by other users; chmod 600 it", file)
    if len(text) < 16:
        logger.warning("admin token in %s is short (%d characters); use at least 32 random ones", file, len(text))
    return text


def check_dashboard_settings(*, dashboard: bool, admin_token: str | None,
                             verification_results: str | os.PathLike[str] | None) -> None:
    """Refuse dashboard settings that cannot work, before the server opens anything.

    Raises:
        ValueError: ``dashboard`` without a non-empty ``admin_token`` (or with white space in it), or
            ``admin_token``/``verification_results`` without ``dashboard``.
    """
    if dashboard:
        if not isinstance(admin_token, str) or not admin_token.strip():
            raise ValueError("the dashboard needs an admin token (--admin-token-file FILE)")
        if admin_token != admin_token.strip() or any(c.isspace() for c in admin_token):
            raise ValueError("the admin token must not contain white space")
    elif admin_token is not None or verification_results is not None:
        raise ValueError("an admin token or verification results were given without the dashboard (--dashboard)")
    from encoderguard.optional import require

    require("prometheus_client", extra="server", purpose="the /metrics endpoint")


def add_monitoring(
    app: FastAPI,
    service: EmbeddingService,
    *,
    dashboard: bool = False,
    admin_token: str | None = None,
    verification_results: str | os.PathLike[str] | None = None,
    alerts: AlertLog | None = None,
) -> UsageMonitor:
    """Count into ``/metrics`` and alert on thresholds; with ``dashboard``, serve the owner's dashboard too.

    Sets ``service.monitor`` and ``app.state.monitor`` (and ``app.state.dashboard``); a defence of the chain with a
    ``bind_alerts(alert_log)`` method is given the alert log, so its own alerts show on the dashboard.

    Args:
        app: the API app (before it starts).
        service: its embedding service.
        dashboard: serve ``/dashboard`` and its JSON endpoints (else they are 404).
        admin_token: the bearer token of the dashboard (required with ``dashboard``).
        verification_results: a JSON file of verification results shown on the page (``encoderguard verify
            --json`` output: one result, a list of them, or ``{"results": [...]}``); it may not exist yet.
        alerts: the alert log (default: a new one).

    Returns:
        The :class:`~encoderguard.api.usage_monitor.UsageMonitor` the service now reports to.

    Raises:
        ValueError: for bad dashboard settings (see :func:`check_dashboard_settings`).
    """
    check_dashboard_settings(dashboard=dashboard, admin_token=admin_token, verification_results=verification_results)
    from encoderguard.api.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware

    alerts = alerts if alerts is not None else AlertLog()
    holder: dict[str, UsageMonitor] = {}
    metrics = Metrics(keys=service.keys, ledger=service.ledger, risk=lambda: holder["monitor"].risk_scores())
    monitor = UsageMonitor(metrics=metrics, alerts=alerts, defences=service.api.defences)
    holder["monitor"] = monitor
    for defence in service.api.defences:  # defences that raise their own alerts raise them here
        bind = getattr(defence, "bind_alerts", None)
        if callable(bind):
            bind(alerts)
    service.monitor = monitor
    app.state.monitor = monitor
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        from starlette.concurrency import run_in_threadpool

        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)

    if dashboard:
        assert admin_token is not None
        board = Dashboard(service, monitor, admin_token=admin_token, verification_results=verification_results)
        app.state.dashboard = board
        _add_dashboard_routes(app, board)
    return monitor


class Dashboard:
    """What the dashboard's endpoints read and do.

    Args:
        service: the embedding service (its keys file, ledger and defence chain).
        monitor: the usage monitor (alerts, the defences' dashboard state).
        admin_token: the bearer token the endpoints require.
        verification_results: JSON file of verification results to show, or ``None``.
        window_minutes: minutes of usage history shown (>= 1).
        cache_seconds: the state is rebuilt at most this often (several open tabs cost one ledger read).

    Raises:
        ValueError: for an empty token or a bad window.
    """

    def __init__(self, service: EmbeddingService, monitor: UsageMonitor, *, admin_token: str,
                 verification_results: str | os.PathLike[str] | None = None, window_minutes: int = WINDOW_MINUTES,
                 cache_seconds: float = 1.0) -> None:
        if not admin_token:
            raise ValueError("admin_token must be a non-empty string")
        if isinstance(window_minutes, bool) or not isinstance(window_minutes, int) or window_minutes < 1:
            raise ValueError(f"window_minutes must be a positive int, got {window_minutes!r}")
        self.service, self.monitor = service, monitor
        self._token = admin_token.encode("utf-8")
        self.verification_results = None if verification_results is None else Path(verification_results)
        self.window_minutes, self.cache_seconds = window_minutes, float(cache_seconds)
        self.limiter = AuthFailureLimiter(max_failures=20, window=60.0)
        self._lock = threading.Lock()
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._generation = 0
        self.page, self.content_security_policy = _load_page()

    # -- authentication ----------------------------------------------------------------------------------------
    def refusal(self, request: Request) -> JSONResponse | None:
        """``None`` when ``request`` carries the admin token, else its 401 (429 after repeated wrong tokens)."""
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            return error_response(401, "missing admin token: send 'Authorization: Bearer <admin token>'",
                                  headers={"WWW-Authenticate": 'Bearer realm="encoderguard dashboard"'})
        if hmac.compare_digest(presented.encode("utf-8"), self._token):
            return None
        wait = self.limiter.failure(key_id=None, address=admission.client_address(request))
        if wait > 0:
            return error_response(429, f"too many wrong admin tokens; retry after {wait:.1f} s",
                                  code="too_many_auth_failures", headers={"Retry-After": str(max(1, int(wait) + 1))})
        return error_response(401, "invalid admin token",
                              headers={"WWW-Authenticate": 'Bearer realm="encoderguard dashboard"'})

    # -- the page's data ---------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything the page shows (JSON-able; no key secret or hash), rebuilt at most every ``cache_seconds``."""
        with self._lock:
            if self._cache is not None and time.monotonic() - self._cache[0] < self.cache_seconds:
                return self._cache[1]
            generation = self._generation
        state = self._build_state()
        with self._lock:
            if generation == self._generation:  # an admin action meanwhile: this state may be stale, keep none
                self._cache = (time.monotonic(), state)
        return state

    def invalidate(self) -> None:
        """Forget the cached state (after an admin action)."""
        with self._lock:
            self._cache = None
            self._generation += 1

    def _build_state(self) -> dict[str, Any]:
        now = time.time()
        first = int(now // 60) - self.window_minutes + 1
        minutes = [60 * (first + i) for i in range(self.window_minutes)]
        ledger = self.service.ledger
        records = self.service.keys.records()
        series = {r.key_id: [0] * self.window_minutes for r in records}
        counts = {r.key_id: [0, 0] for r in records}  # requests answered, requests rejected (in the window)
        for key_id, created, n_images, status, n_requests in ledger.usage_since(60 * first):
            if key_id not in series:
                continue
            slot = min(max(int(created // 60) - first, 0), self.window_minutes - 1)
            if status == 200:
                series[key_id][slot] += n_images
                counts[key_id][0] += 1
            else:
                counts[key_id][1] += n_requests
        stored: dict[str, list[dict[str, Any]]] = {}
        for row in ledger.state_sizes():
            stored.setdefault(row["key_id"], []).append(
                {"name": row["name"], "bytes": row["bytes"], "updated_at": row["updated_at"]})
        defences = self.monitor.defence_states()
        scores = risk_scores(defences)
        keys = []
        for record in records:
            used = ledger.used(record.key_id)
            info: dict[str, Any] = {}
            group = None
            for entry in defences:
                per_key = entry["state"].get("keys")
                item = per_key.get(record.key_id) if isinstance(per_key, dict) else None
                if isinstance(item, dict):
                    group = group or (str(item["group"]) if item.get("group") is not None else None)
                    info.update({k: v for k, v in item.items() if k not in ("risk", "group")})
            keys.append({
                "key_id": record.key_id, "name": record.name, "active": record.active, "revoked": record.revoked,
                "created": record.created, "quota": record.quota, "used": used,
                "remaining": None if record.quota is None else max(record.quota - used, 0), "rate": record.rate,
                "requests": counts[record.key_id][0], "rejected": counts[record.key_id][1],
                "risk": scores.get(record.key_id), "group": group, "defence": info,
                "state": stored.get(record.key_id, []), "series": series[record.key_id],
            })
        return {
            "server": {"version": __version__, "now": now,
                       "source": "proxy" if self.service.api.source is not None else "encoder"},
            "window_minutes": self.window_minutes,
            "minutes": minutes,
            "risk_threshold": self.monitor.risk_threshold,
            "keys": keys,
            "alerts": [a.to_dict() for a in self.monitor.alerts.list(limit=200)],
            "chain": [str(getattr(d, "name", type(d).__name__)) for d in self.service.api.defences],
            "defences": defences,
            "verification": self.verification(),
        }

    def verification(self) -> dict[str, Any]:
        """``{"path", "results": [...], "modified_at", "error"}``: the latest verification results, if any."""
        path = self.verification_results
        out: dict[str, Any] = {"path": None if path is None else str(path), "results": [], "modified_at": None,
                               "error": None}
        if path is None or not path.is_file():
            return out
        try:
            stat = path.stat()
            if stat.st_size > MAX_VERIFICATION_BYTES:
                raise ValueError(f"larger than {MAX_VERIFICATION_BYTES} bytes")
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            out["error"] = f"cannot read {path}: {exc}"
            return out
        out["modified_at"] = stat.st_mtime
        out["results"] = [jsonable(r) for r in _verification_list(payload)[:MAX_VERIFICATION_RESULTS]]
        return out

    # -- admin actions -----------------------------------------------------------------------------------------
    def revoke(self, key_id: str) -> dict[str, Any]:
        """Revoke the active key ``key_id`` in the keys file.

        Raises:
            ValueError: if no active key has this id.
        """
        record = self.service.keys.revoke(key_id=key_id)
        self.invalidate()
        logger.info("dashboard: key %s (%s) revoked", record.key_id, record.name)
        return {"key_id": record.key_id, "name": record.name, "revoked": record.revoked}

    def reset_state(self, key_id: str) -> dict[str, Any]:
        """Delete the defence state the ledger holds for ``key_id`` and re-arm its alerts.

        Raises:
            ValueError: if the keys file has no key with this id.
        """
        record = next((r for r in self.service.keys.records() if r.key_id == key_id), None)
        if record is None:
            raise ValueError(f"no key with id {key_id!r}")
        deleted = self.service.ledger.reset_state(key_id)
        self.monitor.forget(key_id)
        self.invalidate()
        logger.info("dashboard: defence state of key %s (%s) reset (%d states deleted)", key_id, record.name, deleted)
        return {"key_id": key_id, "name": record.name, "deleted": deleted}


def _verification_list(payload: Any) -> list[Any]:
    """One verification result, a list of them, ``{"results": [...]}`` or ``{suspect: result}`` as a list."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        if isinstance(payload.get("results"), list):
            return list(payload["results"])
        if "verdict" in payload:
            return [payload]
        return [{"suspect": k, **v} for k, v in payload.items() if isinstance(v, dict)]
    raise ValueError("expected a JSON object or list of verification results")


def _load_page() -> tuple[bytes, str]:
    """The page's bytes and a Content-Security-Policy that allows only its own inline script and style."""
    text = resources.files("encoderguard.api").joinpath("dashboard.html").read_text(encoding="utf-8")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _BLOCK_RE.findall(text):
        digest = base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode()
        hashes[tag].append(f"'sha256-{digest}'")
    policy = ("default-src 'none'; connect-src 'self'; img-src 'self' data:; "
              f"script-src {' '.join(hashes['script'])}; style-src {' '.join(hashes['style'])}; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return text.encode("utf-8"), policy


def _add_dashboard_routes(app: FastAPI, board: Dashboard) -> None:
    from starlette.concurrency import run_in_threadpool

    page_headers = {"Content-Security-Policy": board.content_security_policy, "Cache-Control": "no-store",
                    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_page(request: Request) -> Response:
        refused = board.refusal(request)
        if refused is None:
            return Response(board.page, media_type="text/html; charset=utf-8", headers=page_headers)
        if refused.status_code == 401 and "text/html" in request.headers.get("accept", ""):
            # A browser: the same page, whose login form asks for the token; the status stays 401.
            return Response(board.page, status_code=401, media_type="text/html; charset=utf-8",
                            headers={**page_headers, **{"WWW-Authenticate": refused.headers["WWW-Authenticate"]}})
        return refused

    @app.get("/dashboard/api/state", include_in_schema=False)
    async def dashboard_state(request: Request) -> Response:
        refused = board.refusal(request)
        if refused is not None:
            return refused
        state = await run_in_threadpool(board.state)
        return JSONResponse(state, headers={"Cache-Control": "no-store"})

    async def action(request: Request, key_id: str, do: Any) -> Response:
        refused = board.refusal(request)
        if refused is not None:
            return refused
        if not _KEY_ID_RE.match(key_id):
            return error_response(422, f"a key id is 8 hex characters, got {key_id[:40]!r}")
        try:
            result = await run_in_threadpool(do, key_id)
        except ValueError as exc:
            return error_response(404, str(exc))
        except EncoderGuardError as exc:
            return error_response(500, str(exc))
        return JSONResponse(result, headers={"Cache-Control": "no-store"})

    @app.post("/dashboard/api/keys/{key_id}/revoke", include_in_schema=False)
    async def revoke_key(request: Request, key_id: str) -> Response:
        return await action(request, key_id, board.revoke)

    @app.post("/dashboard/api/keys/{key_id}/reset-state", include_in_schema=False)
    async def reset_key_state(request: Request, key_id: str) -> Response:
        return await action(request, key_id, board.reset_state)
