"""schemathesis against a live server on 127.0.0.1: whatever the generated requests, the server never answers 5xx,
every status, content type and body is the one its OpenAPI schema declares, and schema-violating requests are
refused. A bounded example count keeps it to well under a minute."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import TEST_KDF_N, TinyEncoder

from encoderguard.api.keys import KeyStore

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
unsatisfiable = pytest.importorskip("hypothesis.errors").Unsatisfiable
pytest.importorskip("uvicorn")

MAX_EXAMPLES = 40
# The refusals a schema-valid request can still get: what JSON Schema cannot express (the byte length of 'data'
# given 'shape' and 'dtype', float values in [0, 1], the pixels of a PNG).
DATA_PROBLEMS = ("invalid base64 in data", "data holds", "input values must lie", "inputs contain",
                 "corrupt or unreadable PNG", "file ", "PNG ")


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from encoderguard.api.server import background_server, create_app

    root: Path = tmp_path_factory.mktemp("schemathesis")
    store = KeyStore(root / "keys.json", kdf_n=TEST_KDF_N)
    _, key = store.add(name="fuzzer")
    # a small batch limit keeps generated batches cheap; failure limiting is set high so that the fuzzer's many
    # unauthenticated requests exercise the 401 path, not the 429 one (both are declared)
    app = create_app(TinyEncoder(), keys_path=store.path, ledger_path=root / "ledger.sqlite", max_batch=8,
                     synchronous="NORMAL", auth_failures=100_000)
    with background_server(app) as url:
        yield {"schema": schemathesis.openapi.from_url(f"{url}/openapi.json"), "url": url, "key": key}


def _operations(schema: Any) -> list[Any]:
    operations = []
    for result in schema.get_all_operations():
        operations.append(result.ok())
    return operations


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_the_server_keeps_its_openapi_contract(live_api: dict[str, Any], mode: str) -> None:
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    schema = live_api["schema"]
    operations = _operations(schema)
    assert {op.label for op in operations} >= {"POST /v1/embeddings", "GET /v1/model", "GET /health"}
    failures: list[str] = []
    for operation in operations:
        strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))

        @hypothesis.given(case=strategy)
        @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def check(case: Any) -> None:
            # Authenticated, so that the cases reach the body checks. positive_data_acceptance is left out: the
            # byte length of 'data' must equal the product of 'shape' times the dtype's size, which JSON Schema
            # cannot state, so a schema-valid body is usually still refused (422, a declared answer).
            headers = dict(case.headers or {})
            if mode == "positive" or "Authorization" not in headers:  # negative cases keep their broken auth
                headers["Authorization"] = f"Bearer {live_api['key']}"
            response = case.call_and_validate(base_url=live_api["url"], headers=headers,
                                              excluded_checks=[positive_data_acceptance])
            if mode == "positive" and 400 <= response.status_code < 500:
                # what the schema can say, it says: a schema-valid request is refused only for its bytes
                detail = response.json()["detail"]
                assert detail.startswith(DATA_PROBLEMS), f"schema-valid request refused: {detail}"

        try:
            check()
        except unsatisfiable:  # nothing to negate (GET /health has no parameters)
            assert mode == "negative"
        except Exception as exc:  # collect every operation's first failure, then report them together
            failures.append(f"{operation.label}: {exc}"[:3000])
    assert not failures, "\n\n".join(failures)
