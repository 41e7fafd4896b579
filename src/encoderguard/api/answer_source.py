"""Where the answers of an embedding API come from, when they do not come from an encoder in this process.

:class:`~encoderguard.api.LocalAPI` (and so the HTTP server built by ``create_app``) takes either an encoder module or
an answer source: the server's admission, ledger, defence chain and error shape are the same for both; only the raw
answers come from elsewhere (``encoderguard proxy`` uses :class:`~encoderguard.api.UpstreamAPI`, a client of another
embedding endpoint).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class AnswerSource(Protocol):
    """Raw answers for a batch of inputs, before any defence.

    ``embed`` takes a validated float32 batch ``[N, C, H, W]`` in ``[0, 1]`` (or, for a source with
    ``modality = "text"`` and ``input_shape = None``, a list of ``N`` strings) and returns float32 ``[N, D]`` (finite);
    a failure to answer raises :class:`~encoderguard.errors.APIError` whose ``status`` (502, 504 ...) and ``code``
    attribute the server passes on to the caller, uncharged. ``readiness`` is ``None`` once the source can answer,
    else the reason it cannot yet (``GET /health`` answers 503 with it).
    """

    @property
    def dim(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, int, int] | None: ...

    def embed(self, inputs: torch.Tensor | list[str]) -> torch.Tensor: ...

    def readiness(self) -> str | None: ...
