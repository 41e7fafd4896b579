"""The registry of wire formats: name -> :class:`~encoderguard.api.wire_adapter.WireAdapter` class."""

from __future__ import annotations

from typing import Any

from encoderguard.api.encoderguard_adapter import EncoderguardAdapter
from encoderguard.api.kserve_adapter import KServeAdapter
from encoderguard.api.openai_adapter import OpenAIAdapter
from encoderguard.api.wire_adapter import WireAdapter

ADAPTERS: dict[str, type[WireAdapter]] = {
    "encoderguard": EncoderguardAdapter,
    "openai": OpenAIAdapter,
    "kserve": KServeAdapter,
}


def create_adapter(name: str, **options: Any) -> WireAdapter:
    """The adapter of wire format ``name``.

    Raises:
        ValueError: an unknown name (listing the formats), or a bad option.
    """
    if name not in ADAPTERS:
        raise ValueError(f"unknown API format {name!r}; choose one of: {', '.join(ADAPTERS)}")
    return ADAPTERS[name](**options)
