"""An ONNX model as an encoder, run by onnxruntime: ``--encoder onnx:PATH`` on the command line.

The model must take one float image batch ``[N, C, H, W]`` (values in ``[0, 1]``, as every encoderguard encoder
does) and return ``[N, D]`` as its first output (or the output named by ``output``). ``C, H, W`` are read from the
model when they are static; a model exported with dynamic image dimensions needs them given (``input_shape``,
``--input-shape C,H,W``). A static batch dimension is honoured by running fixed-size chunks.

onnxruntime is an optional dependency (``pip install 'encoderguard[onnx]'``), imported when a model is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from encoderguard.errors import CheckpointError
from encoderguard.models.checkpoint import sha256_file
from encoderguard.optional import require

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


class OnnxEncoder(nn.Module):
    """Wrap an ONNX file as a module mapping images ``[N, C, H, W]`` to representations ``[N, D]`` (float32, CPU).

    It has the attributes commands and :class:`~encoderguard.api.LocalAPI` use (``input_shape``, ``embed_dim``,
    ``arch``, ``card`` = ``None``) but no registry architecture: it cannot be trained, saved as a checkpoint or
    re-initialised at random.

    Args:
        path: the ``.onnx`` file.
        input_shape: ``(C, H, W)``; required when the model's image dimensions are dynamic, checked against them
            when they are static.
        output: name of the output holding the representation (default: the model's first output).
        threads: intra-op threads of onnxruntime (default 0: its own choice).

    Raises:
        CheckpointError: missing or unreadable file, not one float image input of rank 4, dynamic dimensions without
            ``input_shape``, an ``input_shape`` that contradicts the model, or an output that is not a finite
            ``[N, D]`` on a trial batch.
        MissingDependencyError: onnxruntime is not installed.
        ValueError: a malformed ``input_shape`` or ``threads``.
    """

    arch = "onnx"

    def __init__(self, path: str | os.PathLike[str], *, input_shape: tuple[int, int, int] | None = None,
                 output: str | None = None, threads: int = 0) -> None:
        super().__init__()
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be an int >= 0, got {threads!r}")
        ort = require("onnxruntime", extra="onnx", purpose="ONNX models (onnx:PATH)")
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: its warnings are about graph optimisation, not the user
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types (InvalidGraph, Fail, ...)
            raise CheckpointError(f"{self.path}: not a loadable ONNX model ({_one_line(exc)})") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"{self.path}: an encoder takes one input (an image batch), this model takes "
                                  f"{len(inputs)}: {[i.name for i in inputs]}")
        spec = inputs[0]
        self._input_name: str = spec.name
        if spec.type not in _NUMPY_TYPES:
            raise CheckpointError(f"{self.path}: input {spec.name!r} has type {spec.type}; an encoder takes float "
                                  "images in [0, 1]")
        self._input_dtype = _NUMPY_TYPES[spec.type]
        dims = list(spec.shape)
        if len(dims) != 4:
            raise CheckpointError(f"{self.path}: input {spec.name!r} has shape {dims}; an encoder takes [N, C, H, W]")
        self.input_shape: tuple[int, int, int] = _resolve_shape(self.path, spec.name, dims, input_shape)
        batch = dims[0]
        self._fixed_batch: int | None = batch if isinstance(batch, int) and batch > 0 else None
        names = [o.name for o in self._session.get_outputs()]
        if output is not None and output not in names:
            raise CheckpointError(f"{self.path}: no output named {output!r}; outputs: {names}")
        self._output_name: str = output or names[0]
        trial = np.full((self._fixed_batch or 2, *self.input_shape), 0.5, dtype=self._input_dtype)
        out = self._run(trial)
        self.embed_dim = int(out.shape[1])
        self.arch_kwargs: dict[str, Any] = {"path": str(self.path)}
        self.card = None
        self.sha256 = sha256_file(self.path)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            (out,) = self._session.run([self._output_name], {self._input_name: batch})
        except Exception as exc:  # onnxruntime's own error types
            raise CheckpointError(f"{self.path}: onnxruntime failed on a batch of shape {list(batch.shape)} "
                                  f"({_one_line(exc)})") from exc
        out = np.asarray(out)
        n = batch.shape[0]
        if out.ndim != 2 or out.shape[0] != n:
            raise CheckpointError(f"{self.path}: output {self._output_name!r} has shape {list(out.shape)} for "
                                  f"{n} images; an encoder returns [N, D]")
        if not np.issubdtype(out.dtype, np.floating):
            raise CheckpointError(f"{self.path}: output {self._output_name!r} has dtype {out.dtype}; an encoder "
                                  "returns float representations")
        if not np.isfinite(out).all():
            raise CheckpointError(f"{self.path}: output {self._output_name!r} holds NaN or infinite values")
        return out.astype(np.float32, copy=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Representations ``[N, D]`` (float32, CPU) of images ``[N, C, H, W]``.

        Raises:
            CheckpointError: images of another shape than ``input_shape``, or an output that is not a finite
                ``[N, D]``.
        """
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise CheckpointError(f"{self.path}: takes images {list(self.input_shape)}, got a batch of shape "
                                  f"{list(x.shape)}")
        batch = x.detach().to("cpu", torch.float32).numpy().astype(self._input_dtype, copy=False)
        n = batch.shape[0]
        if self._fixed_batch is None:
            out = self._run(np.ascontiguousarray(batch))
        else:
            # A model exported with a fixed batch size: run chunks of that size, padding the last one.
            size = self._fixed_batch
            chunks = []
            for start in range(0, n, size):
                chunk = batch[start:start + size]
                pad = size - chunk.shape[0]
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), dtype=chunk.dtype)])
                chunks.append(self._run(np.ascontiguousarray(chunk))[: size - pad])
            out = np.concatenate(chunks) if chunks else np.zeros((0, self.embed_dim), np.float32)
        if out.shape[1] != self.embed_dim:
            raise CheckpointError(f"{self.path}: output width changed from {self.embed_dim} to {out.shape[1]}")
        return torch.from_numpy(np.ascontiguousarray(out))

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, input_shape={self.input_shape}, embed_dim={self.embed_dim}"


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``"3,32,32"`` -> ``(3, 32, 32)``.

    Raises:
        ValueError: not three positive integers separated by commas (quotes ``text``).
    """
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or any(v < 1 for v in values):
        raise ValueError(f"input shape must be C,H,W (three positive integers, e.g. 3,32,32), got {text!r}")
    return values[0], values[1], values[2]


def _resolve_shape(path: Path, name: str, dims: list[Any], given: tuple[int, int, int] | None
                   ) -> tuple[int, int, int]:
    model = [d if isinstance(d, int) and d > 0 else None for d in dims[1:]]
    if given is not None:
        shape = tuple(int(v) for v in given)
        if len(shape) != 3 or any(v < 1 for v in shape):
            raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {given!r}")
        for axis, (static, wanted) in enumerate(zip(model, shape, strict=True)):
            if static is not None and static != wanted:
                raise CheckpointError(f"{path}: input {name!r} has shape {dims} but the input shape given is "
                                      f"{list(shape)} (dimension {axis + 1} differs)")
        return shape[0], shape[1], shape[2]
    if any(d is None for d in model):
        raise CheckpointError(f"{path}: input {name!r} has dynamic dimensions {dims}; give the image shape "
                              "with --input-shape C,H,W (input_shape=(C, H, W) in Python)")
    return model[0], model[1], model[2]  # type: ignore[return-value]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400] or exc.__class__.__name__
