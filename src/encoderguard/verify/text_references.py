"""Reference models for a text owner: independent text encoders that calibrate the null of the text tests.

A text owner typically serves a pretrained encoder (``st:all-MiniLM-L6-v2``): it holds no training split, and the
reference recipes of :mod:`encoderguard.verify.references` (SimCLR on images, supervised, autoencoding) do not apply.
The references built here never query the owner's model nor see its answers, and are trained without labels:

- ``lsa``: TF-IDF of words and word pairs projected on a truncated SVD
  (:class:`~encoderguard.models.lsa_encoder.LSAEncoder`), no training beyond the SVD;
- ``simcse``: the small text students (``text-transformer``, ``text-ngram``) trained with unsupervised SimCSE
  (:func:`~encoderguard.train.simcse.train_simcse`), each from its own seed.

Each reference fits on its own random sample of the sentences of the documents *outside* the query half of the
dataset (the owner half of the split: ``owner-train`` and ``owner-heldout`` documents), so it shares no document
with the ``bbc-news:query`` pool from which the serving-time watermark's probes and a thief's queries are drawn.

Threat to validity: these are weaker encoders than the owner's. The only pretrained sentence encoder installable
offline here is MiniLM itself, so the null holds no strong independent sentence encoder (another
sentence-transformers model trained on similar data), which could look closer to MiniLM than these references do.
Owners with access to such models should register them (``encoderguard references add``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from encoderguard.data.sentences import sentence_pool
from encoderguard.data.splits import SplitSpec, load_split
from encoderguard.data.text_set import TextSet
from encoderguard.errors import DataError
from encoderguard.verify.references import DEFAULT_SEED, ReferenceSet

logger = logging.getLogger(__name__)

#: The order in which references are planned: every set of 3 or more holds LSA and SimCSE on both architectures.
TEXT_PLAN: tuple[tuple[str, str], ...] = (("lsa", "lsa"), ("simcse", "text-transformer"), ("simcse", "text-ngram"),
                                          ("lsa", "lsa"), ("simcse", "text-transformer"), ("simcse", "text-ngram"))
LSA_DIMS = (128, 192)
DEFAULT_SENTENCES = 6000
DEFAULT_STEPS = 60


@dataclass(frozen=True)
class TextReferencePlan:
    """How one text reference is made.

    Attributes:
        name: folder and manifest name.
        recipe: ``"lsa"`` or ``"simcse"``.
        arch: ``"lsa"``, ``"text-transformer"`` or ``"text-ngram"``.
        dim: representation size.
        seed: initialisation, sampling and training seed.
        steps: SimCSE optimiser steps (0 for LSA).
    """

    name: str
    recipe: str
    arch: str
    dim: int
    seed: int
    steps: int


def plan_text_references(*, count: int, seed: int = DEFAULT_SEED, dim: int = 384, steps: int = DEFAULT_STEPS
                         ) -> list[TextReferencePlan]:
    """The ``count`` references :func:`build_text_references` makes (a pure function of its inputs).

    Raises:
        ValueError: ``count`` or ``steps`` not a positive integer.
    """
    for label, value in (("count", count), ("steps", steps), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    plans = []
    for i in range(count):
        recipe, arch = TEXT_PLAN[i % len(TEXT_PLAN)]
        size = LSA_DIMS[(i // 3) % len(LSA_DIMS)] if recipe == "lsa" else dim
        plans.append(TextReferencePlan(name=f"ref{i:02d}-{recipe}-{arch.removeprefix('text-')}", recipe=recipe,
                                       arch=arch, dim=size, seed=seed + i, steps=0 if recipe == "lsa" else steps))
    return plans


def reference_sentences(dataset: str = "bbc-news", *, split_seed: int = 0, data_dir: str | None = None) -> TextSet:
    """The sentences text references train on: those of the documents outside the dataset's query half.

    Raises:
        DataError: the dataset holds images.
    """
    parts = []
    for split in ("owner-train", "owner-heldout"):
        docs = load_split(SplitSpec(dataset, split, split_seed, 1), data_dir=data_dir)
        if not isinstance(docs, TextSet):
            raise DataError(f"text references need a text dataset; {dataset!r} holds images")
        parts.append(docs)
    docs = TextSet(parts[0].texts + parts[1].texts, torch.cat([p.labels for p in parts]), f"{dataset}:owner-half",
                   None if any(p.groups is None for p in parts) else torch.cat([p.groups for p in parts if
                                                                                p.groups is not None]))
    return sentence_pool(docs, name=f"{dataset}:owner-half-sentences")


def train_text_reference(plan: TextReferencePlan, pool: TextSet, out_dir: str | os.PathLike[str], *,
                         sentences: int, dataset: str) -> dict[str, Any]:
    """Make one reference in ``out_dir`` and return its manifest entry (a checkpoint, or an ``lsa`` folder)."""
    started = time.perf_counter()
    n = min(sentences, len(pool))
    sample = torch.randperm(len(pool), generator=torch.Generator().manual_seed(plan.seed + 7))[:n]
    texts = pool.inputs(sample)
    info: dict[str, Any] = {"name": plan.name, "path": plan.name, "recipe": plan.recipe, "arch": plan.arch,
                            "seed": plan.seed, "embed_dim": plan.dim, "sentences": n,
                            "data": f"{dataset}: sentences of the documents outside the query half"}
    if plan.recipe == "lsa":
        from encoderguard.models.lsa_encoder import LSAEncoder

        LSAEncoder.fit(texts, dim=plan.dim, seed=plan.seed).save(out_dir)
        info["kind"] = "lsa"
    else:
        from encoderguard.models.card import ModelCard
        from encoderguard.models.checkpoint import save_checkpoint
        from encoderguard.models.registry import create_encoder
        from encoderguard.train.simcse import train_simcse

        torch.manual_seed(plan.seed)
        encoder = create_encoder(plan.arch, input_shape=None, embed_dim=plan.dim)
        losses = train_simcse(encoder, texts, steps=plan.steps, batch_size=32, seed=plan.seed)
        card = ModelCard(arch=plan.arch, arch_kwargs={}, input_shape=None, embed_dim=plan.dim,
                         data={"dataset": dataset, "split": "owner-half-sentences", "max_images": n,
                               "sample_seed": plan.seed + 7},
                         training={"method": "simcse", "seed": plan.seed, "steps": plan.steps,
                                   "losses": losses}, metrics={"train_seconds": time.perf_counter() - started})
        save_checkpoint(out_dir, encoder=encoder.eval(), card=card)
        info.update(kind="checkpoint", steps=plan.steps, final_loss=losses[-1])
    info["seconds"] = time.perf_counter() - started
    return info


def build_text_references(out_dir: str | os.PathLike[str], *, count: int, dataset: str = "bbc-news",
                          split_seed: int = 0, seed: int = DEFAULT_SEED, sentences: int = DEFAULT_SENTENCES,
                          steps: int = DEFAULT_STEPS, dim: int = 384, owner: str | None = None,
                          data_dir: str | None = None, progress: bool = True,
                          on_model: Callable[[dict[str, Any]], None] | None = None) -> ReferenceSet:
    """Make ``count`` independent text references in ``out_dir`` (resumable: finished ones are kept).

    Args:
        out_dir: the reference-set folder.
        count: how many references the set should hold.
        dataset: the text dataset whose non-query documents they train on.
        split_seed: the split seed of the dataset (the query half it stays out of).
        seed: first reference seed.
        sentences: training sentences per reference.
        steps: SimCSE steps per student.
        dim: the students' representation size (LSA uses 128 and 192).
        owner: the owner's model spec, recorded in the manifest (e.g. ``st:all-MiniLM-L6-v2``).
        data_dir: folder of the named datasets.
        progress: log each reference as it starts.
        on_model: called with each new manifest entry.

    Returns:
        The :class:`~encoderguard.verify.references.ReferenceSet`.
    """
    refs = ReferenceSet.create(out_dir)
    if owner is not None and refs.manifest.get("owner") != owner:
        refs.manifest["owner"] = owner
        refs.manifest["owner_data"] = {"dataset": dataset, "split_seed": split_seed, "modality": "text"}
        refs.save()
    plans = plan_text_references(count=count, seed=seed, dim=dim, steps=steps)
    done = set(refs.names())
    pool: TextSet | None = None
    for i, plan in enumerate(plans, 1):
        if plan.name in done:
            continue
        pool = pool or reference_sentences(dataset, split_seed=split_seed, data_dir=data_dir)
        if progress:
            logger.info("[references] %d/%d %s: %s, %d sentences of %s outside the query half, seed %d", i,
                        len(plans), plan.name, plan.recipe, min(sentences, len(pool)), dataset, plan.seed)
        entry = train_text_reference(plan, pool, Path(refs.folder) / plan.name, sentences=sentences,
                                     dataset=dataset)
        refs._add(entry)
        if on_model is not None:
            on_model(entry)
    return refs
