"""The postprocessor role: a defence rewrites an API's answers before they leave the server.

Defences form an ordered chain (IBM ART's postprocessor pattern), applied per request and per key by
:class:`encoderguard.api.LocalAPI` and by the HTTP server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Postprocessor(Protocol):
    """One defence: ``(embeddings [N, D], inputs [N, C, H, W], key) -> embeddings [N, D]``."""

    name: str

    def __call__(self, embeddings: torch.Tensor, *, inputs: torch.Tensor, key: str) -> torch.Tensor: ...


def apply_chain(
    chain: Sequence[Postprocessor], embeddings: torch.Tensor, *, inputs: torch.Tensor, key: str
) -> torch.Tensor:
    """Apply ``chain`` in order; an empty chain returns ``embeddings`` unchanged."""
    for defence in chain:
        embeddings = defence(embeddings, inputs=inputs, key=key)
    return embeddings
