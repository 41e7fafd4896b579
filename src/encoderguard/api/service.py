"""The state behind the HTTP endpoints and their synchronous work (run in the thread pool): authentication with
failure limiting, admission (rate, quota) before and after decoding, embedding, charging, idempotent replays and
the bounded log of rejected requests.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from fastapi.responses import JSONResponse, Response

from encoderguard.api.auth_limiter import AuthFailureLimiter
from encoderguard.api.http_errors import error_response, quota_message
from encoderguard.api.keys import KeyRecord, KeyStore
from encoderguard.api.ledger import Idempotency, Ledger
from encoderguard.api.local_api import LocalAPI
from encoderguard.api.openai_text import (
    DEFAULT_MAX_INPUT_TOKENS,
    parse_text_request,
    render_answer,
    text_model_info,
)
from encoderguard.api.openai_text import model_name as served_model_name
from encoderguard.api.proof_of_work import Grant, ProofOfWork
from encoderguard.api.rate_limiter import RateLimiter
from encoderguard.api.rejection_log import RejectionLog
from encoderguard.api.wire_format import WIRE_DTYPES, decode_array, decode_png_files, encode_embeddings
from encoderguard.errors import APIError
from encoderguard.modality import TEXT, Batch, batch_len

REPLAY_HEADER = "Idempotent-Replayed"


def request_digest(body: bytes, encoding: str) -> str:
    """What an idempotency key is bound to: the body bytes and the answer encoding."""
    return hashlib.sha256(encoding.encode() + b"\n" + body).hexdigest()


@dataclass(frozen=True)
class DecodedRequest:
    """A request body decoded by its modality's wire format, and how that format writes the answer.

    Attributes:
        batch: the inputs (images ``[N, C, H, W]`` or ``N`` texts).
        digest: hex SHA-256 of the inputs (the ledger row's ``input_sha256``).
        tokens: the texts' tokens (0 for images), charged with the row.
        render: defended answers ``[N, D]`` -> the answer's JSON fields (run before charging: it may fail).
        house_fields: add ``queries_remaining`` and ``request_id`` to the answer (encoderguard's format; OpenAI's
            has neither).
    """

    batch: Batch
    digest: str
    tokens: int
    render: Callable[[torch.Tensor], dict[str, Any]]
    house_fields: bool = True


class EmbeddingService:
    """Everything the endpoints share.

    Args:
        api: the in-process API doing the work (encoder and defences).
        keys: the keys file.
        ledger: the ledger.
        max_batch: most images per request.
        max_body_bytes: largest request body.
        auth_limiter: failure limiting of authentication.
        rejection_rows_per_minute: see :class:`~encoderguard.api.rejection_log.RejectionLog`.
        idempotency_ttl: seconds a stored answer can be replayed.
        idempotency_max_per_key: most stored answers per key.
        body_idle_timeout: seconds the body reader waits for the next part of a body.
        body_total_timeout: seconds the body reader waits for a whole body.
        auth_tarpit: seconds an over-the-limit failed authentication waits before its 429.
        max_input_tokens: most tokens per text (text sources; the encoder's tokenizer counts).
        model_name: the model name a text server answers with (default: from the encoder).
        proof_of_work: the proof-of-work pricing of requests (``None``: none asked for).
    """

    def __init__(
        self,
        api: LocalAPI,
        keys: KeyStore,
        ledger: Ledger,
        *,
        max_batch: int,
        max_body_bytes: int,
        auth_limiter: AuthFailureLimiter,
        rejection_rows_per_minute: int = 60,
        idempotency_ttl: float = 86_400.0,
        idempotency_max_per_key: int = 1024,
        body_idle_timeout: float = 10.0,
        body_total_timeout: float = 60.0,
        auth_tarpit: float = 1.0,
        proof_of_work: ProofOfWork | None = None,
        max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
        model_name: str | None = None,
    ) -> None:
        if isinstance(max_input_tokens, bool) or not isinstance(max_input_tokens, int) or max_input_tokens < 1:
            raise ValueError(f"max_input_tokens must be a positive int, got {max_input_tokens!r}")
        self.api, self.keys, self.ledger = api, keys, ledger
        self.max_input_tokens = max_input_tokens
        self.model_name = model_name or served_model_name(api)
        self.unit = "texts" if api.modality == TEXT else "images"  # what quotas and rates count, in messages
        self.limiter = RateLimiter()
        self.auth_limiter = auth_limiter
        self.rejections = RejectionLog(ledger, rows_per_minute=rejection_rows_per_minute)
        self.max_batch, self.max_body_bytes = max_batch, max_body_bytes
        self.idempotency_ttl = float(idempotency_ttl)
        self.idempotency_max_per_key = int(idempotency_max_per_key)
        self.body_idle_timeout, self.body_total_timeout = float(body_idle_timeout), float(body_total_timeout)
        self.auth_tarpit = float(auth_tarpit)
        self.monitor: Any = None  # metrics and alerts (api/usage_monitor.py), set by create_app
        self.proof_of_work = proof_of_work

    # -- authentication ----------------------------------------------------------------------------------------
    def authenticate(self, key: str | None, problem: str | None, address: str) -> KeyRecord | JSONResponse:
        """The key's record, or the 401/429 answer. Every failure costs the same (one keyed hash)."""
        try:
            if problem is not None:
                raise APIError(problem, status=401)
            return self.keys.authenticate(key)
        except APIError as exc:
            key_id = key.split("_")[1][:8] if key and key.count("_") >= 2 else None
            wait = self.auth_limiter.failure(key_id=key_id, address=address)
            if wait > 0:
                return error_response(
                    429,
                    f"too many failed authentications; retry after {wait:.1f} s ({exc})",
                    code="too_many_auth_failures",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                    extra={"retry_after": round(wait, 3)},
                )
            return error_response(401, str(exc), headers={"WWW-Authenticate": "Bearer"})

    # -- admission ---------------------------------------------------------------------------------------------
    def reject(
        self,
        record: KeyRecord,
        digest: str,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> JSONResponse:
        """Log a rejected request (bounded, charging nothing) and build its error response."""
        request_id = self.rejections.record(
            key_id=record.key_id, name=record.name, digest=digest, status=status, reason=message
        )
        more = {"request_id": request_id} if request_id is not None else {}
        if self.monitor is not None:
            self.monitor.rejected(record, status, code)
        return error_response(status, message, code=code, headers=headers, extra={**more, **(extra or {})})

    def pre_admit(self, record: KeyRecord) -> JSONResponse | None:
        """Refuse, before the body is read, a key whose quota is spent or whose rate bucket is empty."""
        if record.quota is not None and self.ledger.used(record.key_id) >= record.quota:
            return self.reject(
                record, "", 429, quota_message(1, 0, record.quota, unit=self.unit), code="quota_exceeded",
                extra={"queries_remaining": 0},
            )
        wait = self.limiter.wait(record.key_id, 1, record.rate)
        if wait > 0:
            return self._rate_limited(record, "", wait)
        return None

    def _rate_limited(self, record: KeyRecord, digest: str, wait: float) -> JSONResponse:
        return self.reject(
            record,
            digest,
            429,
            f"rate limit of {record.rate:g} {self.unit}/s exceeded; retry after {wait:.3f} s",
            code="rate_limited",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
            extra={"retry_after": round(wait, 3)},
        )

    def replay_stored(
        self, record: KeyRecord, key: str, digest: str, stored: tuple[str, bytes]
    ) -> Response:
        """The stored answer if its request matched ``digest`` (charging nothing), else 422."""
        if stored[0] != digest:
            return self.reject(
                record,
                digest,
                422,
                f"Idempotency-Key {key!r} was used for a different request (body or encoding); use a new key",
                code="idempotency_conflict",
            )
        request_id = json.loads(stored[1]).get("request_id", "")
        return Response(
            stored[1],
            media_type="application/json",
            headers={"X-Request-Id": str(request_id), REPLAY_HEADER: "true"},
        )

    # -- the work ----------------------------------------------------------------------------------------------
    def embed(
        self,
        record: KeyRecord,
        body: bytes,
        files: list[tuple[str, bytes]] | None,
        encoding: str,
        idempotency_key: str | None = None,
        *,
        pow_grant: Grant | None = None,
    ) -> Response:
        """Decode a request in this server's wire format, then admit, embed, charge and answer it.

        Only decoding and the answer's form depend on the modality (:meth:`decode`); rate limit, quota, defences,
        charging (inputs and tokens) and idempotent storage are the same for images and texts.
        """
        try:
            request = self.decode(body, files, encoding)
        except APIError as exc:
            param = getattr(exc, "param", None)
            return self.reject(record, hashlib.sha256(body).hexdigest(), exc.status or 400, str(exc),
                               code=getattr(exc, "code", None), extra={"param": param} if param else None)
        batch, digest, n = request.batch, request.digest, batch_len(request.batch)
        refused = pow_grant.refuse_batch(self, digest, n) if pow_grant is not None else None
        if refused is not None:  # the proof of work paid for fewer images than the batch holds
            return refused
        wait = self.limiter.acquire(record.key_id, n, record.rate)
        if wait > 0:
            return self._rate_limited(record, digest, wait)
        used = self.ledger.used(record.key_id) if record.quota is not None else 0
        if record.quota is not None and used + n > record.quota:
            remaining = max(record.quota - used, 0)
            return self.reject(
                record, digest, 429, quota_message(n, remaining, record.quota, unit=self.unit), code="quota_exceeded",
                extra={"queries_remaining": remaining},
            )
        try:
            embeddings = self.api.embed(batch, key=record.key_id)
        except APIError as exc:
            code = getattr(exc, "code", None)
            if code is None:  # the encoder or a defence broke its contract: a 500, as any bug
                raise
            # An answer source that could not answer (an upstream's 502/504): passed on, nothing charged.
            return self.reject(record, digest, exc.status or 502, str(exc), code=code)
        # Encode before charging: once the row is committed, nothing that can fail may stand before the 200.
        payload = request.render(embeddings)

        def answer(request_id: str, remaining: int | None) -> bytes:
            house = {"queries_remaining": remaining, "request_id": request_id} if request.house_fields else {}
            return json.dumps({**payload, **house}).encode()

        idempotency = None
        if idempotency_key is not None:
            idempotency = Idempotency(
                idempotency_key, request_digest(body, encoding), self.idempotency_ttl, self.idempotency_max_per_key
            )
        charge = self.ledger.charge(
            key_id=record.key_id, name=record.name, n=n, digest=digest, quota=record.quota,
            idempotency=idempotency, answer=answer, tokens=request.tokens,
        )
        if charge.stored is not None and idempotency is not None:  # a concurrent twin stored its answer first
            return self.replay_stored(record, idempotency.key, idempotency.request_sha256, charge.stored)
        if not charge.accepted:  # a concurrent request used the quota between the pre-check and now
            if self.monitor is not None:
                self.monitor.rejected(record, 429, "quota_exceeded")
            return error_response(
                429,
                quota_message(n, charge.remaining or 0, record.quota, unit=self.unit),
                code="quota_exceeded",
                extra={"request_id": charge.request_id, "queries_remaining": charge.remaining},
            )
        assert charge.answer is not None
        if self.monitor is not None:
            self.monitor.served(record, n, charge.used)
        return Response(charge.answer, media_type="application/json", headers={"X-Request-Id": charge.request_id})

    def decode(self, body: bytes, files: list[tuple[str, bytes]] | None, encoding: str) -> DecodedRequest:
        """A request body in this server's wire format: encoderguard's image arrays or PNG files, or OpenAI's
        text request (:mod:`encoderguard.api.openai_text`).

        Raises:
            APIError: the body breaks its format's contract (400/413/415/422).
        """
        if self.api.modality == TEXT:
            text = parse_text_request(body, files, api=self.api, max_batch=self.max_batch,
                                      max_input_tokens=self.max_input_tokens)
            return DecodedRequest(text.texts, text.digest, sum(text.tokens),
                                  lambda embeddings: render_answer(embeddings, text, self.model_name),
                                  house_fields=False)
        shape = self.api.input_shape
        assert shape is not None  # an image source has one
        if files is None:
            batch, raw = decode_array(body, input_shape=shape, max_batch=self.max_batch)
        else:
            batch = decode_png_files(files, input_shape=shape, max_batch=self.max_batch)
            raw = b"".join(content for _, content in files)
        return DecodedRequest(batch, hashlib.sha256(raw).hexdigest(), 0,
                              lambda embeddings: encode_embeddings(embeddings, encoding=encoding))

    def model_info(self, record: KeyRecord) -> dict[str, Any]:
        if self.api.modality == TEXT:
            return text_model_info(self, record)
        remaining = None if record.quota is None else max(record.quota - self.ledger.used(record.key_id), 0)
        return {
            "dim": self.api.dim,
            "input_shape": list(self.api.input_shape or ()),
            "input_dtypes": sorted(WIRE_DTYPES),
            "value_range": [0.0, 1.0],
            "request_formats": ["application/json", "multipart/form-data (PNG files in 'files')"],
            "response_encodings": ["base64", "list"],
            "max_batch": self.max_batch,
            "max_body_bytes": self.max_body_bytes,
            "key_id": record.key_id,
            "queries_remaining": remaining,
            "rate_limit_images_per_s": record.rate,
        }
