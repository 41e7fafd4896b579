"""Untrained twins of an encoder: the random-init baseline of every probe and the null encoders of verification."""

from __future__ import annotations

import torch

from encoderguard.models.encoder import Encoder
from encoderguard.models.registry import create_encoder

# Null encoder ``i`` is the owner's architecture initialised from ``NULL_ENCODER_SEED + i``: one convention for every
# frozen config, command and benchmark, so that "3 null encoders" means the same three models everywhere.
NULL_ENCODER_SEED = 10_000


def random_init_like(encoder: Encoder, *, seed: int = 0) -> Encoder:
    """The same architecture, freshly initialised from ``seed`` (eval mode)."""
    torch.manual_seed(seed)
    model = create_encoder(encoder.arch, input_shape=encoder.input_shape, embed_dim=encoder.embed_dim,
                           **encoder.arch_kwargs)
    return model.eval()


def null_encoders(owner_encoder: Encoder, count: int) -> list[Encoder]:
    """The null encoders of dataset inference: ``count`` random initialisations of the owner's architecture.

    Encoder ``i`` is ``random_init_like(owner_encoder, seed=NULL_ENCODER_SEED + i)`` (seeds 10000, 10001, ...).

    Args:
        owner_encoder: the owner's :class:`~encoderguard.models.Encoder`.
        count: how many (``>= 0``).

    Returns:
        ``count`` encoders in eval mode.

    Raises:
        ValueError: ``count`` is not an int ``>= 0``.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"null_encoders must be an int >= 0, got {count!r}")
    return [random_init_like(owner_encoder, seed=NULL_ENCODER_SEED + i) for i in range(count)]
