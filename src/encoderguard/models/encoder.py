"""Base classes of every encoder: images ``[N, C, H, W]`` in ``[0, 1]`` (:class:`Encoder`) or lists of strings
(:class:`TextEncoder`) -> representations ``[N, D]``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from encoderguard.modality import IMAGE, TEXT


class Encoder(nn.Module):
    """An encoder knows its input shape, its output size and how to rebuild itself (for the model card).

    The contract a subclass meets (a registered ``arch``, ``arch_kwargs`` that rebuild it, a ``forward`` that
    returns one finite ``[N, D]`` tensor) is in ``docs/models.md`` and is checked by ``save_checkpoint``
    (:func:`~encoderguard.models.encoder_contract.check_encoder`).

    Attributes:
        arch: registry name of the architecture.
        arch_kwargs: keyword arguments that rebuild it with :func:`encoderguard.models.create_encoder`.
        modality: ``"image"`` (this class) or ``"text"`` (:class:`TextEncoder`).
        input_shape: ``(C, H, W)`` of the images it takes (``None`` for a text encoder).
        embed_dim: size ``D`` of the representation it returns.
    """

    arch: str = "encoder"
    modality: str = IMAGE
    # Typed for the image encoders that most code handles; a TextEncoder sets it to None.
    input_shape: tuple[int, int, int]

    def __init__(self, *, input_shape: tuple[int, int, int] | None, embed_dim: int,
                 arch_kwargs: dict[str, Any]) -> None:
        super().__init__()
        if self.modality == TEXT:
            if input_shape is not None:
                raise ValueError(f"{type(self).__name__} is a text encoder: input_shape must be None, got "
                                 f"{input_shape!r}")
            if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
                raise ValueError(f"embed_dim must be an int >= 1, got {embed_dim!r}")
            self.input_shape = None  # type: ignore[assignment]
            self.embed_dim = int(embed_dim)
            self.arch_kwargs = dict(arch_kwargs)
            return
        if input_shape is None:
            raise ValueError(f"{type(self).__name__} is an image encoder: input_shape must be (C, H, W), got None")
        c, h, w = (int(v) for v in input_shape)
        if c < 1 or h < 4 or w < 4:
            raise ValueError(f"input_shape must be (C>=1, H>=4, W>=4), got {tuple(input_shape)}")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.input_shape = (c, h, w)
        self.embed_dim = int(embed_dim)
        self.arch_kwargs = dict(arch_kwargs)


class TextEncoder(Encoder):
    """An encoder of text: ``forward(texts: list[str]) -> [N, D]``, ``input_shape = None``.

    Subclasses tokenize inside ``forward`` (the batch is a list of strings, see :mod:`encoderguard.modality`) and
    may override :meth:`count_tokens` and set :attr:`max_tokens`, the units a text API bills and truncates in.

    Attributes:
        max_tokens: longest input in tokens; longer texts are truncated by the encoder.
    """

    modality: str = TEXT
    max_tokens: int = 0

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as this encoder counts them, before truncation (default: whitespace-separated words)."""
        return [max(1, len(text.split())) for text in texts]
