"""Checkpoints: a directory with ``model.safetensors`` and ``card.json``. Never pickle.

Writes are atomic (temporary file, fsync, rename), weights first and card last, and the card records the weights'
SHA-256: a process killed mid-save leaves either the old checkpoint or the new one, and a card that does not match its
weights is refused at load time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from encoderguard.errors import CheckpointError
from encoderguard.models.card import ModelCard, software_versions
from encoderguard.models.encoder import Encoder
from encoderguard.models.encoder_contract import check_encoder
from encoderguard.models.heads import projection_head, watermark_head
from encoderguard.models.registry import create_encoder

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".tar", ".joblib"}


@dataclass
class Checkpoint:
    """A loaded checkpoint: the encoder plus any stored heads and the card."""

    encoder: Encoder
    card: ModelCard
    projector: nn.Module | None = None
    watermark_head: nn.Module | None = None


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that a kill leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_save_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                        metadata: dict[str, str] | None = None) -> None:
    """:func:`safetensors.torch.save_file` made atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(out_dir: str | os.PathLike[str], *, encoder: Encoder, card: ModelCard,
                    projector: nn.Module | None = None, watermark_head: nn.Module | None = None) -> ModelCard:
    """Write ``model.safetensors`` then ``card.json`` (with the weights' digest) into ``out_dir``.

    The encoder is checked against the contract first (:func:`~encoderguard.models.encoder_contract.check_encoder`:
    registered ``arch``, ``arch_kwargs`` that rebuild it, a finite ``[N, embed_dim]`` forward), so that a model
    which could not be reloaded is refused here, before anything is written.

    Returns:
        The card as written (with ``weights_sha256`` and ``software`` filled in).

    Raises:
        ValueError: the encoder breaks the contract (the message names what to fix).
    """
    check_encoder(encoder)
    out = Path(out_dir)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("encoder", encoder), ("projector", projector), ("watermark_head", watermark_head)):
        if module is not None:
            tensors.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    atomic_save_tensors(out / WEIGHTS_FILE, tensors)
    card = replace(card, arch=encoder.arch, arch_kwargs=dict(encoder.arch_kwargs), input_shape=encoder.input_shape,
                   embed_dim=encoder.embed_dim, software=software_versions(),
                   weights_sha256=sha256_file(out / WEIGHTS_FILE))
    atomic_write_bytes(out / CARD_FILE, (json.dumps(card.to_dict(), indent=2) + "\n").encode())
    return card


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read and validate ``card.json`` of a checkpoint directory (no weights loaded)."""
    folder = _check_dir(Path(path))
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise CheckpointError(f"{folder}: no {CARD_FILE}; an encoderguard checkpoint is a directory with "
                              f"{WEIGHTS_FILE} and {CARD_FILE}")
    try:
        raw = json.loads(card_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{card_path}: not valid JSON ({exc})") from exc
    return ModelCard.from_dict(raw, source=str(card_path))


def _check_dir(path: Path) -> Path:
    if path.is_file():
        if path.suffix.lower() in _PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{path}: refusing to load a '{path.suffix}' file: pickle-based checkpoints can run arbitrary code. "
                f"encoderguard loads only a directory with {WEIGHTS_FILE} + {CARD_FILE}")
        raise CheckpointError(f"{path}: expected a checkpoint directory ({WEIGHTS_FILE} + {CARD_FILE}), got a file")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    return path


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str = "cpu") -> Checkpoint:
    """Load a checkpoint directory, verifying the card against the weights.

    Raises:
        CheckpointError: not a directory, a pickle file, missing/malformed card, weights missing, digest or
            tensor names/shapes that do not match the card.
    """
    folder = Path(path)
    card = read_card(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{folder}: {WEIGHTS_FILE} is missing")
    if card.weights_sha256 and sha256_file(weights_path) != card.weights_sha256:
        raise CheckpointError(f"{weights_path}: weights do not match the card (SHA-256 differs): the checkpoint was "
                              "modified or mixed with another one")
    try:
        tensors = load_file(weights_path, device=map_location)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({exc})") from exc
    reserved = sorted({"input_shape", "embed_dim"} & set(card.arch_kwargs))
    if reserved:
        raise CheckpointError(f"{folder}/{CARD_FILE}: arch_kwargs must not repeat {reserved} (the card records them "
                              "on their own); remove them from arch_kwargs")
    try:
        encoder = create_encoder(card.arch, input_shape=card.input_shape, embed_dim=card.embed_dim, **card.arch_kwargs)
    except ValueError as exc:
        raise CheckpointError(f"{folder}/{CARD_FILE}: {exc}") from exc
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        prefix, _, rest = name.partition(".")
        parts.setdefault(prefix, {})[rest] = tensor
    unknown = set(parts) - {"encoder", "projector", "watermark_head"}
    if unknown:
        raise CheckpointError(f"{weights_path}: unexpected tensor groups {sorted(unknown)}")
    _load_into(encoder, parts.get("encoder", {}), "encoder", weights_path)
    projector = _head(card, parts, "projector", weights_path)
    wm_head = _head(card, parts, "watermark_head", weights_path)
    encoder.eval()
    encoder.card = card  # type: ignore[assignment]
    return Checkpoint(encoder=encoder, card=card, projector=projector, watermark_head=wm_head)


def _head(card: ModelCard, parts: dict[str, dict[str, torch.Tensor]], name: str, source: Path) -> nn.Module | None:
    config: dict[str, Any] | None = card.heads.get(name)
    if config is None:
        if name in parts:
            raise CheckpointError(f"{source}: holds a {name} that the card does not describe")
        return None
    try:
        builder = projection_head if name == "projector" else watermark_head
        module = builder(card.embed_dim, **config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"card: bad {name} settings {config}: {exc}") from exc
    _load_into(module, parts.get(name, {}), name, source)
    module.eval()
    return module


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], name: str, source: Path) -> None:
    if not state:
        raise CheckpointError(f"{source}: no {name} weights")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"{source}: {name} weights do not match the card's architecture: {detail}") from exc


def load_encoder(path: str | os.PathLike[str], *, map_location: str = "cpu") -> Encoder:
    """Load just the encoder of a checkpoint directory (in eval mode, with its card as ``.card``)."""
    return load_checkpoint(path, map_location=map_location).encoder
