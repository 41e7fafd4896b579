"""Turn a safetensors state dict of a registered architecture into a checkpoint: what ``encoderguard import`` runs.

Only safetensors is read. A ``.pt``/``.pth``/``.bin`` file is a pickle, which can run arbitrary code when loaded;
convert it to safetensors first, in an environment you trust (``safetensors.torch.save_file(state_dict, PATH)``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from encoderguard.errors import CheckpointError
from encoderguard.models.card import ModelCard
from encoderguard.models.checkpoint import _PICKLE_SUFFIXES, CARD_FILE, save_checkpoint, sha256_file
from encoderguard.models.registry import create_encoder


def import_state_dict(state_dict: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, arch: str,
                      input_shape: tuple[int, int, int], embed_dim: int, arch_kwargs: dict[str, Any] | None = None,
                      data: dict[str, Any] | None = None, overwrite: bool = False) -> ModelCard:
    """Validate a safetensors state dict against ``arch`` and save it as a checkpoint directory (weights + card).

    Args:
        state_dict: a ``.safetensors`` file whose tensor names are those of the architecture's ``state_dict()``.
        out_dir: the checkpoint directory to write.
        arch: registry name of the architecture (built in or an installed plugin).
        input_shape: ``(C, H, W)`` of the images the model takes.
        embed_dim: representation size ``D``.
        arch_kwargs: the architecture's other constructor arguments (``width``, ``depth``...).
        data: the owner's split to record in the card (``SplitSpec.to_dict()``), if known.
        overwrite: replace an existing checkpoint in ``out_dir`` (default: refuse).

    Returns:
        The card as written; the training record says ``method: imported`` and names the source file and digest.

    Raises:
        CheckpointError: a pickle file, an unreadable file, missing or unexpected tensors, a shape mismatch or
            non-finite values (each names the tensor), or ``out_dir`` already holds a checkpoint.
        ValueError: an unknown architecture or settings it rejects.
    """
    source = Path(state_dict)
    suffix = source.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        raise CheckpointError(f"{source}: refusing a '{suffix}' file: it is a pickle, which can run arbitrary code "
                              "when loaded; convert it to safetensors first, in an environment you trust "
                              "(safetensors.torch.save_file(state_dict, 'model.safetensors'))")
    if suffix != ".safetensors":
        raise CheckpointError(f"{source}: expected a .safetensors state dict")
    if not source.is_file():
        raise CheckpointError(f"state dict not found: {source}")
    out = Path(out_dir)
    if (out / CARD_FILE).exists() and not overwrite:
        raise CheckpointError(f"{out} already holds a checkpoint; choose another --out")
    try:
        tensors = load_file(str(source), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{source}: not a readable safetensors file ({' '.join(str(exc).split())})") from exc
    encoder = create_encoder(arch, input_shape=input_shape, embed_dim=embed_dim, **(arch_kwargs or {}))
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"{source}: missing tensor {missing[0]!r}{_more(missing)} of architecture {arch!r} "
                              f"({_settings(encoder)})")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor {unexpected[0]!r}{_more(unexpected)}, not in "
                              f"architecture {arch!r} ({_settings(encoder)})")
    for name, target in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(target.shape):
            raise CheckpointError(f"{source}: tensor {name!r} has shape {list(tensor.shape)}, architecture {arch!r} "
                                  f"({_settings(encoder)}) expects {list(target.shape)}")
        if tensor.is_floating_point() != target.is_floating_point():
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {tensor.dtype}, expected {target.dtype}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{source}: tensor {name!r} holds NaN or infinite values")
    encoder.load_state_dict(tensors, strict=True)
    encoder.eval()
    card = ModelCard(arch=arch, arch_kwargs=dict(encoder.arch_kwargs), input_shape=encoder.input_shape,
                     embed_dim=encoder.embed_dim, data=data,
                     training={"method": "imported", "source": source.name, "source_sha256": sha256_file(source)})
    return save_checkpoint(out, encoder=encoder, card=card)


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


def _settings(encoder: Any) -> str:
    kwargs = ", ".join(f"{k}={v!r}" for k, v in encoder.arch_kwargs.items())
    return f"input_shape={list(encoder.input_shape)}, embed_dim={encoder.embed_dim}" + (f", {kwargs}" if kwargs else "")
