"""The input contract every embedding API enforces: a non-empty float batch ``[N, C, H, W]`` of finite values
in ``[0, 1]`` matching the encoder's input shape.

One function shared by :class:`~encoderguard.api.LocalAPI`, the HTTP server and the HTTP client (which checks
before paying for a round trip), so that the three reject exactly the same inputs with the same messages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from encoderguard.errors import APIError

# HTTP status for an input that parsed but breaks the contract (FastAPI's convention for validation errors).
INVALID_INPUT_STATUS = 422


def as_image_batch(inputs: torch.Tensor | np.ndarray, input_shape: Sequence[int]) -> torch.Tensor | np.ndarray:
    """Bring the image layouts a caller may naturally hold into the contract's float ``[N, C, H, W]``.

    uint8 images (``0..255``) are scaled by ``1/255``, exactly as the HTTP wire format's ``uint8`` dtype is, and
    one image ``[C, H, W]`` matching ``input_shape`` becomes a batch of one. Anything else is returned unchanged
    for :func:`validate_inputs` to judge.

    Args:
        inputs: images ``[N, C, H, W]`` or one image ``[C, H, W]``, float in ``[0, 1]`` or uint8.
        input_shape: the encoder's ``(C, H, W)``.

    Returns:
        ``inputs`` as ``[N, C, H, W]``, float32 where it was uint8.
    """
    if isinstance(inputs, np.ndarray) and inputs.dtype == np.uint8:
        inputs = torch.from_numpy(inputs)
    if isinstance(inputs, torch.Tensor):
        if inputs.dtype == torch.uint8:
            inputs = inputs.to(torch.float32).div_(255.0)
        if inputs.dim() == 3 and tuple(inputs.shape) == tuple(int(v) for v in input_shape):
            inputs = inputs.unsqueeze(0)
    elif isinstance(inputs, np.ndarray) and inputs.ndim == 3 and inputs.shape == tuple(int(v) for v in input_shape):
        inputs = inputs[None]
    return inputs


def validate_inputs(
    inputs: torch.Tensor | np.ndarray, input_shape: Sequence[int], *, max_batch: int | None = None
) -> torch.Tensor:
    """Check a batch against the input contract and return it as a float32 tensor.

    Args:
        inputs: images ``[N, C, H, W]``, a floating-point torch tensor or numpy array, values in ``[0, 1]``.
        input_shape: the encoder's ``(C, H, W)``.
        max_batch: largest ``N`` accepted; ``None`` for no limit.

    Returns:
        ``inputs`` as float32 ``[N, C, H, W]``, detached (sharing memory when it already was float32).

    Raises:
        APIError: (status 422; 413 for a batch over ``max_batch``) naming the problem: not a tensor, integer
            or complex dtype, wrong rank or shape, empty batch, NaN/inf, or a value outside ``[0, 1]``.
    """
    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(inputs)
    if not isinstance(inputs, torch.Tensor):
        raise APIError(
            f"inputs must be a torch.Tensor, got {type(inputs).__name__}", status=INVALID_INPUT_STATUS
        )
    if not inputs.is_floating_point():
        raise APIError(
            f"inputs must have a floating-point dtype with values in [0, 1], got {inputs.dtype}"
            " (scale uint8 images by 1/255)",
            status=INVALID_INPUT_STATUS,
        )
    expected = tuple(int(v) for v in input_shape)
    if inputs.dim() != 4 or tuple(inputs.shape[1:]) != expected:
        raise APIError(
            f"inputs must have shape [N, {', '.join(map(str, expected))}], got {list(inputs.shape)}",
            status=INVALID_INPUT_STATUS,
        )
    n = inputs.shape[0]
    if n == 0:
        raise APIError("empty batch: inputs has 0 images", status=INVALID_INPUT_STATUS)
    if max_batch is not None and n > max_batch:
        raise APIError(f"batch of {n} images exceeds the maximum batch size of {max_batch}", status=413)
    inputs = inputs.detach().to(torch.float32)
    if inputs.device.type == "cpu":
        # numpy is single-threaded here: torch would fan these cheap passes out to its thread pool, whose wake-up
        # dominates on a busy machine (~100x slower under load)
        array = inputs.numpy()
        finite = np.isfinite(array)
        bad = array.size - int(np.count_nonzero(finite))
        low, high = (float(array.min()), float(array.max())) if bad == 0 else (0.0, 0.0)
    else:
        bad = int((~torch.isfinite(inputs)).sum())
        low_t, high_t = torch.aminmax(inputs)
        low, high = float(low_t), float(high_t)
    if bad:
        raise APIError(f"inputs contain {bad} NaN or infinite values", status=INVALID_INPUT_STATUS)
    if low < 0.0 or high > 1.0:
        raise APIError(
            f"input values must lie in [0, 1], got min {np.float32(low)!s} and max {np.float32(high)!s}",
            status=INVALID_INPUT_STATUS,
        )
    return inputs
