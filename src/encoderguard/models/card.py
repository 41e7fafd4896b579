"""The model card: everything needed to rebuild, trust and verify a checkpoint, as JSON."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from encoderguard.errors import CheckpointError

CARD_FORMAT = "encoderguard-card"
CARD_VERSION = 1


@dataclass(frozen=True)
class ModelCard:
    """Contents of ``card.json``.

    Attributes:
        arch: registry name of the encoder architecture.
        arch_kwargs: settings that rebuild it.
        input_shape: ``(C, H, W)`` of the images it takes (values in ``[0, 1]``); ``None`` for a text encoder.
        embed_dim: representation size.
        data: the owner's split (:class:`encoderguard.data.SplitSpec` as a dict), or ``None`` if unknown.
        training: training configuration.
        metrics: measured numbers (probe accuracies, final loss...).
        heads: configuration of stored heads (``projector``, ``watermark``), each a dict.
        watermark: the secret watermark settings (``None`` when the model carries no watermark).
        software: versions of Python, torch and encoderguard that wrote the checkpoint.
        weights_sha256: digest of ``model.safetensors``; a mismatch means the card does not describe the weights.
    """

    arch: str
    arch_kwargs: dict[str, Any]
    input_shape: tuple[int, int, int] | None
    embed_dim: int
    data: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)
    watermark: dict[str, Any] | None = None
    software: dict[str, str] = field(default_factory=dict)
    weights_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_shape"] = None if self.input_shape is None else list(self.input_shape)
        return {"format": CARD_FORMAT, "format_version": CARD_VERSION, **out}

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "card.json") -> ModelCard:
        if not isinstance(raw, dict) or raw.get("format") != CARD_FORMAT:
            raise CheckpointError(f"{source}: not an encoderguard model card (missing \"format\": \"{CARD_FORMAT}\")")
        if raw.get("format_version") != CARD_VERSION:
            raise CheckpointError(f"{source}: card format version {raw.get('format_version')!r} is not supported "
                                  f"(this encoderguard reads version {CARD_VERSION})")
        try:
            input_shape: tuple[int, int, int] | None = None
            if raw["input_shape"] is not None:  # null: a text encoder
                shape = tuple(int(v) for v in raw["input_shape"])
                if len(shape) != 3:
                    raise ValueError("input_shape must have 3 entries")
                input_shape = (shape[0], shape[1], shape[2])
            return cls(arch=str(raw["arch"]), arch_kwargs=dict(raw.get("arch_kwargs") or {}),
                       input_shape=input_shape, embed_dim=int(raw["embed_dim"]),
                       data=raw.get("data"), training=dict(raw.get("training") or {}),
                       metrics=dict(raw.get("metrics") or {}), heads=dict(raw.get("heads") or {}),
                       watermark=raw.get("watermark"), software=dict(raw.get("software") or {}),
                       weights_sha256=str(raw.get("weights_sha256", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: malformed card ({exc.__class__.__name__}: {exc})") from exc


def software_versions() -> dict[str, str]:
    import torch

    from encoderguard import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "encoderguard": __version__}
