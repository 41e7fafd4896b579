"""Proof-of-work pricing: every answered image costs the caller hashing work that grows with its key's risk.

A challenge is stateless and signed: ``p1.<key_id>.<issued>.<expires>.<bits>.<images>.<nonce>.<sig>``, where ``sig``
is HMAC-SHA256 (server secret) over everything before it, in base64url without padding. Its solution is a
``counter`` in ``[0, 2**64)`` such that::

    int(sha256(challenge_ascii || counter.to_bytes(8, "big"))) < 2**(256 - bits) // images

that is, for one image, ``bits`` leading zero bits (hashcash); for ``images`` images the target is ``images`` times
smaller, so the expected work, ``2**bits * images`` hashes, is proportional to the batch and a thief's sweep pays
per image exactly as an honest user does. Verification is one HMAC and one SHA-256: O(1).

Difficulty: ``bits = base_bits + round(extra_bits * risk(key_id))`` with ``risk`` in ``[0, 1]`` from the defence
chain: the largest ``risk(key_id)`` of the defences that have such a method (e.g. a linked-key defence), else the
per-key ``risk`` of their ``dashboard_state()``; 0 when no defence scores risk. A challenge issued before the key's
risk rose is refused (428 with a fresh, harder challenge).

Protocol (``serve --pow-bits B``): ``POST /v1/embeddings`` without a valid ``X-PoW-Solution: <challenge>:<counter>``
header gets 428 ``pow_required`` with a fresh challenge in the JSON field ``challenge`` and the header
``X-PoW-Challenge``, before its body is read; nothing is charged (the rejection is logged like any other, at a bounded
rate). ``GET /v1/pow?images=N`` hands out a challenge for a batch of up to ``N`` images, and every 200 carries the next
challenge (same ``N``) in ``X-PoW-Challenge``, so a client in steady state pays no extra round trip. A malformed,
forged or wrongly solved solution is a 400 ``pow_invalid``; an expired or already used one, or one for fewer images
than the batch, a 428.

Replay protection: each challenge's nonce is accepted once, remembered until the challenge expires in a bounded
in-memory set. The set is per process: with ``serve --workers N`` (which also needs ``--pow-secret FILE`` so that
all workers sign with one secret) a solution can be spent once per worker, at most ``N`` times.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi.responses import JSONResponse, Response

    from encoderguard.api.keys import KeyRecord
    from encoderguard.api.service import EmbeddingService

logger = logging.getLogger(__name__)

CHALLENGE_HEADER = "X-PoW-Challenge"
SOLUTION_HEADER = "X-PoW-Solution"
POW_REQUIRED = "pow_required"
POW_INVALID = "pow_invalid"
VERSION = "p1"
MAX_BITS = 64  # per-image bits; 2**64 hashes is far beyond any client
_TOKEN_RE = re.compile(r"^p1\.([A-Za-z0-9_-]{1,64})\.(\d{1,12})\.(\d{1,12})\.(\d{1,2})\.(\d{1,7})\.([0-9a-f]{32})\."
                       r"([A-Za-z0-9_-]{43})$")
_COUNTER_RE = re.compile(r"^\d{1,20}$")
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# -- the puzzle: pure functions ----------------------------------------------------------------------------------
def pow_target(bits: int, images: int = 1) -> int:
    """The bound a solution's hash (as a big-endian integer) must stay under: ``2**(256 - bits) // images``.

    Args:
        bits: per-image difficulty in ``[0, 64]``.
        images: images the solution pays for (>= 1).
    """
    return (1 << (256 - int(bits))) // max(int(images), 1)


def expected_hashes(bits: int, images: int = 1) -> float:
    """Expected hashes to solve a challenge: ``2**256 / target``, about ``2**bits * images``."""
    return float(2**256 / max(pow_target(bits, images), 1))


def pow_digest(challenge: str, counter: int) -> bytes:
    """``sha256(challenge_ascii || counter as 8 big-endian bytes)``."""
    return hashlib.sha256(challenge.encode("ascii") + int(counter).to_bytes(8, "big")).digest()


def check_solution(challenge: str, counter: int, bits: int, images: int = 1) -> bool:
    """Whether ``counter`` solves ``challenge`` at ``bits`` per image for ``images`` images (one hash)."""
    if not 0 <= int(counter) < 2**64:
        return False
    return int.from_bytes(pow_digest(challenge, counter), "big") < pow_target(bits, images)


def solve(challenge: str, bits: int, images: int = 1, *, start: int = 0) -> tuple[int, int]:
    """Find the smallest counter ``>= start`` that solves ``challenge``.

    The loop hashes the challenge once and copies that state for each counter (``hashlib``'s C code does the
    compression; a challenge is longer than one 64-byte SHA-256 block, so the copy saves a block per try) and
    compares digests as bytes against the target's 32 big-endian bytes, which orders them as integers.

    Args:
        challenge: the challenge string.
        bits: per-image difficulty.
        images: images paid for.
        start: first counter tried.

    Returns:
        ``(counter, hashes tried)``.
    """
    target = pow_target(bits, images)
    if target >= 1 << 256:
        return start, 1
    bound = target.to_bytes(32, "big")
    copy = hashlib.sha256(challenge.encode("ascii")).copy
    counter = start
    while True:
        h = copy()
        h.update(counter.to_bytes(8, "big"))
        if h.digest() < bound:
            return counter, counter - start + 1
        counter += 1


def difficulty_bits(base_bits: int, extra_bits: int, risk: float) -> int:
    """``base_bits + round(extra_bits * risk)`` with ``risk`` clipped to ``[0, 1]`` (NaN counts as 1)."""
    r = 1.0 if math.isnan(risk) else min(max(float(risk), 0.0), 1.0)
    return int(base_bits) + int(round(int(extra_bits) * r))


# -- challenges --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Challenge:
    """A parsed challenge (its signature is checked by :meth:`ProofOfWork.verify`, not here).

    Attributes:
        token: the challenge string, as sent.
        key_id: the key it was issued to.
        issued: Unix time of issue (seconds).
        expires: Unix time after which it is refused.
        bits: per-image difficulty.
        images: most images a solution pays for.
        nonce: 32 hex characters, unique per challenge.
    """

    token: str
    key_id: str
    issued: int
    expires: int
    bits: int
    images: int
    nonce: str

    @classmethod
    def parse(cls, token: str) -> Challenge:
        """Parse a challenge string.

        Raises:
            ValueError: if it is not one.
        """
        match = _TOKEN_RE.match(token) if isinstance(token, str) else None
        if match is None:
            raise ValueError("malformed proof-of-work challenge")
        key_id, issued, expires, bits, images, nonce, _ = match.groups()
        return cls(token, key_id, int(issued), int(expires), int(bits), int(images), nonce)

    @property
    def lifetime(self) -> int:
        """Seconds between issue and expiry."""
        return self.expires - self.issued

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of ``GET /v1/pow`` and of a 428's ``challenge`` field."""
        return {
            "challenge": self.token, "algorithm": "sha256", "bits": self.bits, "images": self.images,
            "issued": self.issued, "expires": self.expires, "target": format(pow_target(self.bits, self.images), "x"),
            "solution_header": SOLUTION_HEADER, "solution_format": "<challenge>:<counter>",
        }


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a solution header.

    Attributes:
        ok: it pays for up to ``images`` images.
        status: 428 (ask for a fresh solution) or 400 (malformed, forged, wrong) when not ok; 200 when ok.
        reason: why it was refused ("" when ok).
        images: images paid for (0 when not ok).
        bits: the solved challenge's per-image bits (0 when not ok).
    """

    ok: bool
    status: int
    reason: str = ""
    images: int = 0
    bits: int = 0


class _ReplayGuard:
    """Nonces of spent challenges until their expiry, at most ``capacity`` of them (per process)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._spent: OrderedDict[str, int] = OrderedDict()  # nonce -> expiry, in order of spending

    def spend(self, nonce: str, expires: int, now: float) -> bool:
        """Mark ``nonce`` spent; ``False`` if it already was."""
        with self._lock:
            while self._spent:  # challenges share one lifetime, so spending order is about expiry order
                oldest, until = next(iter(self._spent.items()))
                if until >= now:
                    break
                del self._spent[oldest]
            if nonce in self._spent:
                return False
            if len(self._spent) >= self.capacity:
                # Each entry cost a solved puzzle, so filling the set is expensive; still, say so.
                logger.warning("proof-of-work replay set full (%d unexpired challenges); forgetting the oldest",
                               self.capacity)
                self._spent.popitem(last=False)
            self._spent[nonce] = expires
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._spent)


def load_secret(path: str | Path, *, create: bool = True) -> bytes:
    """The server secret in ``path`` (hex, >= 16 bytes), created (32 random bytes, mode 0600) if missing.

    Creation is exclusive, so the worker processes of ``serve --workers N`` starting at once all read one secret.

    Raises:
        ValueError: if the file is not a hex secret of at least 16 bytes, or is missing and ``create`` is false.
    """
    p = Path(path)
    if not p.exists():
        if not create:
            raise ValueError(f"proof-of-work secret file not found: {p}")
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
    try:
        secret = bytes.fromhex(p.read_text().strip())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"proof-of-work secret file {p} is not a hex secret ({exc})") from None
    if len(secret) < 16:
        raise ValueError(f"proof-of-work secret file {p} holds {len(secret)} bytes; at least 16 are needed")
    return secret


class _DashboardRisk:
    """``key_id -> risk`` read from a defence's ``dashboard_state()["keys"][key_id]["risk"]`` (the shape the
    server's usage monitor reads), refreshed at most every ``ttl`` seconds."""

    def __init__(self, defence: Any, *, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.defence, self.ttl, self._clock = defence, ttl, clock
        self._lock = threading.Lock()
        self._at = -math.inf
        self._scores: dict[str, float] = {}

    def __call__(self, key_id: str) -> float:
        with self._lock:
            if self._clock() - self._at >= self.ttl:
                keys = self.defence.dashboard_state().get("keys", {})
                self._scores = {str(k): float(v["risk"]) for k, v in keys.items()
                                if isinstance(v, dict) and isinstance(v.get("risk"), (int, float))
                                and not isinstance(v.get("risk"), bool)}
                self._at = self._clock()
            return self._scores.get(key_id, 0.0)


def chain_risk(chain: Sequence[Any]) -> Callable[[str], float] | None:
    """The risk provider of a defence chain, or ``None`` when no defence scores risk: the largest risk over its
    defences, each read from a ``risk(key_id)`` method or, failing that, from the per-key ``risk`` of its
    ``dashboard_state()`` (cached for a second)."""
    providers: list[Callable[[str], float]] = []
    for d in chain:
        if callable(getattr(d, "risk", None)):
            providers.append(d.risk)
        elif callable(getattr(d, "dashboard_state", None)):
            providers.append(_DashboardRisk(d))
    if not providers:
        return None

    def risk(key_id: str) -> float:
        return max(float(p(key_id)) for p in providers)

    return risk


class ProofOfWork:
    """Issues and checks the proof-of-work challenges of one server process.

    Args:
        base_bits: per-image difficulty of a key with risk 0 (``2**base_bits`` hashes per image on average).
        extra_bits: bits added at risk 1 (``round(extra_bits * risk)`` in between).
        ttl: seconds a challenge stays valid.
        secret: HMAC secret (>= 16 bytes); default: 32 random bytes drawn now (challenges then die with the
            process; share one with :func:`load_secret` across workers).
        risk: ``key_id -> risk in [0, 1]``; default: from the defence chain (:meth:`bind_defences`), else 0.
        max_images: most images one challenge may pay for (the server's largest batch).
        replay_capacity: most unexpired spent challenges remembered (see the module docstring).
        clock: wall clock in seconds (injectable for tests).

    Raises:
        ValueError: for a bad setting (quoting it).
    """

    def __init__(
        self,
        *,
        base_bits: int,
        extra_bits: int = 8,
        ttl: float = 300.0,
        secret: bytes | None = None,
        risk: Callable[[str], float] | None = None,
        max_images: int = 1024,
        replay_capacity: int = 1_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (("base_bits", base_bits), ("extra_bits", extra_bits)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BITS:
                raise ValueError(f"{name} must be an int in [0, {MAX_BITS}], got {value!r}")
        if base_bits + extra_bits > MAX_BITS:
            raise ValueError(f"base_bits + extra_bits must be <= {MAX_BITS}, got {base_bits} + {extra_bits}")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 1 <= ttl <= 86_400:
            raise ValueError(f"ttl must be a number of seconds in [1, 86400], got {ttl!r}")
        if secret is not None and (not isinstance(secret, bytes) or len(secret) < 16):
            raise ValueError("secret must be at least 16 bytes")
        for name, value in (("max_images", max_images), ("replay_capacity", replay_capacity)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if max_images > 9_999_999:
            raise ValueError(f"max_images must be < 10**7, got {max_images!r}")
        self.base_bits, self.extra_bits, self.ttl = base_bits, extra_bits, float(ttl)
        self.max_images = max_images
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._risk = risk
        self._clock = clock
        self._replays = _ReplayGuard(replay_capacity)

    def bind_defences(self, chain: Sequence[Any]) -> None:
        """Take the risk from ``chain`` (see :func:`chain_risk`) unless a provider was given."""
        if self._risk is None:
            self._risk = chain_risk(chain)

    # -- difficulty ----------------------------------------------------------------------------------------------
    def risk(self, key_id: str) -> float:
        """The key's risk in ``[0, 1]`` (0 without a provider; a provider that fails counts as 0, logged, so that a
        broken defence does not price every honest user out)."""
        if self._risk is None:
            return 0.0
        try:
            value = float(self._risk(key_id))
        except Exception:
            logger.exception("risk provider failed for key %s; pricing it at risk 0", key_id)
            return 0.0
        return 1.0 if math.isnan(value) else min(max(value, 0.0), 1.0)

    def bits_for(self, key_id: str) -> int:
        """Per-image difficulty of ``key_id`` now."""
        return difficulty_bits(self.base_bits, self.extra_bits, self.risk(key_id))

    # -- challenges ----------------------------------------------------------------------------------------------
    def issue(self, key_id: str, images: int = 1) -> Challenge:
        """A fresh challenge for ``key_id`` paying for up to ``images`` images.

        Raises:
            ValueError: for a key id with characters outside ``[A-Za-z0-9_-]`` or ``images`` outside
                ``[1, max_images]``.
        """
        if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
            raise ValueError(f"key id {key_id!r} cannot be put in a challenge")
        if isinstance(images, bool) or not isinstance(images, int) or not 1 <= images <= self.max_images:
            raise ValueError(f"images must be an int in [1, {self.max_images}], got {images!r}")
        now = int(self._clock())
        payload = (f"{VERSION}.{key_id}.{now}.{now + int(math.ceil(self.ttl))}.{self.bits_for(key_id)}.{images}."
                   f"{secrets.token_hex(16)}")
        return Challenge.parse(f"{payload}.{self._sign(payload)}")

    def verify(self, header: str | None, key_id: str) -> Verdict:
        """Check an ``X-PoW-Solution`` header of ``key_id`` and spend its challenge when it is good.

        Checks, in order: present (428), well-formed (400), signed by this server (400), issued to this key (400),
        not expired (428), solved (400), as hard as the key's difficulty now (428), not spent before (428).
        """
        if header is None or not header.strip():
            return Verdict(False, 428, "this server requires proof of work: solve the challenge and send "
                                       f"{SOLUTION_HEADER}: <challenge>:<counter>")
        token, sep, counter_text = header.strip().rpartition(":")
        if not sep or not _COUNTER_RE.match(counter_text):
            return Verdict(False, 400, f"malformed {SOLUTION_HEADER}; send <challenge>:<counter>")
        try:
            challenge = Challenge.parse(token)
        except ValueError:
            return Verdict(False, 400, f"malformed challenge in {SOLUTION_HEADER}")
        payload, _, sig = token.rpartition(".")
        if not hmac.compare_digest(sig, self._sign(payload)):
            return Verdict(False, 400, "the proof-of-work challenge was not issued by this server (bad signature)")
        if not hmac.compare_digest(challenge.key_id, key_id):
            return Verdict(False, 400, "the proof-of-work challenge was issued to another key")
        now = self._clock()
        if challenge.expires < now:
            return Verdict(False, 428, "the proof-of-work challenge has expired; solve the new one")
        counter = int(counter_text)
        if not check_solution(token, counter, challenge.bits, challenge.images):
            return Verdict(False, 400, "the counter does not solve the proof-of-work challenge")
        needed = self.bits_for(key_id)
        if challenge.bits < needed:
            return Verdict(False, 428, f"this key's difficulty has risen to {needed} bits since the challenge was "
                                       "issued; solve the new one")
        if not self._replays.spend(challenge.nonce, challenge.expires, now):
            return Verdict(False, 428, "the proof-of-work challenge was already used; solve the new one")
        return Verdict(True, 200, images=challenge.images, bits=challenge.bits)

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")

    # -- the server's side of the protocol (needs the server extra) ----------------------------------------------
    def required(
        self, service: EmbeddingService, record: KeyRecord, reason: str, *, status: int = 428, images: int = 1,
        digest: str = "",
    ) -> JSONResponse:
        """The refusal (428 ``pow_required`` with a fresh challenge, or 400 ``pow_invalid``), logged like any
        rejection (bounded rows, nothing charged)."""
        if status != 428:
            return service.reject(record, digest, status, reason, code=POW_INVALID)
        challenge = self.issue(record.key_id, min(max(images, 1), self.max_images))
        return service.reject(record, digest, 428, reason, code=POW_REQUIRED,
                              headers={CHALLENGE_HEADER: challenge.token}, extra={"challenge": challenge.to_dict()})

    def admit(self, service: EmbeddingService, record: KeyRecord, headers: Mapping[str, str]) -> Grant | JSONResponse:
        """Check a request's solution before its body is read: a :class:`Grant`, or the refusal to send."""
        verdict = self.verify(headers.get(SOLUTION_HEADER.lower()), record.key_id)
        if not verdict.ok:
            return self.required(service, record, verdict.reason, status=verdict.status, images=_images_hint(headers))
        return Grant(self, record, verdict.images)

    def challenge_answer(self, record: KeyRecord, images: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        """``GET /v1/pow``: ``(status, JSON, headers)``; ``images`` is the query parameter (default 1)."""
        try:
            n = 1 if images is None else int(images)
        except ValueError:
            n = 0
        if not 1 <= n <= self.max_images:
            return 422, {"detail": f"images must be an integer in [1, {self.max_images}], got {images!r}",
                         "code": "invalid_input"}, {}
        challenge = self.issue(record.key_id, n)
        return 200, challenge.to_dict(), {CHALLENGE_HEADER: challenge.token}


def _images_hint(headers: Mapping[str, str]) -> int:
    """The batch size a refused request's solution claimed (so that the fresh challenge covers it), else 1."""
    token = headers.get(SOLUTION_HEADER.lower(), "").rpartition(":")[0]
    try:
        return Challenge.parse(token).images
    except ValueError:
        return 1


@dataclass
class Grant:
    """A spent, valid solution: what one request has paid for."""

    pow: ProofOfWork
    record: KeyRecord
    images: int

    def refuse_batch(self, service: EmbeddingService, digest: str, n: int) -> JSONResponse | None:
        """428 when the decoded batch of ``n`` images is larger than what was paid for, else ``None``."""
        if n <= self.images:
            return None
        return self.pow.required(
            service, self.record, f"the proof of work paid for {self.images} images, the batch has {n}; solve the "
            f"new challenge for {n}", images=n, digest=digest,
        )

    def renew(self, response: Response) -> Response:
        """Attach the next challenge (same batch size) to a 200, saving the client a round trip."""
        if response.status_code == 200:
            response.headers[CHALLENGE_HEADER] = self.pow.issue(self.record.key_id, self.images).token
        return response
