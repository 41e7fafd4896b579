"""One resolver for every command that takes a model: a checkpoint directory or ``onnx:PATH``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from encoderguard.errors import CheckpointError
from encoderguard.models.checkpoint import load_encoder
from encoderguard.models.encoder import Encoder

if TYPE_CHECKING:
    from encoderguard.models.onnx_encoder import OnnxEncoder

ONNX_PREFIX = "onnx:"
MODEL_SPECS = "a checkpoint directory (model.safetensors + card.json) or onnx:PATH"


def load_any(spec: str | os.PathLike[str], *,
             input_shape: tuple[int, int, int] | None = None) -> Encoder | OnnxEncoder:
    """Load the model that ``spec`` names, in eval mode.

    Args:
        spec: a checkpoint directory, or ``onnx:PATH`` for an ONNX file run by onnxruntime (the ``onnx`` extra).
        input_shape: ``(C, H, W)``; needed by an ONNX model with dynamic image dimensions, checked against the
            model otherwise (a checkpoint's card must agree with it).

    Returns:
        A module mapping ``[N, C, H, W]`` float images in ``[0, 1]`` to ``[N, D]``, with ``input_shape``,
        ``embed_dim``, ``arch`` and ``card`` (``None`` for ONNX): an :class:`~encoderguard.models.Encoder` for a
        checkpoint, an :class:`~encoderguard.models.onnx_encoder.OnnxEncoder` for ONNX.

    Raises:
        CheckpointError: the model cannot be loaded (message names the file and the problem).
        MissingDependencyError: ``onnx:`` without onnxruntime installed.
    """
    text = os.fspath(spec)
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
    if input_shape is not None and tuple(int(v) for v in input_shape) != tuple(encoder.input_shape):
        raise CheckpointError(f"{text}: the checkpoint takes images {list(encoder.input_shape)}, not "
                              f"{list(input_shape)}")
    return encoder
