"""The attacker's on-disk cache of paid answers: a crash or a rerun never pays for the same query twice.

A cache is a directory:

- ``meta.json``: the fingerprint of everything that decides what position ``p`` of the query plan means (victim,
  answer size, query data digest, plan settings). Reopening a cache with another fingerprint is refused, so answers
  are never reused for different inputs or a different victim.
- ``answers-<start>-<stop>.safetensors``: one file per answered batch, for plan positions ``start .. stop-1``,
  written atomically (temporary file, fsync, rename) as soon as the answer arrives. Tensors: ``sources`` int64
  ``[n]`` (index into the query set), ``views`` int64 ``[n]``, ``input_sha256`` uint8 ``[n, 32]`` (digest of the
  exact float32 image sent) and ``answers`` float32 ``[n, D]``; the header metadata repeats the fingerprint digest.

- ``.lock``: held (``fcntl.flock``) by the run that has the cache open, so a second concurrent run on the same directory
  fails at once with a clear message instead of interleaving its writes; the lock dies with its process.

A process killed at any moment leaves only whole segment files (plus, at worst, a temporary file that the next
open removes). Every segment is validated on reload: name, fingerprint, tensor names, dtypes and shapes, finite
answers, no overlap. A batch the server has charged whose answer had not yet reached this directory when the process
died is sent again on the rerun; against an ``encoderguard serve`` API the client's idempotency key makes the server
replay its stored answer for free, so it is not paid twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from encoderguard.errors import EncoderGuardError
from encoderguard.models.checkpoint import atomic_save_tensors, atomic_write_bytes

CACHE_FORMAT = "encoderguard-query-cache"
CACHE_VERSION = 1
META_FILE = "meta.json"
LOCK_FILE = ".lock"
_SEGMENT_RE = re.compile(r"^answers-(\d{9})-(\d{9})\.safetensors$")
_TENSORS = {"sources": torch.int64, "views": torch.int64, "input_sha256": torch.uint8, "answers": torch.float32}


class QueryCacheError(EncoderGuardError):
    """A query cache is corrupted, incomplete or was filled with other settings."""


@dataclass(frozen=True)
class CachedAnswers:
    """Paid answers for plan positions ``0 .. n-1``, in position order.

    Attributes:
        sources: int64 ``[n]``, index of each position's source image in the query set.
        views: int64 ``[n]``, view number of each position (0 in clean mode).
        input_sha256: uint8 ``[n, 32]``, digest of the float32 image sent.
        answers: float32 ``[n, D]``, the victim's answers.
    """

    sources: torch.Tensor
    views: torch.Tensor
    input_sha256: torch.Tensor
    answers: torch.Tensor

    def __len__(self) -> int:
        return int(self.sources.shape[0])


@dataclass(frozen=True)
class _Segment:
    start: int
    stop: int
    path: Path
    tensors: dict[str, torch.Tensor]


class QueryCache:
    """Append-only, crash-safe store of a victim's answers, keyed by query-plan position.

    Args:
        path: cache directory (created if missing).
        fingerprint: JSON-serialisable description of the victim, the query data and the plan; must contain
            ``"dim"`` (answer size). Stored on creation; a reopened cache must match it exactly.

    Raises:
        QueryCacheError: if ``path`` holds a cache with another fingerprint, a malformed ``meta.json``, or a
            segment that fails validation (the message names the file and what to delete), or if another run has
            it open (the lock is released by :meth:`close`, the end of a ``with`` block, or the process's end).
        ValueError: if ``fingerprint`` has no positive int ``"dim"``.

    Example:
        >>> cache = QueryCache("runs/stolen/query_cache", fingerprint={"dim": 128, ...})  # doctest: +SKIP
        >>> cache.missing(2000)  # position ranges still to be paid for  # doctest: +SKIP
        [(512, 2000)]
    """

    def __init__(self, path: str | Path, *, fingerprint: dict[str, Any]) -> None:
        dim = fingerprint.get("dim")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"fingerprint['dim'] must be a positive int, got {dim!r}")
        self.path = Path(path)
        self.dim = dim
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
        self.digest = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()
        if self.path.exists() and not self.path.is_dir():
            raise QueryCacheError(f"query cache {self.path} is a file, not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_handle: _DirLock | None = _lock(self.path / LOCK_FILE)
        try:
            for stale in self.path.glob(".answers-*.tmp"):  # left by a process killed mid-write
                stale.unlink(missing_ok=True)
            self._check_meta()
            self._segments = self._load_segments()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the directory's lock (the cache can still be read, but open it again to append)."""
        handle, self._lock_handle = getattr(self, "_lock_handle", None), None
        if handle is not None:
            handle.close()

    def __enter__(self) -> QueryCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------------------
    @property
    def covered(self) -> list[tuple[int, int]]:
        """Position ranges ``[(start, stop), ...]`` held, sorted."""
        return [(s.start, s.stop) for s in self._segments]

    def __len__(self) -> int:
        """Number of paid answers held."""
        return sum(s.stop - s.start for s in self._segments)

    def prefix_length(self) -> int:
        """Length ``n`` of the longest run of held positions ``0 .. n-1``."""
        n = 0
        for segment in self._segments:
            if segment.start != n:
                break
            n = segment.stop
        return n

    def missing(self, stop: int) -> list[tuple[int, int]]:
        """Ranges of positions below ``stop`` not yet paid for, sorted."""
        gaps, cursor = [], 0
        for segment in self._segments:
            if segment.start >= stop:
                break
            if segment.start > cursor:
                gaps.append((cursor, segment.start))
            cursor = max(cursor, segment.stop)
        if cursor < stop:
            gaps.append((cursor, stop))
        return gaps

    def read(self, stop: int) -> CachedAnswers:
        """The answers of positions ``0 .. stop-1`` (a larger cache serves any smaller budget).

        Raises:
            QueryCacheError: if some of these positions are not held.
        """
        gaps = self.missing(stop)
        if gaps:
            raise QueryCacheError(f"query cache {self.path} lacks positions {gaps[0][0]}..{gaps[0][1] - 1}")
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in _TENSORS}
        for segment in self._segments:
            if segment.start >= stop:
                break
            take = min(segment.stop, stop) - segment.start
            for name in _TENSORS:
                parts[name].append(segment.tensors[name][:take])
        if not parts["sources"]:
            empty = {n: torch.empty((0, 32) if n == "input_sha256" else (0, self.dim) if n == "answers" else (0,),
                                    dtype=d) for n, d in _TENSORS.items()}
            return CachedAnswers(**empty)
        return CachedAnswers(**{name: torch.cat(tensors) for name, tensors in parts.items()})

    # -- writing ---------------------------------------------------------------------------------------------
    def append(self, start: int, *, sources: torch.Tensor, views: torch.Tensor, input_sha256: torch.Tensor,
               answers: torch.Tensor) -> Path:
        """Persist the answers of positions ``start .. start+n-1`` atomically; returns the segment file.

        Raises:
            ValueError: for shapes or dtypes that do not fit, or positions already held.
        """
        n = int(answers.shape[0])
        tensors = {"sources": sources.to(torch.int64), "views": views.to(torch.int64),
                   "input_sha256": input_sha256.to(torch.uint8), "answers": answers.detach().to(torch.float32)}
        problem = _shape_problem(tensors, n, self.dim)
        if n < 1 or problem:
            raise ValueError(f"cannot cache a batch of {n} answers: {problem or 'empty batch'}")
        if not bool(torch.isfinite(tensors["answers"]).all()):
            raise ValueError("refusing to cache NaN or infinite answers")
        if self._lock_handle is None:
            raise QueryCacheError(f"query cache {self.path} was closed; open it again to append")
        stop = start + n
        for segment in self._segments:
            if segment.start < stop and start < segment.stop:
                raise ValueError(f"positions {start}..{stop - 1} overlap cached {segment.start}..{segment.stop - 1}")
        path = self.path / f"answers-{start:09d}-{stop:09d}.safetensors"
        tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
        atomic_save_tensors(path, tensors, metadata={"fingerprint": self.digest})
        self._segments.append(_Segment(start, stop, path, tensors))
        self._segments.sort(key=lambda s: s.start)
        return path

    # -- internals -------------------------------------------------------------------------------------------
    def _check_meta(self) -> None:
        meta_path = self.path / META_FILE
        wanted = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "fingerprint": self.fingerprint}
        if not meta_path.exists():
            if any(self.path.glob("answers-*.safetensors")):
                raise QueryCacheError(f"query cache {self.path} has answer files but no {META_FILE}; "
                                      "delete the directory to start over")
            atomic_write_bytes(meta_path, (json.dumps(wanted, indent=2, sort_keys=True) + "\n").encode())
            return
        try:
            raw = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise QueryCacheError(f"{meta_path}: unreadable ({exc}); delete {self.path} to start over") from exc
        if not isinstance(raw, dict) or raw.get("format") != CACHE_FORMAT:
            raise QueryCacheError(f"{meta_path}: not an encoderguard query cache")
        if raw.get("version") != CACHE_VERSION:
            raise QueryCacheError(f"{meta_path}: cache version {raw.get('version')!r} is not supported "
                                  f"(this encoderguard reads version {CACHE_VERSION})")
        stored = raw.get("fingerprint")
        if stored != self.fingerprint:
            stored = stored if isinstance(stored, dict) else {}
            diff = [f"{k}: cached {stored.get(k)!r}, now {self.fingerprint.get(k)!r}"
                    for k in sorted(set(stored) | set(self.fingerprint)) if stored.get(k) != self.fingerprint.get(k)]
            raise QueryCacheError(f"query cache {self.path} was filled with other settings ({'; '.join(diff[:4])}); "
                                  "use another cache directory or delete this one")

    def _load_segments(self) -> list[_Segment]:
        segments = []
        for path in sorted(self.path.glob("answers-*")):
            match = _SEGMENT_RE.match(path.name)
            if match is None:
                raise QueryCacheError(f"{path}: unexpected file in the query cache (not answers-<start>-<stop>"
                                      ".safetensors)")
            start, stop = int(match.group(1)), int(match.group(2))
            hint = (f"delete it to pay again for its {max(stop - start, 0)} answers, or delete {self.path} to start "
                    "over")
            if stop <= start:
                raise QueryCacheError(f"{path}: empty position range {start}..{stop}; {hint}")
            try:
                with safe_open(str(path), framework="pt") as fh:
                    meta = fh.metadata() or {}
                    names = set(fh.keys())
                    if names != set(_TENSORS):
                        raise QueryCacheError(f"{path}: holds tensors {sorted(names)}, expected "
                                              f"{sorted(_TENSORS)}; {hint}")
                    tensors = {name: fh.get_tensor(name) for name in _TENSORS}
            except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
                raise QueryCacheError(f"{path}: corrupted query cache file ({exc}); {hint}") from exc
            if meta.get("fingerprint") != self.digest:
                raise QueryCacheError(f"{path}: written with other cache settings than {META_FILE}; {hint}")
            problem = _shape_problem(tensors, stop - start, self.dim)
            if problem:
                raise QueryCacheError(f"{path}: {problem}; {hint}")
            if not bool(torch.isfinite(tensors["answers"]).all()):
                raise QueryCacheError(f"{path}: holds NaN or infinite answers; {hint}")
            segments.append(_Segment(start, stop, path, tensors))
        segments.sort(key=lambda s: s.start)
        for before, after in zip(segments, segments[1:], strict=False):
            if after.start < before.stop:
                raise QueryCacheError(f"{before.path.name} and {after.path.name} overlap; delete one of them")
        return segments


# Locks this process holds, by cache directory: several QueryCache objects of one process may share a directory (a
# sweep fills the largest budget, then each attack reopens it); only other processes are kept out.
_HELD: dict[str, list[Any]] = {}
_HELD_LOCK = threading.Lock()


class _DirLock:
    """This process's share of a cache directory's exclusive ``flock``."""

    def __init__(self, path: Path) -> None:
        self.key = str(path.resolve())
        with _HELD_LOCK:
            held = _HELD.get(self.key)
            if held is None:
                held = _HELD[self.key] = [_flock(path), 0]
            held[1] += 1

    def close(self) -> None:
        with _HELD_LOCK:
            held = _HELD.get(self.key)
            if held is None:
                return
            held[1] -= 1
            if held[1] <= 0:
                del _HELD[self.key]
                with contextlib.suppress(OSError):
                    held[0].close()  # closing the descriptor releases the flock


def _lock(path: Path) -> _DirLock:
    return _DirLock(path)


def _flock(path: Path) -> Any:
    """Take the directory's exclusive lock, or fail naming the process that holds it."""
    handle = open(path, "a+")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, concurrent runs are the user's responsibility
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()[:20]
        handle.close()
        raise QueryCacheError(
            f"query cache {path.parent} is in use by another run{f' (pid {holder})' if holder else ''}; wait for it "
            "to finish, or give this run another cache directory"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _shape_problem(tensors: dict[str, torch.Tensor], n: int, dim: int) -> str:
    """A description of the first dtype/shape mismatch, or ``""``."""
    shapes = {"sources": (n,), "views": (n,), "input_sha256": (n, 32), "answers": (n, dim)}
    for name, dtype in _TENSORS.items():
        tensor = tensors[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shapes[name]:
            return (f"tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, expected {dtype} "
                    f"{list(shapes[name])}")
    return ""
