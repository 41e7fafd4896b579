"""Exception types. Every error a user can cause is an :class:`EncoderGuardError` (or a ``ValueError`` for a bad
setting) whose message names the problem and, where possible, the fix; the CLI prints it as one line."""

from __future__ import annotations


class EncoderGuardError(Exception):
    """Base class of all errors raised deliberately by encoderguard."""


class DataError(EncoderGuardError):
    """A dataset is missing, malformed or the wrong shape."""


class CheckpointError(EncoderGuardError):
    """A model directory is missing, unsafe (pickle), malformed or does not match its card."""


class APIError(EncoderGuardError):
    """An embedding API refused a request or answered something unusable."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
