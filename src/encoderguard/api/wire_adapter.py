"""One wire format of an embedding endpoint, as seen by a client: how a batch of images becomes a request and an
answer becomes vectors. :class:`~encoderguard.api.UpstreamAPI` (the proxy's upstream client, and
``HTTPEmbeddingAPI(api_format=...)`` for foreign formats) does the HTTP around it: pooling, timeouts, retries, and
the checks of the answer (count, shape, finite values).

Writing an adapter for another format: subclass :class:`WireAdapter`, set ``name``, implement
:meth:`~WireAdapter.embed_request` and :meth:`~WireAdapter.parse_answer` (and optionally the two ``describe``
methods), and add the class to ``ADAPTERS`` in :mod:`encoderguard.api.adapter_registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np


class WireAdapter(ABC):
    """Base class of the wire formats (abstract: a format implements the two abstract methods).

    Args:
        model: the model name some formats put in the request or URL (``None``: the format's default).
    """

    name: ClassVar[str] = ""

    def __init__(self, *, model: str | None = None) -> None:
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        self.model = model

    def base_url(self, url: str) -> str:
        """The URL that request paths are relative to, for the endpoint URL a user gives."""
        return url.rstrip("/")

    #: The input modalities the format carries (a text batch is a list of strings).
    modalities: ClassVar[tuple[str, ...]] = ("image",)

    @abstractmethod
    def embed_request(self, batch: np.ndarray) -> tuple[str, dict[str, Any]]:
        """The path (relative to the endpoint URL) and JSON body that ask for the embeddings of ``batch``.

        Args:
            batch: float32 ``[N, C, H, W]`` in ``[0, 1]``; a format with ``"text"`` in :attr:`modalities` also takes
                a list of ``N`` strings.
        """

    @abstractmethod
    def parse_answer(self, payload: Any, n: int) -> np.ndarray:
        """The ``[n, D]`` vectors in a decoded JSON answer.

        Raises:
            ValueError: naming what is wrong with the answer (missing field, wrong count or shape, undecodable).
        """

    def parse_tokens(self, payload: Any) -> int | None:
        """Tokens the answer says it billed (``None``: the format does not say)."""
        return None

    def describe_path(self) -> str | None:
        """Path of a ``GET`` that describes the model (input shape, answer size), or ``None`` if the format has
        none."""
        return None

    def parse_description(self, payload: Any) -> tuple[tuple[int, int, int] | None, int | None]:
        """``(input_shape (C, H, W), dim)`` from the description; ``None`` for what it does not say."""
        return None, None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


def as_matrix(values: Any, n: int, what: str) -> np.ndarray:
    """``values`` (nested lists of numbers) as float32 ``[n, D]``.

    Raises:
        ValueError: if they are not ``n`` rows of one length of numbers.
    """
    try:
        array = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what} is not a matrix of numbers ({str(exc)[:100]})") from None
    if array.ndim != 2 or array.shape[0] != n or array.shape[1] < 1:
        raise ValueError(f"{what} has shape {list(array.shape)}, expected [{n}, D]")
    return array
