"""Encoder registry: ``create_encoder(name, ...)``."""

from __future__ import annotations

from typing import Any

from encoderguard.models.convnet import ConvNet
from encoderguard.models.encoder import Encoder
from encoderguard.models.mlp import MLPEncoder
from encoderguard.models.resnet import ResNet18

ENCODERS: dict[str, type[Encoder]] = {"convnet": ConvNet, "resnet18": ResNet18, "mlp": MLPEncoder}


def create_encoder(name: str, *, input_shape: tuple[int, int, int], **kwargs: Any) -> Encoder:
    """Build an encoder by registry name.

    Raises:
        ValueError: unknown name (lists the choices) or bad settings.
    """
    check_arch(name)
    try:
        return ENCODERS[name](input_shape=input_shape, **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad settings for architecture {name!r}: {exc}") from exc


def check_arch(name: str) -> None:
    """Raise ValueError listing the choices if ``name`` is not a registered architecture."""
    if name not in ENCODERS:
        raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(ENCODERS)}")
