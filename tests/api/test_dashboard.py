"""The owner's dashboard, /metrics and alerts without a browser: admin auth, no secrets, counters, thresholds, CLI."""

from __future__ import annotations

import json
import logging
import os
import threading

import pytest
from api_helpers import bearer, images, raw_body
from dashboard_helpers import ADMIN_TOKEN, AlertingDefence, FakeRiskDefence, admin

from encoderguard.api.alerts import AlertLog
from encoderguard.api.ledger import Ledger
from encoderguard.cli.main import main

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def _embed(client, key: str, n: int, seed: int = 0):
    return client.post("/v1/embeddings", json=raw_body(images(n, seed=seed).numpy()), headers=bearer(key))


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``{sorted labels: value}`` of the samples called ``name`` in a Prometheus exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


@pytest.fixture
def board(make_served):
    served = make_served(keys={"alice": {}, "sweeper": {"quota": 10}}, dashboard=True, admin_token=ADMIN_TOKEN,
                         defences=[FakeRiskDefence(risky_after=8)])
    with TestClient(served.app, raise_server_exceptions=False) as client:
        yield served, client


# -- admin auth -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, admin("wrong-token-0123456789"), {"Authorization": f"Basic {ADMIN_TOKEN}"},
                                     {"Authorization": "Bearer "}])
def test_dashboard_refuses_a_missing_or_wrong_admin_token(board, headers) -> None:
    served, client = board
    for method, path in [("GET", "/dashboard"), ("GET", "/dashboard/api/state"),
                         ("POST", f"/dashboard/api/keys/{served.key_ids['alice']}/revoke"),
                         ("POST", f"/dashboard/api/keys/{served.key_ids['alice']}/reset-state")]:
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path)
        body = response.json()
        assert set(body) == {"detail", "code"} and body["code"] == "unauthorized"
    assert _embed(client, served.keys["alice"], 1).status_code == 200  # nothing was revoked


def test_an_api_key_is_not_an_admin_token(board) -> None:
    served, client = board
    assert client.get("/dashboard/api/state", headers=bearer(served.keys["alice"])).status_code == 401


def test_a_browser_without_the_token_gets_the_login_page_with_401(board) -> None:
    _, client = board
    response = client.get("/dashboard", headers={"Accept": "text/html,application/xhtml+xml"})
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/html")
    assert 'id="login-form"' in response.text
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_the_right_token_opens_the_page_and_its_state(board) -> None:
    served, client = board
    page = client.get("/dashboard", headers=admin())
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")  # no CDN, no other host
    assert "https://" not in page.text
    state = client.get("/dashboard/api/state", headers=admin()).json()
    assert {k["name"] for k in state["keys"]} == {"alice", "sweeper"}
    assert state["verification"]["results"] == []


def test_wrong_admin_tokens_are_rate_limited(board) -> None:
    _, client = board
    codes = [client.get("/dashboard/api/state", headers=admin(f"wrong-{i:02d}-0123456789")).status_code
             for i in range(25)]
    assert codes[0] == 401 and codes[-1] == 429
    assert client.get("/dashboard/api/state", headers=admin()).status_code == 200  # the right token still works


# -- no secrets -------------------------------------------------------------------------------------------------------
def test_no_key_secret_or_hash_reaches_the_page_the_state_or_the_metrics(board) -> None:
    served, client = board
    for name, key in served.keys.items():
        assert _embed(client, key, 2).status_code == 200, name
    entries = json.loads(served.keys_path.read_text())["keys"]
    hashes = [e["hash"] for e in entries.values()]
    pepper = served.keys_path.with_name(served.keys_path.name + ".pepper").read_text().strip()
    secrets = [key.split("_", 2)[2] for key in served.keys.values()]
    texts = [client.get("/dashboard", headers=admin()).text,
             client.get("/dashboard/api/state", headers=admin()).text,
             client.get("/metrics").text]
    for text in texts:
        for secret in [*secrets, *hashes, pepper, ADMIN_TOKEN]:
            assert secret not in text
    state = json.loads(texts[1])
    assert all(set(k) >= {"key_id", "name"} and "hash" not in k for k in state["keys"])


# -- metrics ----------------------------------------------------------------------------------------------------------
def test_metrics_parse_and_per_key_counters_rise(board) -> None:
    served, client = board
    alice = served.key_ids["alice"]
    before = _samples(client.get("/metrics").text, "encoderguard_images_served_total")
    assert before.get((("key_id", alice),), 0.0) == 0.0
    assert _embed(client, served.keys["alice"], 3).status_code == 200
    assert _embed(client, served.keys["alice"], 2, seed=1).status_code == 200
    text = client.get("/metrics").text
    assert _samples(text, "encoderguard_images_served_total")[(("key_id", alice),)] == 5.0
    assert _samples(text, "encoderguard_requests_total")[(("key_id", alice), ("status", "200"))] == 2.0
    assert _samples(text, "encoderguard_key_images_charged_total")[(("key_id", alice),)] == 5.0
    assert _samples(text, "encoderguard_key_active")[(("key_id", alice),)] == 1.0
    sweeper = served.key_ids["sweeper"]
    assert _samples(text, "encoderguard_key_quota_remaining")[(("key_id", sweeper),)] == 10.0
    assert _samples(text, "encoderguard_key_risk")[(("key_id", alice),)] == pytest.approx(5 / 8)
    assert _samples(text, "encoderguard_ledger_up")[()] == 1.0
    latency = _samples(text, "encoderguard_request_duration_seconds_count")
    assert latency[(("endpoint", "/v1/embeddings"),)] == 2.0
    # a rejection counts by key, status and code
    assert _embed(client, served.keys["sweeper"], 11).status_code == 429
    text = client.get("/metrics").text
    assert _samples(text, "encoderguard_requests_total")[(("key_id", sweeper), ("status", "429"))] == 1.0
    assert _samples(text, "encoderguard_rejected_requests_total")[(("code", "quota_exceeded"),)] == 1.0


def test_metrics_are_served_without_the_dashboard_which_is_404(make_served) -> None:
    served = make_served()
    with TestClient(served.app, raise_server_exceptions=False) as client:
        assert _embed(client, served.keys["alice"], 1).status_code == 200
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        assert _samples(metrics.text, "encoderguard_images_served_total")[(("key_id", served.key_ids["alice"]),)] == 1
        for path in ("/dashboard", "/dashboard/api/state"):
            response = client.get(path, headers=admin())
            assert response.status_code == 404 and response.json()["code"] == "not_found"
        unknown = client.get("/nope-" + "x" * 20)
        assert unknown.status_code == 404
        assert ("endpoint", "other") in {lbl for k in _samples(client.get("/metrics").text,
                                                                "encoderguard_http_responses_total") for lbl in k}


def test_two_apps_count_separately(make_served, tmp_path) -> None:
    first = make_served()
    with TestClient(first.app) as client:
        assert _embed(client, first.keys["alice"], 2).status_code == 200
    second = make_served(keys={"bob": {}})
    with TestClient(second.app) as client:
        text = client.get("/metrics").text
    assert _samples(text, "encoderguard_images_served_total") == {}


# -- admin actions ----------------------------------------------------------------------------------------------------
def test_revoke_from_the_dashboard_refuses_the_key(board) -> None:
    served, client = board
    alice = served.key_ids["alice"]
    assert _embed(client, served.keys["alice"], 1).status_code == 200
    response = client.post(f"/dashboard/api/keys/{alice}/revoke", headers=admin())
    assert response.status_code == 200 and response.json()["key_id"] == alice and response.json()["revoked"]
    assert _embed(client, served.keys["alice"], 1).status_code == 401
    state = client.get("/dashboard/api/state", headers=admin()).json()
    assert {k["key_id"]: k["active"] for k in state["keys"]}[alice] is False
    again = client.post(f"/dashboard/api/keys/{alice}/revoke", headers=admin())
    assert again.status_code == 404 and again.json()["code"] == "not_found"
    assert client.post("/dashboard/api/keys/NOT-AN-ID/revoke", headers=admin()).status_code == 422


def test_reset_state_deletes_the_keys_defence_state(board) -> None:
    served, client = board
    alice, sweeper = served.key_ids["alice"], served.key_ids["sweeper"]
    assert _embed(client, served.keys["alice"], 3).status_code == 200
    assert _embed(client, served.keys["sweeper"], 2).status_code == 200
    state = client.get("/dashboard/api/state", headers=admin()).json()
    rows = {k["key_id"]: k["state"] for k in state["keys"]}
    assert [(s["name"], s["bytes"]) for s in rows[alice]] == [("fake-risk", 3)]
    response = client.post(f"/dashboard/api/keys/{alice}/reset-state", headers=admin())
    assert response.status_code == 200 and response.json()["deleted"] == 1
    with Ledger(served.ledger_path, create=False) as ledger:
        assert ledger.get_state(alice, "fake-risk") is None
        assert ledger.get_state(sweeper, "fake-risk") == b"xx"  # other keys keep theirs
    assert client.post("/dashboard/api/keys/0000beef/reset-state", headers=admin()).status_code == 404


def test_state_shows_defence_risk_groups_and_usage_series(board) -> None:
    served, client = board
    alice = served.key_ids["alice"]
    assert _embed(client, served.keys["alice"], 4).status_code == 200
    state = client.get("/dashboard/api/state", headers=admin()).json()
    row = {k["key_id"]: k for k in state["keys"]}[alice]
    assert row["risk"] == pytest.approx(0.5) and row["group"] == "g1" and row["defence"] == {"images": 4}
    assert sum(row["series"]) == 4 and len(row["series"]) == len(state["minutes"]) == state["window_minutes"]
    assert row["used"] == 4 and row["requests"] == 1
    assert state["defences"][0]["defence"] == "fake-risk"
    assert state["defences"][0]["state"]["groups"] == [{"group": "g1", "keys": [alice]}]


def test_verification_results_are_shown_once_written(make_served, tmp_path) -> None:
    results = tmp_path / "verify.json"
    served = make_served(dashboard=True, admin_token=ADMIN_TOKEN, verification_results=results)
    with TestClient(served.app) as client:
        assert client.get("/dashboard/api/state", headers=admin()).json()["verification"]["results"] == []
        results.write_text(json.dumps({"method": "di", "verdict": "stolen", "p_value": 1e-6, "alpha": 0.01,
                                       "suspect": "runs/copy", "statistic": float("inf")}).replace("Infinity",
                                                                                                   "null"))
        served.app.state.dashboard.invalidate()
        shown = client.get("/dashboard/api/state", headers=admin()).json()["verification"]
        assert shown["results"][0]["verdict"] == "stolen" and shown["results"][0]["suspect"] == "runs/copy"
        results.write_text("{not json")
        served.app.state.dashboard.invalidate()
        shown = client.get("/dashboard/api/state", headers=admin()).json()["verification"]
        assert shown["results"] == [] and "cannot read" in shown["error"]


# -- alerts -----------------------------------------------------------------------------------------------------------
def test_quota_crossings_raise_one_alert_each_and_log_a_warning(board, caplog) -> None:
    served, client = board
    sweeper = served.key_ids["sweeper"]
    with caplog.at_level(logging.WARNING, logger="encoderguard.alerts"):
        for seed in range(3):
            assert _embed(client, served.keys["sweeper"], 3, seed=seed).status_code == 200  # 3, 6, 9 of 10
        assert _embed(client, served.keys["sweeper"], 1, seed=9).status_code == 200  # 10 of 10
        assert _embed(client, served.keys["sweeper"], 1, seed=10).status_code == 429
    alerts = served.app.state.monitor.alerts.list(key_id=sweeper)
    kinds = [a.kind for a in alerts if a.kind.startswith("quota")]
    assert kinds == ["quota_100", "quota_80"]  # newest first, one each
    logged = [r for r in caplog.records if r.name == "encoderguard.alerts"]
    assert logged and all(r.levelno == logging.WARNING for r in logged)
    assert any("quota_80" in r.getMessage() and sweeper in r.getMessage() for r in logged)
    state = client.get("/dashboard/api/state", headers=admin()).json()
    assert {"quota_80", "quota_100"} <= {a["kind"] for a in state["alerts"] if a["key_id"] == sweeper}
    text = client.get("/metrics").text
    assert _samples(text, "encoderguard_alerts_total")[(("kind", "quota_80"),)] == 1.0


def test_risk_alert_once_per_crossing(board) -> None:
    served, client = board
    alice = served.key_ids["alice"]
    monitor = served.app.state.monitor
    monitor.risk_interval = 0.0
    assert _embed(client, served.keys["alice"], 3).status_code == 200  # risk 3/8
    assert [a for a in monitor.alerts.list(key_id=alice) if a.kind == "risk"] == []
    assert _embed(client, served.keys["alice"], 2, seed=1).status_code == 200  # risk 5/8
    assert _embed(client, served.keys["alice"], 2, seed=2).status_code == 200  # risk 7/8: still one alert
    client.get("/dashboard/api/state", headers=admin())
    risk = [a for a in monitor.alerts.list(key_id=alice) if a.kind == "risk"]
    assert len(risk) == 1 and risk[0].score == pytest.approx(5 / 8)


def test_rejection_burst_alert(make_served) -> None:
    served = make_served(keys={"hammer": {"quota": 0}})
    monitor = served.app.state.monitor
    monitor.burst_rejections = 5
    with TestClient(served.app) as client:
        for seed in range(12):
            assert _embed(client, served.keys["hammer"], 1, seed=seed).status_code == 429
    bursts = [a for a in monitor.alerts.list() if a.kind == "rejection_burst"]
    assert len(bursts) == 1 and bursts[0].key_id == served.key_ids["hammer"]


def test_defences_with_bind_alerts_raise_alerts_on_the_dashboard(make_served) -> None:
    served = make_served(defences=[AlertingDefence()], dashboard=True, admin_token=ADMIN_TOKEN)
    with TestClient(served.app) as client:
        assert _embed(client, served.keys["alice"], 2).status_code == 200
        alerts = client.get("/dashboard/api/state", headers=admin()).json()["alerts"]
    assert [(a["kind"], a["key_id"], a["score"]) for a in alerts] == [("fake_alarm", served.key_ids["alice"], 0.9)]


def test_alert_log_is_bounded_thread_safe_and_validates() -> None:
    log = AlertLog(capacity=50)
    threads = [threading.Thread(target=lambda i=i: [log.raise_alert(f"k{i}", "risk", f"m{j}", score=j / 100)
                                                     for j in range(40)]) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    alerts = log.list()
    assert len(alerts) == 50 == len(log)
    assert [a.alert_id for a in alerts] == sorted((a.alert_id for a in alerts), reverse=True)
    assert alerts[0].alert_id == 160
    assert len(log.list(limit=3)) == 3 and all(a.key_id == "k1" for a in log.list(key_id="k1"))
    assert log.raise_alert(None, "x", "y", score=float("nan")).score is None
    for bad in ({"capacity": 0}, {"capacity": True}):
        with pytest.raises(ValueError, match="capacity"):
            AlertLog(**bad)
    with pytest.raises(ValueError, match="kind"):
        log.raise_alert("k", "", "message")


# -- settings and CLI -------------------------------------------------------------------------------------------------
def test_create_app_refuses_a_dashboard_without_a_token(make_served) -> None:
    with pytest.raises(ValueError, match="admin token"):
        make_served(dashboard=True)
    with pytest.raises(ValueError, match="without the dashboard"):
        make_served(keys={"bob": {}}, admin_token=ADMIN_TOKEN)


def _serve_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and "Traceback" not in captured.err
    assert captured.err.count("\n") == 1, captured.err
    return captured.err


@pytest.mark.parametrize("command", ["serve", "proxy"])
def test_cli_dashboard_flag_errors_are_one_line(tmp_path, capsys, command) -> None:
    keys = tmp_path / "keys.json"
    base = (["serve", "--encoder", str(tmp_path / "no-encoder"), "--port", "0", "--keys", str(keys)]
            if command == "serve" else
            ["proxy", "--upstream", "http://127.0.0.1:9", "--upstream-format", "encoderguard", "--port", "0",
             "--keys", str(keys)])
    missing = tmp_path / "missing-token"
    err = _serve_error(capsys, [*base, "--dashboard", "--admin-token-file", str(missing)])
    assert f"encoderguard {command}: error:" in err and "does not exist" in err
    empty = tmp_path / "empty-token"
    empty.write_text("  \n")
    assert "is empty" in _serve_error(capsys, [*base, "--dashboard", "--admin-token-file", str(empty)])
    assert "needs --admin-token-file" in _serve_error(capsys, [*base, "--dashboard"])
    assert "need --dashboard" in _serve_error(capsys, [*base, "--admin-token-file", str(empty)])


def test_token_file_readable_by_others_warns(tmp_path, caplog) -> None:
    from encoderguard.api.dashboard import read_admin_token

    token = tmp_path / "token"
    token.write_text(ADMIN_TOKEN + "\n")
    os.chmod(token, 0o600)
    with caplog.at_level(logging.WARNING):
        assert read_admin_token(token) == ADMIN_TOKEN
    assert not caplog.records
    os.chmod(token, 0o644)
    with caplog.at_level(logging.WARNING):
        assert read_admin_token(token) == ADMIN_TOKEN
    assert any("readable by other users" in r.getMessage() for r in caplog.records)
    token.write_text("two words\n")
    with pytest.raises(ValueError, match="one token"):
        read_admin_token(token)


def test_serve_command_with_the_dashboard_flags(tmp_path) -> None:
    pytest.importorskip("uvicorn")
    import httpx

    from encoderguard.api.keys import KeyStore
    from encoderguard.api.launcher import launch_server

    models = pytest.importorskip("encoderguard.models")
    encoder = models.create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2)
    card = models.ModelCard(arch="convnet", arch_kwargs=dict(encoder.arch_kwargs), input_shape=(1, 8, 8),
                            embed_dim=16)
    models.save_checkpoint(tmp_path / "encoder", encoder=encoder, card=card)
    keys = tmp_path / "keys.json"
    record, key = KeyStore(keys).add(name="alice", quota=10)
    token = tmp_path / "admin.token"
    token.write_text(ADMIN_TOKEN + "\n")
    token.chmod(0o600)
    extra = ["--dashboard", "--admin-token-file", str(token)]
    with launch_server(tmp_path / "encoder", keys=keys, ledger=tmp_path / "ledger.sqlite", extra=extra) as server, \
            httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/dashboard").status_code == 401
        assert http.get("/dashboard", headers=admin("x" * 30)).status_code == 401
        page = http.get("/dashboard", headers=admin())
        assert page.status_code == 200 and 'id="keys"' in page.text
        body = raw_body(images(2).numpy())
        assert http.post("/v1/embeddings", json=body, headers=bearer(key)).status_code == 200
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        assert _samples(metrics.text, "encoderguard_images_served_total")[(("key_id", record.key_id),)] == 2.0
