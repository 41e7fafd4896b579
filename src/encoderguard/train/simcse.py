"""Unsupervised SimCSE for the small text encoders: two noisy reads of a sentence are positives, the batch negatives.

Each sentence is encoded twice in training mode; the two reads differ by the encoder's dropout and by word dropout
(each word removed with probability ``word_dropout``, so that encoders without dropout, such as ``text-ngram``, get
two views too). The loss is InfoNCE over the batch with cosine similarity at temperature ``tau``. No label and no
other model's answers are used: an encoder trained this way is independent of any model it is compared with, which
is what the reference models of the text ownership tests need.

References:
    Gao, Yao and Chen, "SimCSE: Simple Contrastive Learning of Sentence Embeddings", EMNLP 2021.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def drop_words(text: str, p: float, rng: random.Random) -> str:
    """``text`` with each white-space separated word removed with probability ``p`` (at least one word kept)."""
    words = text.split()
    if p <= 0 or len(words) < 2:
        return text
    kept = [w for w in words if rng.random() >= p]
    return " ".join(kept) if kept else rng.choice(words)


def simcse_loss(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE of ``a[i]`` against ``b`` (positive ``b[i]``), cosine similarity over ``tau``; ``a, b``: ``[N, D]``."""
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / tau
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


def train_simcse(encoder: nn.Module, texts: Sequence[str], *, steps: int = 300, batch_size: int = 64,
                 lr: float = 1e-3, tau: float = 0.05, word_dropout: float = 0.1, seed: int = 0,
                 max_chars: int = 400) -> list[float]:
    """Train ``encoder`` (a text encoder: list of strings -> ``[N, D]``) with unsupervised SimCSE, in place.

    Args:
        encoder: the model; left in eval mode.
        texts: the training sentences.
        steps: optimiser steps (each on ``batch_size`` sentences drawn without replacement, epoch by epoch).
        batch_size: sentences per step (the negatives of each positive pair).
        lr: AdamW learning rate.
        tau: temperature.
        word_dropout: probability of removing each word in each view.
        seed: seeds the order, the word dropout and the model's dropout.
        max_chars: texts are cut to this many characters (sentences are shorter; bounds the cost of a document).

    Returns:
        The mean loss of each block of 50 steps (and of the last, shorter block).

    Raises:
        ValueError: fewer than two texts, or a setting out of range.
    """
    if len(texts) < 2:
        raise ValueError(f"SimCSE needs at least 2 texts, got {len(texts)}")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "batch_size" else 1):
            raise ValueError(f"{name} must be a positive integer (batch_size >= 2), got {value!r}")
    if not 0 <= word_dropout < 1:
        raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout!r}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    pool = [t[:max_chars] for t in texts]
    order: list[int] = []
    optimiser = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=0.01)
    encoder.train()
    losses: list[float] = []
    block: list[float] = []
    for step in range(steps):
        if len(order) < batch_size:
            fresh = list(range(len(pool)))
            rng.shuffle(fresh)
            order += fresh
        batch = [pool[i] for i in order[:batch_size]]
        del order[:batch_size]
        a = encoder([drop_words(t, word_dropout, rng) for t in batch])
        b = encoder([drop_words(t, word_dropout, rng) for t in batch])
        loss = (simcse_loss(a, b, tau) + simcse_loss(b, a, tau)) / 2
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        block.append(float(loss.detach()))
        if len(block) == 50 or step == steps - 1:
            losses.append(sum(block) / len(block))
            logger.debug("simcse step %d/%d loss %.4f", step + 1, steps, losses[-1])
            block = []
    encoder.eval()
    return losses
