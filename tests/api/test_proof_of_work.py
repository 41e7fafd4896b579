"""Proof-of-work pricing: the puzzle, the signed challenge, the 428 protocol, the client that solves it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from api_helpers import Served, bearer, images, raw_body

from encoderguard.api.pow_solver import PowSolver
from encoderguard.api.proof_of_work import (
    CHALLENGE_HEADER,
    SOLUTION_HEADER,
    Challenge,
    ProofOfWork,
    check_solution,
    difficulty_bits,
    expected_hashes,
    load_secret,
    pow_digest,
    pow_target,
    solve,
)

SECRET = b"s" * 32


class FakeRisk:
    """A defence of the chain that leaves answers alone and scores keys (as a linked-key defence would)."""

    name = "fake-risk"

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}

    def __call__(self, embeddings: torch.Tensor, *, inputs: Any, key: str) -> torch.Tensor:
        return embeddings

    def risk(self, key_id: str) -> float:
        return self.scores.get(key_id, 0.0)


# -- the puzzle ----------------------------------------------------------------------------------------------------
def test_target_is_leading_zero_bits_for_one_image_and_scales_with_the_batch() -> None:
    assert pow_target(8, 1) == 2**248
    assert pow_target(8, 4) == 2**246
    assert expected_hashes(10, 32) == pytest.approx(2**10 * 32)


def test_solve_finds_a_counter_that_checks_and_its_digest_has_the_zero_bits() -> None:
    token = "p1.abcd1234.0.100.10.1." + "0" * 32 + "." + "A" * 43
    counter, tried = solve(token, 10, 1)
    assert tried == counter + 1
    assert check_solution(token, counter, 10, 1)
    assert int.from_bytes(pow_digest(token, counter), "big") >> (256 - 10) == 0
    assert all(not check_solution(token, c, 10, 1) for c in range(counter))  # the smallest one
    assert not check_solution(token, -1, 0, 1) and not check_solution(token, 2**64, 0, 1)


def test_difficulty_grows_with_risk_and_clips() -> None:
    assert [difficulty_bits(10, 8, r) for r in (0.0, 0.5, 1.0, 7.0, -1.0)] == [10, 14, 18, 18, 10]
    assert difficulty_bits(10, 8, float("nan")) == 18


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="base_bits"):
        ProofOfWork(base_bits=-1)
    with pytest.raises(ValueError, match="secret"):
        ProofOfWork(base_bits=4, secret=b"short")
    with pytest.raises(ValueError, match="ttl"):
        ProofOfWork(base_bits=4, ttl=0)
    with pytest.raises(ValueError, match="images"):
        ProofOfWork(base_bits=4).issue("abcd1234", 0)


# -- the signed challenge ------------------------------------------------------------------------------------------
def _solved(pow_: ProofOfWork, key_id: str, images: int = 1) -> str:
    challenge = pow_.issue(key_id, images)
    counter, _ = solve(challenge.token, challenge.bits, challenge.images)
    return f"{challenge.token}:{counter}"


def test_verify_accepts_a_solution_once_and_refuses_forgeries() -> None:
    now = [1_000_000.0]
    pow_ = ProofOfWork(base_bits=6, secret=SECRET, ttl=60, clock=lambda: now[0])
    header = _solved(pow_, "abcd1234", 3)
    good = pow_.verify(header, "abcd1234")
    assert good.ok and good.images == 3 and good.bits == 6
    assert pow_.verify(header, "abcd1234").status == 428  # replayed
    assert pow_.verify(None, "abcd1234").status == 428  # missing
    assert pow_.verify("garbage", "abcd1234").status == 400
    other = _solved(pow_, "abcd1234")
    assert pow_.verify(other, "ffff0000").status == 400  # issued to another key
    token, counter = other.rsplit(":", 1)
    forged = token.replace(".6.", ".0.", 1)  # claims difficulty 0: the signature no longer matches
    assert "signature" in pow_.verify(f"{forged}:0", "abcd1234").reason
    stranger = ProofOfWork(base_bits=6, secret=b"t" * 32, clock=lambda: now[0])
    assert pow_.verify(_solved(stranger, "abcd1234"), "abcd1234").status == 400  # another server's secret
    wrong = next(c for c in range(10_000) if not check_solution(token, c, 6, 1))
    assert pow_.verify(f"{token}:{wrong}", "abcd1234").status == 400
    now[0] += 61
    assert "expired" in pow_.verify(other, "abcd1234").reason


def test_a_challenge_issued_before_the_risk_rose_is_refused() -> None:
    risk = {"abcd1234": 0.0}
    pow_ = ProofOfWork(base_bits=4, extra_bits=4, secret=SECRET, risk=risk.__getitem__)
    header = _solved(pow_, "abcd1234")
    risk["abcd1234"] = 1.0
    verdict = pow_.verify(header, "abcd1234")
    assert verdict.status == 428 and "risen to 8 bits" in verdict.reason
    assert Challenge.parse(pow_.issue("abcd1234").token).bits == 8


def test_a_failing_risk_provider_prices_at_zero(caplog: pytest.LogCaptureFixture) -> None:
    def broken(key_id: str) -> float:
        raise RuntimeError("boom")

    assert ProofOfWork(base_bits=5, risk=broken).bits_for("abcd1234") == 5
    assert "risk provider failed" in caplog.text


def test_secret_file_is_created_once_and_read_back(tmp_path: Any) -> None:
    path = tmp_path / "pow.secret"
    first = load_secret(path)
    assert len(first) == 32 and load_secret(path) == first
    assert (path.stat().st_mode & 0o777) == 0o600
    (tmp_path / "bad").write_text("zz")
    with pytest.raises(ValueError, match="not a hex secret"):
        load_secret(tmp_path / "bad")


def test_solver_reuses_a_fitting_challenge_and_fetches_otherwise() -> None:
    pow_ = ProofOfWork(base_bits=4, secret=SECRET)
    solver = PowSolver()
    assert solver.headers(5, lambda n: pytest.fail("not active")) == {}
    solver.offer(pow_.issue("abcd1234", 8).token)
    fetched: list[int] = []

    def fetch(n: int) -> str:
        fetched.append(n)
        return pow_.issue("abcd1234", n).token

    header = solver.headers(8, fetch)[SOLUTION_HEADER]
    assert fetched == [] and pow_.verify(header, "abcd1234").ok
    header = solver.headers(16, fetch)[SOLUTION_HEADER]  # nothing kept: fetched for 16 images
    assert fetched == [16] and pow_.verify(header, "abcd1234").images == 16
    assert solver.solved == 2 and solver.seconds > 0 and solver.hashes >= 2


# -- the HTTP protocol ---------------------------------------------------------------------------------------------
@pytest.fixture
def pow_served(make_served: Callable[..., Served]) -> tuple[Served, ProofOfWork, FakeRisk]:
    risk = FakeRisk()
    pow_ = ProofOfWork(base_bits=6, extra_bits=4, secret=SECRET, max_images=64)
    served = make_served({"alice": {}, "mallory": {}}, defences=[risk], proof_of_work=pow_, max_batch=64)
    return served, pow_, risk


def _post(client: Any, key: str, batch: torch.Tensor, solution: str | None = None) -> Any:
    headers = bearer(key)
    if solution is not None:
        headers[SOLUTION_HEADER] = solution
    return client.post("/v1/embeddings", json=raw_body(batch.numpy()), headers=headers)


def _solve_header(token: str) -> str:
    c = Challenge.parse(token)
    return f"{token}:{solve(token, c.bits, c.images)[0]}"


def test_without_a_solution_428_with_a_challenge_and_nothing_charged(pow_served: Any) -> None:
    from fastapi.testclient import TestClient

    served, _, _ = pow_served
    with TestClient(served.app) as client:
        answer = _post(client, served.keys["alice"], images(2))
        assert answer.status_code == 428
        body = answer.json()
        assert body["code"] == "pow_required" and body["challenge"]["challenge"] == answer.headers[CHALLENGE_HEADER]
        assert body["challenge"]["bits"] == 6
        garbage = _post(client, served.keys["alice"], images(2), solution="p1.nope:3")
        assert garbage.status_code == 400 and garbage.json()["code"] == "pow_invalid"
    summary = served.ledger_summary()["keys"][served.key_ids["alice"]]
    assert summary["queries"] == 0 and summary["rejected"] == 2  # logged (bounded), never charged


def test_a_solved_request_is_answered_once_and_carries_the_next_challenge(pow_served: Any) -> None:
    from fastapi.testclient import TestClient

    served, _, _ = pow_served
    key = served.keys["alice"]
    with TestClient(served.app) as client:
        fresh = client.get("/v1/pow", params={"images": 2}, headers=bearer(key))
        assert fresh.status_code == 200 and fresh.json()["images"] == 2
        solution = _solve_header(fresh.json()["challenge"])
        ok = _post(client, key, images(2), solution)
        assert ok.status_code == 200
        nxt = Challenge.parse(ok.headers[CHALLENGE_HEADER])
        assert nxt.images == 2 and nxt.key_id == served.key_ids["alice"]
        replay = _post(client, key, images(2), solution)
        assert replay.status_code == 428 and "already used" in replay.json()["detail"]
        too_many = _post(client, key, images(3), _solve_header(ok.headers[CHALLENGE_HEADER]))
        assert too_many.status_code == 428 and too_many.json()["challenge"]["images"] == 3
        assert client.get("/v1/pow", params={"images": 999}, headers=bearer(key)).status_code == 422
        assert client.get("/v1/pow").status_code == 401
    assert served.ledger_summary()["keys"][served.key_ids["alice"]]["queries"] == 2


def test_difficulty_follows_the_chain_risk(pow_served: Any) -> None:
    from fastapi.testclient import TestClient

    served, _, risk = pow_served
    risk.scores[served.key_ids["mallory"]] = 1.0
    with TestClient(served.app) as client:
        bits = {name: client.get("/v1/pow", headers=bearer(served.keys[name])).json()["bits"]
                for name in ("alice", "mallory")}
    assert bits == {"alice": 6, "mallory": 10}


def test_pow_endpoint_says_when_the_server_asks_for_none(served: Served) -> None:
    from fastapi.testclient import TestClient

    with TestClient(served.app) as client:
        answer = client.get("/v1/pow", headers=bearer(served.keys["alice"]))
    assert answer.status_code == 404 and answer.json()["code"] == "pow_disabled"


def test_client_solves_transparently_against_a_live_server(pow_served: Any) -> None:
    from encoderguard.api.client import HTTPEmbeddingAPI
    from encoderguard.api.server import background_server

    served, _, _ = pow_served
    batch = images(20, seed=3)
    with background_server(served.app) as url, HTTPEmbeddingAPI(url, served.keys["alice"], batch_size=8) as api:
        first = api.embed(batch)
        second = api.embed(batch[:5])
        assert api.pow_seconds > 0 and api._pow.solved >= 4
    reference = served.app.state.service.api.embed(batch, key=served.key_ids["alice"])
    assert torch.allclose(first, reference, atol=1e-5) and first.shape == (20, 16) and second.shape == (5, 16)
    usage = served.ledger_summary()["keys"][served.key_ids["alice"]]
    assert usage["queries"] == 25
    assert usage["rejected"] <= 1  # at most the first request's 428, before the client knew


def test_openapi_lists_the_pow_endpoint(pow_served: Any) -> None:
    from fastapi.testclient import TestClient

    served, _, _ = pow_served
    with TestClient(served.app) as client:
        schema = client.get("/openapi.json").json()
    assert "/v1/pow" in schema["paths"] and "428" in json.dumps(schema["paths"]["/v1/embeddings"])


def test_serve_flags_fail_in_one_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from encoderguard.cli.main import main

    base = ["serve", "--encoder", str(tmp_path / "none"), "--port", "0", "--keys", str(tmp_path / "k.json")]
    assert main([*base, "--workers", "2", "--pow-bits", "10"]) == 2
    assert "--pow-secret" in capsys.readouterr().err
    assert main([*base, "--pow-bits", "70"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--pow-bits" in err and "base_bits" in err and len(err.splitlines()) == 1


def test_risk_is_also_read_from_a_defence_dashboard() -> None:
    from encoderguard.api.proof_of_work import chain_risk

    class Dashboard:
        name = "dashboard-only"

        def dashboard_state(self) -> dict[str, Any]:
            return {"keys": {"abcd1234": {"risk": 0.5}, "ffff0000": {"group": "g"}}}

    risk = chain_risk([Dashboard(), FakeRisk()])
    assert risk is not None and risk("abcd1234") == 0.5 and risk("ffff0000") == 0.0
    assert chain_risk([object()]) is None
    pow_ = ProofOfWork(base_bits=4, extra_bits=4)
    pow_.bind_defences([Dashboard()])
    assert pow_.bits_for("abcd1234") == 6
