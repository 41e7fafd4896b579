"""The secret key of the serving-time watermark: one JSON file (mode 0600) that holds everything verification needs.

The key holds 32 random bytes from the operating system, from which the watermark's secret directions are derived
(HMAC-SHA256 per purpose), and the public facts the watermark and its verification depend on: the answer size, the
centre of the owner's answers (so that the secret regions split them evenly), the strength, the data spec of the
probe inputs and how many of them verification sends. A key calibrated on the owner's encoder
(:meth:`OutputWatermarkKey.calibrate`) also stores the owner's clean answers to the probe and alignment inputs, so
that a suspect can be verified with the key alone, long after the encoder changed. Never pickle: the file is JSON,
the arrays base64 float32.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoderguard.errors import CheckpointError

KEY_FORMAT = "encoderguard-output-watermark-key"
METHOD = "region-shift"
VERSION = 1
SECRET_BYTES = 32
DEFAULT_STRENGTH = 0.2
DEFAULT_PROBES = 1000
DEFAULT_ALIGN = 2000
BASIS_SIZE = 32  # principal directions of the owner's answers the secret directions are drawn from


@dataclass(frozen=True)
class OutputWatermarkKey:
    """A serving-time watermark key.

    Attributes:
        secret: 32 secret bytes.
        dim: size ``D`` of the answers it marks (``None``: any size; the directions are derived per size).
        strength: the shift's size relative to the answer's distance from ``center`` (``0 < strength <= 1``).
        data: the :class:`~encoderguard.data.SplitSpec` (as a dict) of the pool the probe and alignment inputs are
            drawn from, or ``None`` (then verification must be given its inputs).
        probes: probe inputs verification sends (their answers are scored).
        align: alignment inputs verification sends (their answers fit the map into the owner's space).
        center: ``[D]`` centre of the owner's clean answers, or ``None`` (the origin).
        owner_probe: ``[probes, D]`` the owner's clean answers to the probe inputs (``None``: not calibrated).
        owner_align: ``[align, D]`` the owner's clean answers to the alignment inputs.
        version: the method's version.

    Raises:
        ValueError: a setting out of range (quoted).
    """

    secret: bytes = field(repr=False)
    dim: int | None = None
    strength: float = DEFAULT_STRENGTH
    data: dict[str, Any] | None = None
    probes: int = DEFAULT_PROBES
    align: int = DEFAULT_ALIGN
    center: np.ndarray | None = field(default=None, repr=False, compare=False)
    owner_probe: np.ndarray | None = field(default=None, repr=False, compare=False)
    owner_align: np.ndarray | None = field(default=None, repr=False, compare=False)
    spread: float | None = None
    basis: np.ndarray | None = field(default=None, repr=False, compare=False)
    version: int = VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != SECRET_BYTES:
            raise ValueError(f"a watermark secret is {SECRET_BYTES} bytes, got "
                             f"{len(self.secret) if isinstance(self.secret, bytes) else type(self.secret).__name__}")
        if self.dim is not None and (isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 3):
            raise ValueError(f"dim must be an integer >= 3 (or None), got {self.dim!r}")
        if not (isinstance(self.strength, (int, float)) and math.isfinite(self.strength)
                and 0 < self.strength <= 1):
            raise ValueError(f"strength must be in (0, 1], got {self.strength!r}")
        for name, value, low in (("probes", self.probes, 10), ("align", self.align, 10)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.spread is not None and not (isinstance(self.spread, (int, float)) and math.isfinite(self.spread)
                                            and self.spread > 0):
            raise ValueError(f"spread must be a positive number (or None), got {self.spread!r}")
        if self.version != VERSION:
            raise ValueError(f"unsupported watermark key version {self.version!r} (this build reads {VERSION})")
        if self.basis is not None and (self.dim is None or self.basis.ndim != 2 or self.basis.shape[0] != self.dim
                                       or self.basis.shape[1] < 3 or not np.isfinite(self.basis).all()):
            raise ValueError(f"basis must be a finite [dim, k >= 3] array, got {getattr(self.basis, 'shape', None)}")
        for name, arr, rows in (("center", self.center, None), ("owner_probe", self.owner_probe, self.probes),
                                ("owner_align", self.owner_align, self.align)):
            if arr is None:
                continue
            expected = (self.dim,) if rows is None else (rows, self.dim)
            if self.dim is None or arr.shape != expected or not np.isfinite(arr).all():
                raise ValueError(f"{name} must be a finite array of shape {expected}, got "
                                 f"{getattr(arr, 'shape', None)}")

    def __repr__(self) -> str:  # never print the secret
        return (f"OutputWatermarkKey(fingerprint={self.fingerprint}, dim={self.dim}, strength={self.strength}, "
                f"calibrated={self.calibrated})")

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def generate(cls, *, dim: int | None = None, strength: float = DEFAULT_STRENGTH,
                 data: dict[str, Any] | None = None, probes: int = DEFAULT_PROBES,
                 align: int = DEFAULT_ALIGN) -> OutputWatermarkKey:
        """A fresh key from the operating system's random source (not yet calibrated on an encoder)."""
        return cls(secrets.token_bytes(SECRET_BYTES), dim=dim, strength=strength, data=data, probes=probes,
                   align=align)

    def calibrate(self, owner: Any, pool: Any) -> OutputWatermarkKey:
        """This key with the owner's clean answers stored: the centre, the probe and alignment answers.

        Args:
            owner: the owner's clean encoder as an EmbeddingAPI (``.embed``) or ``nn.Module`` (image or text).
            pool: the probe pool: an :class:`~encoderguard.data.ImageSet`, a float tensor ``[P, ...]``, a
                :class:`~encoderguard.data.TextSet` or a list of ``P`` strings.

        Raises:
            ValueError: the pool is too small, or the answers' size differs from the key's ``dim``.
        """
        from encoderguard.modality import batch_len

        probe_idx, align_idx = self.draw(len(pool))
        inputs = pool_inputs(pool, np.concatenate([probe_idx, align_idx]))
        n_inputs = batch_len(inputs)
        if hasattr(owner, "embed"):
            raw = owner.embed(inputs)
        else:
            from encoderguard.models.probe import encode

            raw = encode(owner, inputs)
        answers = np.asarray(raw.detach().cpu() if isinstance(raw, torch.Tensor) else raw, dtype=np.float64)
        if answers.ndim != 2 or answers.shape[0] != n_inputs or not np.isfinite(answers).all():
            raise ValueError(f"the owner's encoder answered an array of shape {list(answers.shape)} (or non-finite "
                             f"values) for {n_inputs} inputs")
        dim = int(answers.shape[1])
        if self.dim is not None and dim != self.dim:
            raise ValueError(f"the owner's encoder answers {dim}-d vectors but the key is for {self.dim}-d ones")
        owner_probe, owner_align = answers[: self.probes], answers[self.probes:]
        center = owner_align.mean(0)
        _, sv, vt = np.linalg.svd(owner_align - center, full_matrices=False)
        k = max(3, min(BASIS_SIZE, dim, len(owner_align) - 1))
        basis = (vt[:k].T * (sv[:k] / math.sqrt(max(len(owner_align) - 1, 1)))).astype(np.float32)
        u1 = replace(self, dim=dim, basis=basis).directions(dim)[0]
        rel = ((owner_align - center) @ u1) / np.maximum(np.linalg.norm(owner_align - center, axis=1), 1e-12)
        return replace(self, dim=dim, center=center.astype(np.float32), spread=float(rel.std()), basis=basis,
                       owner_probe=owner_probe.astype(np.float32), owner_align=owner_align.astype(np.float32))

    def spread_for(self, dim: int) -> float:
        """The sd of ``<y - c, u1> / ||y - c||`` over the owner's answers (``1 / sqrt(dim)`` if not calibrated)."""
        return float(self.spread) if self.spread is not None else 1.0 / math.sqrt(dim)

    # -- secrets ------------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """16 hex digits identifying the key (safe to publish)."""
        return hashlib.sha256(b"encoderguard-output-watermark" + self.secret).hexdigest()[:16]

    @property
    def calibrated(self) -> bool:
        """Whether the owner's clean answers are stored (verification then needs no access to the owner)."""
        return self.owner_probe is not None and self.owner_align is not None

    def seed(self, purpose: str) -> int:
        """A 63-bit seed for one use of the secret."""
        digest = hmac.new(self.secret, purpose.encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") & (2**63 - 1)

    def directions(self, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Three orthonormal float64 ``[dim]`` directions: the two region normals ``u1, u2`` and the shift ``t``.

        A calibrated key draws them from the span of the owner's main principal directions, each weighted by its
        standard deviation (directions along which the owner's answers vary, so that the regions split them and a
        map fitted between two encoders is well determined along ``t``); otherwise uniformly at random.
        """
        rng = np.random.default_rng(self.seed(f"directions:{dim}"))
        if self.basis is not None and self.basis.shape[0] == dim:
            raw = self.basis.astype(np.float64) @ rng.standard_normal((self.basis.shape[1], 3))
        else:
            raw = rng.standard_normal((dim, 3))
        q, r = np.linalg.qr(raw)
        q = q * np.sign(np.diag(r))
        return q[:, 0], q[:, 1], q[:, 2]

    def draw(self, pool_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the probe and of the alignment inputs in a pool of ``pool_size`` (disjoint, secret order).

        Raises:
            ValueError: the pool holds fewer than ``probes + align`` inputs.
        """
        need = self.probes + self.align
        if pool_size < need:
            raise ValueError(f"the probe pool has {pool_size} inputs; the key needs {self.probes} probes + "
                             f"{self.align} alignment inputs = {need} (make a key with fewer --probes)")
        order = np.random.default_rng(self.seed("inputs")).permutation(pool_size)
        return order[: self.probes], order[self.probes: need]

    # -- files --------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": KEY_FORMAT, "method": METHOD, "version": self.version, "spread": self.spread,
                "secret": self.secret.hex(), "fingerprint": self.fingerprint, "dim": self.dim,
                "strength": self.strength, "data": self.data, "probes": self.probes, "align": self.align,
                "center": _encode(self.center), "basis": _encode(self.basis),
                "owner_probe": _encode(self.owner_probe),
                "owner_align": _encode(self.owner_align)}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the key as JSON, readable by its owner only (0600); never replaces an existing file.

        Raises:
            FileExistsError: ``path`` exists (replacing a key would orphan every answer marked with it).
        """
        target = Path(path)
        if target.exists():
            raise FileExistsError(f"{target} already exists; refusing to replace a watermark key (choose another "
                                  "--out, or move the old key away if you really mean to retire it)")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write((json.dumps(self.to_dict(), indent=1) + "\n").encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, target)  # fails if the target appeared meanwhile: never overwrites
        except FileExistsError:
            raise FileExistsError(f"{target} already exists; refusing to replace a watermark key") from None
        finally:
            tmp.unlink(missing_ok=True)
        os.chmod(target, 0o600)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OutputWatermarkKey:
        """Read a key written by :meth:`save`.

        Raises:
            CheckpointError: a missing, unreadable, corrupt or edited file (one line naming the file).
        """
        source = Path(path)
        try:
            raw = json.loads(source.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"watermark key not found: {source} (make one with 'encoderguard watermark "
                                  "keygen --out FILE')") from None
        except IsADirectoryError:
            raise CheckpointError(f"watermark key {source} is a directory, not a key file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"watermark key {source} is not readable JSON ({' '.join(str(exc).split())})"
                                  ) from None
        if not isinstance(raw, dict) or raw.get("format") != KEY_FORMAT:
            raise CheckpointError(f"{source} is not an encoderguard output-watermark key (missing \"format\": "
                                  f"\"{KEY_FORMAT}\")")
        try:
            key = cls(bytes.fromhex(str(raw["secret"])), dim=raw.get("dim"), strength=float(raw["strength"]),
                      data=raw.get("data"), probes=int(raw["probes"]), align=int(raw["align"]),
                      center=_decode(raw.get("center")), owner_probe=_decode(raw.get("owner_probe")),
                      owner_align=_decode(raw.get("owner_align")), version=int(raw.get("version", VERSION)),
                      spread=None if raw.get("spread") is None else float(raw["spread"]),
                      basis=_decode(raw.get("basis")))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"watermark key {source} is corrupt ({' '.join(str(exc).split())})") from None
        if raw.get("fingerprint") not in (None, key.fingerprint):
            raise CheckpointError(f"watermark key {source} does not match its fingerprint (the file was edited)")
        return key


def _encode(arr: np.ndarray | None) -> dict[str, Any] | None:
    if arr is None:
        return None
    data = np.ascontiguousarray(arr, dtype="<f4")
    return {"shape": list(data.shape), "float32_base64": base64.b64encode(data.tobytes()).decode()}


def _decode(obj: Any) -> np.ndarray | None:
    if obj is None:
        return None
    if not isinstance(obj, dict) or "shape" not in obj or "float32_base64" not in obj:
        raise ValueError("an array field must hold shape and float32_base64")
    shape = tuple(int(v) for v in obj["shape"])
    buf = base64.b64decode(str(obj["float32_base64"]), validate=True)
    if len(buf) != 4 * int(np.prod(shape)):
        raise ValueError(f"array of shape {shape} holds {len(buf)} bytes")
    return np.frombuffer(buf, dtype="<f4").reshape(shape).astype(np.float32)


def pool_inputs(pool: Any, index: np.ndarray) -> torch.Tensor | list[str]:
    """Inputs ``index`` of a probe pool, as the batch an API is sent (see :mod:`encoderguard.modality`).

    Args:
        pool: an ImageSet (its ``float(index)``), a TextSet (its ``inputs(index)``), a float tensor ``[P, ...]``
            (rows) or a list of ``P`` strings.
        index: positions in the pool.

    Returns:
        Images ``[n, C, H, W]`` (float32) or a list of ``n`` strings.
    """
    from encoderguard.modality import is_text, take

    positions = np.asarray(index, dtype=np.int64)
    if hasattr(pool, "float") and not isinstance(pool, torch.Tensor):
        out: torch.Tensor = pool.float(torch.from_numpy(positions))
        return out
    if hasattr(pool, "inputs") and not isinstance(pool, torch.Tensor):
        texts: list[str] = pool.inputs(positions)
        return texts
    if is_text(pool):
        return take(list(pool), positions)  # type: ignore[return-value]
    return torch.as_tensor(pool)[torch.from_numpy(positions)].float()
