"""Latent semantic analysis as a text encoder: TF-IDF of words and word pairs, projected on a truncated SVD.

A classic, training-free sentence representation (Deerwester et al., 1990) that shares nothing with a neural
encoder: no weights learnt from another model's answers, no pretrained vocabulary. It serves as an independent
reference model for text ownership tests (:mod:`encoderguard.verify.text_references`).

Text is NFKC-normalised and lower-cased and split into words (runs of letters and digits, as the hashed students
do); the features are the words and adjacent word pairs of a fixed vocabulary, weighted by ``1 + log(tf)`` times
the inverse document frequency of the corpus it was fitted on, L2-normalised, centred and projected on the top
``k`` right singular vectors. The fitted state (vocabulary, idf, mean, components) is saved as safetensors plus a
JSON vocabulary, never pickled.

References:
    Deerwester et al., "Indexing by Latent Semantic Analysis", JASIS 1990.
    Arora et al., "A Simple but Tough-to-Beat Baseline for Sentence Embeddings", ICLR 2017 (why a bag of words is
    a strong baseline for sentence similarity).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from encoderguard.errors import CheckpointError
from encoderguard.models.text_students import words_of

WEIGHTS_FILE = "lsa.safetensors"
VOCAB_FILE = "lsa_vocab.json"
FORMAT = "encoderguard-lsa"


def _terms(text: str) -> list[str]:
    words = words_of(text)
    return words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]


class LSAEncoder(nn.Module):
    """TF-IDF (words and word pairs) -> centred truncated SVD -> ``[N, k]``.

    Use :meth:`fit` to build one from a corpus and :meth:`load` to read a saved one.

    Args:
        vocabulary: the terms, in column order.
        idf: ``[V]`` inverse document frequencies.
        mean: ``[V]`` mean TF-IDF row of the corpus (centring, as PCA does).
        components: ``[V, k]`` the top right singular vectors.

    Raises:
        ValueError: inconsistent shapes.
    """

    modality = "text"
    input_shape = None
    arch = "text-lsa"
    idf: torch.Tensor
    mean: torch.Tensor
    components: torch.Tensor

    def __init__(self, vocabulary: Sequence[str], idf: np.ndarray, mean: np.ndarray, components: np.ndarray) -> None:
        super().__init__()
        n = len(vocabulary)
        if idf.shape != (n,) or mean.shape != (n,) or components.ndim != 2 or components.shape[0] != n:
            raise ValueError(f"LSA state does not fit a vocabulary of {n} terms: idf {idf.shape}, mean {mean.shape}, "
                             f"components {components.shape}")
        self.vocabulary = list(vocabulary)
        self.index = {term: i for i, term in enumerate(self.vocabulary)}
        self.register_buffer("idf", torch.as_tensor(np.asarray(idf, dtype=np.float32)))
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float32)))
        self.register_buffer("components", torch.as_tensor(np.asarray(components, dtype=np.float32)))
        self.embed_dim = int(components.shape[1])

    # -- fitting ------------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, texts: Sequence[str], *, dim: int = 128, max_terms: int = 20000, min_df: int = 2,
            seed: int = 0) -> LSAEncoder:
        """Fit the vocabulary, idf and SVD on ``texts``.

        Args:
            texts: the corpus (sentences or documents).
            dim: output size ``k`` (at most the vocabulary size and the number of texts).
            max_terms: keep the most frequent terms (by document frequency), at most this many.
            min_df: drop terms found in fewer texts.
            seed: seeds the randomized SVD.

        Raises:
            ValueError: too few texts or terms for ``dim``.
        """
        from sklearn.decomposition import TruncatedSVD

        docs = [_terms(t) for t in texts]
        df = Counter(term for terms in docs for term in set(terms))
        kept = sorted((t for t, c in df.items() if c >= min_df), key=lambda t: (-df[t], t))[:max_terms]
        if len(kept) <= dim or len(docs) <= dim:
            raise ValueError(f"LSA with dim {dim} needs more than {dim} texts and terms, got {len(docs)} texts and "
                             f"{len(kept)} terms")
        vocab = sorted(kept)
        idf = np.array([math.log((1 + len(docs)) / (1 + df[t])) + 1.0 for t in vocab], dtype=np.float64)
        probe = cls(vocab, idf.astype(np.float32), np.zeros(len(vocab), np.float32),
                    np.zeros((len(vocab), 1), np.float32))
        x = probe.tfidf(list(texts))
        svd = TruncatedSVD(n_components=dim, algorithm="randomized", n_iter=5, random_state=seed).fit(x)
        components = svd.components_.T.astype(np.float64)  # [V, k], ordered by singular value
        # a deterministic sign per component (the randomized solver's signs depend on its start)
        components *= np.where(components[np.abs(components).argmax(0), np.arange(dim)] < 0, -1.0, 1.0)
        # centre the representations (as PCA would): the corpus mean is subtracted before projecting
        mean = np.asarray(x.mean(axis=0)).ravel()
        return cls(vocab, idf.astype(np.float32), mean.astype(np.float32), components.astype(np.float32))

    # -- encoding -----------------------------------------------------------------------------------------------
    def tfidf(self, texts: Sequence[str]) -> Any:
        """The L2-normalised TF-IDF rows of ``texts`` (a scipy CSR matrix ``[N, V]``)."""
        from scipy.sparse import csr_matrix

        rows, cols, vals = [], [], []
        idf = self.idf.numpy()
        for r, text in enumerate(texts):
            counts = Counter(i for term in _terms(text) if (i := self.index.get(term)) is not None)
            if not counts:
                continue
            ids = np.fromiter(counts.keys(), dtype=np.int64)
            w = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64))) * idf[ids]
            w /= max(float(np.linalg.norm(w)), 1e-12)
            rows += [r] * len(ids)
            cols += ids.tolist()
            vals += w.tolist()
        return csr_matrix((vals, (rows, cols)), shape=(len(texts), len(self.vocabulary)), dtype=np.float64)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Representations ``[N, k]`` of ``N`` strings (a text with no known term maps to minus the mean's
        projection)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("LSAEncoder takes a list of strings")
        x = self.tfidf(list(texts))
        comp = self.components.numpy().astype(np.float64)
        out = x @ comp - self.mean.numpy().astype(np.float64) @ comp
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    # -- files --------------------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``lsa.safetensors`` and ``lsa_vocab.json`` into ``folder`` (created)."""
        from safetensors.torch import save_file

        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        save_file({"idf": self.idf.contiguous(), "mean": self.mean.contiguous(),
                   "components": self.components.contiguous()}, str(path / WEIGHTS_FILE))
        (path / VOCAB_FILE).write_text(json.dumps({"format": FORMAT, "embed_dim": self.embed_dim,
                                                   "vocabulary": self.vocabulary}) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> LSAEncoder:
        """Read an encoder written by :meth:`save`.

        Raises:
            CheckpointError: missing or inconsistent files (one line naming the folder).
        """
        from safetensors.torch import load_file

        path = Path(folder)
        try:
            meta = json.loads((path / VOCAB_FILE).read_text())
            tensors = load_file(str(path / WEIGHTS_FILE))
            if meta.get("format") != FORMAT:
                raise ValueError(f"{VOCAB_FILE} is not an {FORMAT} file")
            return cls(meta["vocabulary"], tensors["idf"].numpy(), tensors["mean"].numpy(),
                       tensors["components"].numpy())
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: not a readable LSA encoder ({' '.join(str(exc).split())})") from None

    def extra_repr(self) -> str:
        return f"terms={len(self.vocabulary)}, dim={self.embed_dim}"
