"""The postprocessor role: a defence rewrites an API's answers before they leave the server.

Defences form an ordered chain (IBM ART's postprocessor pattern), applied per request and per key by
:class:`encoderguard.api.LocalAPI` and by the HTTP server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from encoderguard.defences.state_store import StateStore


@runtime_checkable
class Postprocessor(Protocol):
    """One defence: ``(embeddings [N, D], inputs, key) -> embeddings [N, D]``.

    ``inputs`` is the request's batch (images ``[N, C, H, W]`` or ``N`` strings, see :mod:`encoderguard.modality`);
    a defence that reads it must handle both modalities (e.g. through :func:`encoderguard.modality.input_bytes`).
    """

    name: str

    def __call__(self, embeddings: torch.Tensor, *, inputs: Any, key: str) -> torch.Tensor: ...


def apply_chain(
    chain: Sequence[Postprocessor], embeddings: torch.Tensor, *, inputs: Any, key: str
) -> torch.Tensor:
    """Apply ``chain`` in order; an empty chain returns ``embeddings`` unchanged."""
    for defence in chain:
        embeddings = defence(embeddings, inputs=inputs, key=key)
    return embeddings


def prepare_chain(chain: Sequence[Postprocessor], *, dim: int, store: StateStore | None = None) -> None:
    """Ready a chain for an API whose answers have ``dim`` values: check settings, hand out the state store.

    Optional hooks, called when a defence has them: ``check_dim(dim)`` (raises ``ValueError`` for a setting
    that does not fit the answer size, e.g. ``topk`` with ``k > dim``) and ``bind_store(store)`` (stateful
    defences keep their per-key state there instead of in memory). Call it once at start-up, before the
    first request.

    Args:
        chain: the defences.
        dim: size ``D`` of the encoder's answers.
        store: where per-key state lives (e.g. the server's ledger); ``None`` keeps each defence's own store.

    Raises:
        ValueError: from a defence whose settings do not fit ``dim``.
    """
    for defence in chain:
        check = getattr(defence, "check_dim", None)
        if callable(check):
            check(dim)
        bind = getattr(defence, "bind_store", None)
        if store is not None and callable(bind):
            bind(store)
