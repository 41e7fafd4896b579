"""An in-process embedding API over an encoder module (or another answer source): the reference implementation of the
protocol."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from encoderguard.api.answer_source import AnswerSource
from encoderguard.api.input_validation import as_image_batch, validate_inputs
from encoderguard.defences.base import Postprocessor, apply_chain
from encoderguard.errors import APIError
from encoderguard.modality import (
    DEFAULT_MAX_CHARS,
    IMAGE,
    TEXT,
    Batch,
    count_tokens,
    is_text,
    modality_of,
    take,
    validate_texts,
)


class LocalAPI:
    """Serve an encoder in-process, exactly as the HTTP server does: validate, embed, defend, count.

    The encoder runs in eval mode under ``torch.no_grad`` in chunks of ``batch_size``; the defence chain then
    rewrites the answers for the whole request at once (a stateful defence sees each request as one unit).
    Thread-safe: concurrent callers are serialised around the forward pass, which on a CPU already uses every
    core.

    Args:
        encoder: a module mapping ``[N, C, H, W]`` float32 in ``[0, 1]`` to ``[N, D]``, with attributes
            ``embed_dim`` (``D``) and ``input_shape`` (``(C, H, W)``); a text encoder (``modality = "text"``)
            mapping a list of ``N`` strings to ``[N, D]`` (see :mod:`encoderguard.modality`); or an
            :class:`~encoderguard.api.answer_source.AnswerSource` (e.g. a client of another endpoint), whose answers
            get the same checks and defences. A source is called outside the lock (its calls may overlap); the
            defence chain still runs one request at a time.
        defences: postprocessors applied in order to every answer (empty: answers are the raw
            representations).
        key: the caller identity passed to the defences when :meth:`embed` is not given one.
        batch_size: most inputs per forward pass (bounds peak memory, not the request size).
        max_chars: longest text accepted (text encoders only; longer: 413).

    Raises:
        ValueError: if the encoder lacks ``embed_dim``/``input_shape`` or ``batch_size`` is not a positive
            int.

    Example:
        >>> api = LocalAPI(encoder)  # doctest: +SKIP
        >>> api.embed(torch.rand(4, *api.input_shape)).shape  # doctest: +SKIP
        torch.Size([4, 128])
    """

    def __init__(
        self,
        encoder: nn.Module | AnswerSource,
        *,
        defences: Sequence[Postprocessor] = (),
        key: str = "local",
        batch_size: int = 256,
        max_chars: int = DEFAULT_MAX_CHARS,
    ) -> None:
        self.source: AnswerSource | None = None
        if not isinstance(encoder, nn.Module):
            if not isinstance(encoder, AnswerSource):
                raise ValueError(
                    f"encoder must be a torch.nn.Module or an AnswerSource, got {type(encoder).__name__}"
                )
            self.source = encoder
        embed_dim = encoder.dim if self.source is not None else getattr(encoder, "embed_dim", None)
        input_shape = getattr(encoder, "input_shape", None)
        self.modality = modality_of(encoder)
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"encoder.embed_dim must be a positive int, got {embed_dim!r}")
        if self.modality == IMAGE and (
            input_shape is None or len(tuple(input_shape)) != 3 or any(int(v) < 1 for v in input_shape)
        ):
            raise ValueError(f"encoder.input_shape must be (C, H, W) of positive ints, got {input_shape!r}")
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
            raise ValueError(f"max_chars must be a positive int, got {max_chars!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r}")
        for defence in defences:
            if not callable(defence):
                raise ValueError(f"every defence must be a callable postprocessor, got {defence!r}")
        self.encoder: nn.Module | None = encoder if isinstance(encoder, nn.Module) else None
        self.defences: tuple[Postprocessor, ...] = tuple(defences)
        self.key = key
        self.batch_size = batch_size
        self.max_chars = max_chars
        self._dim = embed_dim
        self._input_shape: tuple[int, int, int] | None = (
            tuple(int(v) for v in input_shape) if self.modality == IMAGE else None  # type: ignore[assignment,union-attr]
        )
        self._queries_used = 0
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        """Size ``D`` of the returned embeddings."""
        return self._dim

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` of the accepted images (``None`` for a text encoder)."""
        return self._input_shape

    @property
    def queries_used(self) -> int:
        """Inputs answered so far (a rejected batch counts nothing)."""
        return self._queries_used

    def check_inputs(self, inputs: Batch | np.ndarray, *, max_batch: int | None = None) -> Batch:
        """``inputs`` checked against this API's input contract and brought to its batch form.

        Raises:
            APIError: status 422 (413 for a batch over ``max_batch`` or an over-long text) naming the problem.
        """
        if self.modality == TEXT:
            return validate_texts(inputs, max_batch=max_batch, max_chars=self.max_chars)
        assert self._input_shape is not None
        if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and is_text(inputs)):
            raise APIError(f"this encoder takes images [N, {', '.join(map(str, self._input_shape))}], not text",
                           status=422)
        return validate_inputs(as_image_batch(inputs, self._input_shape),  # type: ignore[arg-type]
                               self._input_shape, max_batch=max_batch)

    def embed(self, inputs: Batch | np.ndarray, *, key: str | None = None) -> torch.Tensor:
        """Embed a batch of inputs.

        Args:
            inputs: float images ``[N, C, H, W]`` with values in ``[0, 1]``, ``N >= 1``; uint8 images (scaled by
                ``1/255``, as the HTTP API's ``uint8`` wire dtype is) and a single image ``[C, H, W]`` (a batch of
                one) are accepted too. For a text encoder: a list of ``N`` non-empty strings (one string is a
                batch of one).
            key: caller identity for the defences (the server passes the API key id); defaults to
                ``self.key``.

        Returns:
            float32 CPU tensor ``[N, D]``.

        Raises:
            APIError: if ``inputs`` break the input contract (status 422), or the encoder or a defence returns
                something other than ``[N, D]`` finite values (status 500), e.g. a dict of outputs.
        """
        batch = self.check_inputs(inputs)
        n = len(batch) if isinstance(batch, list) else int(batch.shape[0])
        if self.source is not None:
            return self._embed_from_source(batch, key)
        assert self.encoder is not None
        device = _device_of(self.encoder)
        with self._lock:
            self.encoder.eval()
            with torch.no_grad():
                chunks = [
                    _representation(self.encoder(_to(take(batch, slice(i, i + self.batch_size)), device)))
                    .float().cpu()
                    for i in range(0, n, self.batch_size)
                ]
                embeddings = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
                self._check_output(embeddings, n, "the encoder")
                embeddings = self._defend(embeddings, batch, key)
            self._queries_used += n
        return embeddings.contiguous()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the encoder counts them (about 4 characters per token if it cannot count)."""
        return count_tokens(self.source if self.source is not None else self.encoder, texts)

    def readiness(self) -> str | None:
        """``None`` when answers can be given, else why not (an answer source that has not answered yet)."""
        return None if self.source is None else self.source.readiness()

    def _embed_from_source(self, batch: Batch, key: str | None) -> torch.Tensor:
        assert self.source is not None
        n = len(batch) if isinstance(batch, list) else int(batch.shape[0])
        embeddings = self.source.embed(batch).float().cpu()
        self._check_output(embeddings, n, "the answer source")
        with self._lock:
            embeddings = self._defend(embeddings, batch, key)
            self._queries_used += n
        return embeddings.contiguous()

    def _defend(self, embeddings: torch.Tensor, batch: Batch, key: str | None) -> torch.Tensor:
        """The defence chain applied to checked answers (call with the lock held: defences keep per-key state)."""
        if not self.defences:
            return embeddings
        defended = apply_chain(self.defences, embeddings, inputs=batch, key=key or self.key).detach().float().cpu()
        self._check_output(defended, int(embeddings.shape[0]), "the defence chain")
        return defended

    def _check_output(self, embeddings: torch.Tensor, n: int, who: str) -> None:
        if tuple(embeddings.shape) != (n, self._dim):
            raise APIError(
                f"{who} returned shape {list(embeddings.shape)}, expected [{n}, {self._dim}]", status=500
            )
        if not bool(torch.isfinite(embeddings).all()):
            raise APIError(f"{who} returned NaN or infinite values", status=500)

    def __repr__(self) -> str:
        names = [getattr(d, "name", type(d).__name__) for d in self.defences]
        origin = self.encoder if self.source is None else self.source
        return (
            f"LocalAPI(encoder={type(origin).__name__}, modality={self.modality!r}, dim={self._dim}, "
            f"input_shape={self._input_shape}, "
            f"defences={names}, queries_used={self._queries_used})"
        )


def _representation(output: object) -> torch.Tensor:
    """The encoder's output as a tensor, or an error that names the contract (an encoder returns one tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):  # e.g. a Hugging Face ModelOutput
        raise APIError(
            f"the encoder returned a {type(output).__name__} with keys {list(output)[:6]}, not a tensor: an encoder "
            "must map [N, C, H, W] images to one tensor [N, D]; wrap the model in a module that returns the "
            "representation you mean (e.g. its pooled output)",
            status=500,
        )
    raise APIError(
        f"the encoder returned a {type(output).__name__}, not a tensor: an encoder must map [N, C, H, W] images to "
        "one tensor [N, D]; wrap the model in a module that returns the representation you mean",
        status=500,
    )


def _to(batch: Batch, device: torch.device) -> Batch:
    """A batch on ``device`` (texts stay a list: a text encoder tokenizes on its own device)."""
    return batch if isinstance(batch, list) else batch.to(device)


def _device_of(module: nn.Module) -> torch.device:
    for parameter in module.parameters():
        return parameter.device
    for buffer in module.buffers():
        return buffer.device
    return torch.device("cpu")
