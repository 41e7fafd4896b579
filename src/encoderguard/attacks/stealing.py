"""Steal an encoder through its embedding API: pay for each query once, then train a copy on the cached answers.

The attack has two phases. **Paying**: the query plan (:class:`~encoderguard.attacks.queries.QueryPlan`) is walked
in batches; every answered batch is written to the on-disk :class:`~encoderguard.attacks.query_cache.QueryCache`
before the next one is sent, so a crash, a kill or a rerun never pays for the same position twice, and a smaller
budget reuses the first answers of a larger cache. **Training**: the copy is trained for many epochs on the cached
answers alone. The victim is never queried during training, so epochs cost CPU time, not queries.

Two ways to use the answers:

- ``mode="clean"`` (default): the victim answers each clean input once; every epoch, the copy sees a fresh
  augmented view of the input (``augmentation``) and is trained towards the victim's answer for the clean input.
- ``mode="siamese"`` (the set-up of Dziedzic et al., ICML 2022): the victim answers ``views`` augmented views of
  each input (each view a paid query, counted in the budget); the copy sees another, fresh view of the same input.

The seed implementation of that siamese set-up re-queries the victim for every batch of every epoch, which costs
``epochs x inputs`` queries; caching costs ``inputs x views`` once (``benchmarks/steal_vs_seed.py`` measures both).

Reference: Dziedzic, Dhawan, Kaleem, Guan, Papernot, "On the Difficulty of Defending Self-Supervised Learning
against Model Extraction", ICML 2022.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.attacks.answer_reuse import sample_prototypes
from encoderguard.attacks.copy_training import train_copy
from encoderguard.attacks.losses import RDALoss, StealingLoss, create_loss
from encoderguard.attacks.queries import QueryPlan, data_digest, image_digest
from encoderguard.attacks.query_cache import CachedAnswers, QueryCache, QueryCacheError
from encoderguard.attacks.selection import check_selection, kcenter_plan, pay_in_rounds, rounds_plan
from encoderguard.data.augment import AUGMENTATIONS
from encoderguard.data.data_set import images_only
from encoderguard.data.image_set import ImageSet
from encoderguard.data.text_set import TextSet
from encoderguard.errors import APIError, DataError
from encoderguard.modality import IMAGE, TEXT, modality_of
from encoderguard.models.encoder import Encoder
from encoderguard.models.heads import projection_head
from encoderguard.models.registry import create_encoder
from encoderguard.progress import progress_bar
from encoderguard.train.distributed import current

DEFAULT_ARCH_KWARGS: dict[str, Any] = {"width": 32, "depth": 4, "pool": "avg"}
#: The copy's architecture when none is given, per modality of the query data.
DEFAULT_ARCH = {IMAGE: "convnet", TEXT: "text-ngram"}
COPY_AUGMENTATIONS = ("none", *AUGMENTATIONS)
# Added to the attack's seed for the copy's initial weights (see StealingAttack.build_copy).
COPY_INIT_OFFSET = 7_919_000


@dataclass(frozen=True)
class StealResult:
    """What :meth:`StealingAttack.extract` produced.

    Attributes:
        encoder: the trained copy (CPU, eval mode).
        projector: the learned map from the copy's space to the victim's (``None`` when not used).
        queries_paid: paid answers the copy was trained on (positions ``0 .. budget-1``, each paid exactly once,
            possibly by an earlier run that filled the cache).
        queries_new: queries this run sent and paid for.
        queries_cached: answers this run took from the cache instead of paying.
        epoch_losses: mean training loss of each epoch.
        query_seconds: time spent paying for answers.
        train_seconds: time spent training the copy.
        seconds: wall time of :meth:`StealingAttack.extract`.
        cache_dir: the query cache directory.
        settings: the attack's settings (recorded in the copy's card).
        paid_sources: int64 ``[queries_paid]``: the query-data index of each paid position.
    """

    encoder: Encoder
    projector: nn.Module | None
    queries_paid: int
    queries_new: int
    queries_cached: int
    epoch_losses: list[float] = field(default_factory=list)
    query_seconds: float = 0.0
    train_seconds: float = 0.0
    seconds: float = 0.0
    cache_dir: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    paid_sources: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable part (everything but the modules)."""
        return {"queries_paid": self.queries_paid, "queries_new": self.queries_new,
                "queries_cached": self.queries_cached, "epochs": len(self.epoch_losses),
                "final_loss": self.epoch_losses[-1] if self.epoch_losses else None,
                "query_seconds": self.query_seconds, "train_seconds": self.train_seconds, "seconds": self.seconds,
                "cache_dir": self.cache_dir, "settings": dict(self.settings)}


class StealingAttack:
    """Extract a copy of the encoder behind an embedding API within a query budget.

    Args:
        api: the victim (any :class:`~encoderguard.api.EmbeddingAPI`: in-process or HTTP).
        loss: stealing loss, a registry name (``mse``, ``cosine``, ``infonce``, ``softnn``, ``wasserstein``,
            ``barlow``) or a :class:`~encoderguard.attacks.losses.StealingLoss` module.
        budget: queries to pay for (``>= 1``); exactly this many positions of the plan are paid, across all runs
            sharing the cache.
        cache_dir: directory of the query cache (created if missing; reopened to resume).
        loss_kwargs: settings of a loss given by name, e.g. ``{"temperature": 0.1}``.
        mode: ``"clean"`` (default; the copy's augmented views reuse the clean input's paid answer) or
            ``"siamese"`` (the victim answers augmented views, each a paid query).
        views: in siamese mode, victim views per input, each a paid query (budget ``b`` buys ``ceil(b / views)``
            inputs); in clean mode, augmented views of each paid input per training step, all trained towards its
            one paid answer (offline: no extra queries).
        order: ``"random"`` (default) or ``"sequential"`` order in which query inputs are spent.
        query_batch: images per request to the API.
        epochs: training epochs over the cached answers.
        min_steps: least number of optimiser steps; small budgets get more epochs to reach it (0: off).
        batch_size: training batch size.
        lr: peak Adam learning rate (cosine decay to 0 over the run).
        weight_decay: Adam weight decay.
        augmentation: the copy's views during training: ``"weak"`` (default for images: crop 0.8-1 + flip),
            ``"simclr"`` or ``"none"`` (default for text, the only choice there); in siamese mode also the
            augmentation of the victim's views (``"none"`` there means ``"simclr"``).
        arch: architecture of the copy (default ``convnet`` for images, ``text-ngram`` for text).
        arch_kwargs: its settings (default for ``convnet``: width 32, depth 4, average pooling; otherwise the
            architecture's own defaults).
        embed_dim: representation size of the copy (default: the victim's).
        projection: learn a projection head from the copy's space to the victim's; ``None`` (default) uses one
            exactly when ``embed_dim`` differs from the victim's answer size.
        projection_hidden: hidden size of that head.
        seed: seeds the query order, the views, the copy's initialisation and training.
        victim_id: a string identifying the victim (URL, weights digest) stored in the cache fingerprint, so a
            cache is never reused against another victim.
        progress: show progress bars on stderr.
        device: torch device of the copy's training.
        selection: which inputs to pay for: ``"random"`` (default), ``"kcenter"`` (coverage of a pixel-PCA proxy)
            or ``"rounds"`` (uncertainty rounds); see :mod:`encoderguard.attacks.selection`.
        rounds: rounds of ``selection="rounds"`` (``>= 1``).
        mixup: Beta concentration of mixup between paid inputs with mixed targets (0, the default: off).
        prototypes: train towards per-input prototypes (mean unit answer of its paid views); ``None`` (default):
            exactly when the loss is ``rda``.

    Raises:
        ValueError: for a bad setting (quoting it) or an unknown loss (listing the choices).

    Example:
        >>> attack = StealingAttack(api, loss="mse", budget=2000, cache_dir="runs/stolen/query_cache")
        >>> result = attack.extract(load_split(SplitSpec("fashion-mnist", "query")))  # doctest: +SKIP
    """

    def __init__(
        self,
        api: EmbeddingAPI,
        *,
        loss: str | StealingLoss,
        budget: int,
        cache_dir: str | Path,
        loss_kwargs: dict[str, Any] | None = None,
        mode: str = "clean",
        views: int = 1,
        order: str = "random",
        query_batch: int = 256,
        epochs: int = 60,
        min_steps: int = 0,
        batch_size: int = 128,
        lr: float = 2e-3,
        weight_decay: float = 1e-5,
        augmentation: str | None = None,
        arch: str | None = None,
        arch_kwargs: dict[str, Any] | None = None,
        embed_dim: int | None = None,
        projection: bool | None = None,
        projection_hidden: int = 512,
        seed: int = 0,
        victim_id: str = "",
        progress: bool = True,
        device: str = "cpu",
        selection: str = "random",
        rounds: int = 4,
        mixup: float = 0.0,
        prototypes: bool | None = None,
    ) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget must be an integer >= 1, got {budget!r}")
        for name, value, low in (("views", views, 1), ("query_batch", query_batch, 1), ("epochs", epochs, 1),
                                 ("batch_size", batch_size, 2), ("projection_hidden", projection_hidden, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 0:
            raise ValueError(f"min_steps must be an integer >= 0, got {min_steps!r}")
        if embed_dim is not None and (isinstance(embed_dim, bool) or not isinstance(embed_dim, int)
                                      or embed_dim < 1):
            raise ValueError(f"embed_dim must be a positive integer, got {embed_dim!r}")
        for label, number in (("lr", lr), ("weight_decay", weight_decay)):
            if not isinstance(number, (int, float)) or not math.isfinite(number) or number < 0 or (
                    label == "lr" and number == 0):
                raise ValueError(f"{label} must be a finite number {'> 0' if label == 'lr' else '>= 0'}, "
                                 f"got {number!r}")
        self._augmentation_given = augmentation is not None
        augmentation = augmentation or "weak"
        if augmentation not in COPY_AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augmentation!r}; choose one of: {', '.join(COPY_AUGMENTATIONS)}")
        check_selection(selection, rounds=rounds, mixup=mixup)
        self.loss_name = loss if isinstance(loss, str) else type(loss).__name__
        self.loss_fn: StealingLoss = create_loss(loss, **(loss_kwargs or {})) if isinstance(loss, str) else loss
        if not isinstance(self.loss_fn, nn.Module):
            raise ValueError(f"loss must be a registry name or a StealingLoss module, got {loss!r}")
        self.loss_kwargs = dict(loss_kwargs or {})
        # A probe plan validates mode/order/augmentation now rather than at extract time.
        QueryPlan(1, mode=mode, views=views if mode == "siamese" else 1, order=order, seed=seed,
                  augmentation=self._victim_aug(augmentation))
        self.api = api
        self.budget = budget
        self.cache_dir = Path(cache_dir)
        self.mode, self.views, self.order = mode, views, order
        self.query_batch, self.epochs, self.batch_size = query_batch, epochs, batch_size
        self.min_steps = min_steps
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.augmentation = augmentation
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs) if arch_kwargs is not None else (
            dict(DEFAULT_ARCH_KWARGS) if arch in (None, "convnet") else {})
        self.embed_dim = embed_dim
        self.projection = projection
        self.projection_hidden = projection_hidden
        self.seed = seed
        self.victim_id = victim_id
        self.progress = progress
        self.device = device
        self.selection, self.rounds, self.mixup = selection, rounds, float(mixup)
        self.prototypes = isinstance(self.loss_fn, RDALoss) if prototypes is None else bool(prototypes)

    @staticmethod
    def _victim_aug(augmentation: str) -> str:
        return "simclr" if augmentation == "none" else augmentation

    def settings(self) -> dict[str, Any]:
        """The attack's settings, JSON-serialisable (recorded in the copy's card)."""
        return {"method": "stealing", "loss": self.loss_name, "loss_kwargs": self.loss_kwargs,
                "budget": self.budget, "mode": self.mode, "views": self.views, "order": self.order,
                "query_batch": self.query_batch, "epochs": self.epochs, "min_steps": self.min_steps,
                "batch_size": self.batch_size,
                "lr": self.lr, "weight_decay": self.weight_decay, "augmentation": self.augmentation,
                "seed": self.seed, "selection": self.selection, "rounds": self.rounds, "mixup": self.mixup,
                "prototypes": self.prototypes}

    def arch_for(self, query_data: ImageSet | TextSet) -> str:
        """The copy's architecture for ``query_data``: the one given, else the default of its modality."""
        return self.arch or DEFAULT_ARCH[query_data.modality]

    def plan(self, query_data: ImageSet | TextSet) -> QueryPlan:
        """The query plan over ``query_data`` (for ``selection="rounds"``: before any round has chosen)."""
        if self.selection != "random":
            images = images_only(query_data, purpose=f"selection {self.selection!r}")
            return kcenter_plan(self, images) if self.selection == "kcenter" else rounds_plan(self, images)
        return QueryPlan(len(query_data), mode=self.mode, views=self.views if self.mode == "siamese" else 1,
                         order=self.order, seed=self.seed,
                         augmentation=self._victim_aug(self.augmentation))

    def open_cache(self, query_data: ImageSet | TextSet, *, dim: int | None = None) -> QueryCache:
        """Open (or create) the query cache for ``query_data`` against this victim."""
        plan = self.plan(query_data)
        fingerprint = {"victim": self.victim_id, "dim": int(dim if dim is not None else self.api.dim),
                       "input_shape": list(query_data.input_shape) if query_data.input_shape else query_data.modality,
                       "query_data": query_data.name,
                       "query_data_sha256": data_digest(query_data),
                       **{k: v for k, v in plan.to_dict().items() if k != "augmentation" or self.mode == "siamese"}}
        return QueryCache(self.cache_dir, fingerprint=fingerprint)

    def extract(self, query_data: ImageSet | TextSet) -> StealResult:
        """Pay for the budget's answers (resuming from the cache), then train and return the copy.

        Args:
            query_data: the attacker's images (uint8 ``[N, C, H, W]``; labels unused), or texts for a text victim.
                Need not come from the victim's distribution, but must have the victim's modality (and image shape).

        Returns:
            The copy and the accounting of the run.

        Raises:
            DataError: if ``query_data`` has the wrong image shape, or holds fewer inputs than the budget needs.
            QueryCacheError: if the cache is corrupted or was filled with other settings or data.
            APIError: if the API fails; every answer received before the failure stays cached.
        """
        started = time.perf_counter()
        victim_modality = modality_of(self.api)
        if query_data.modality != victim_modality:
            raise DataError(f"query data {query_data.name} holds {query_data.modality} inputs but the victim API "
                            f"takes {victim_modality}")
        if victim_modality == IMAGE:
            victim_shape = tuple(int(v) for v in self.api.input_shape or ())
            if query_data.input_shape != victim_shape:
                raise DataError(f"query data {query_data.name} has images of shape {query_data.input_shape} but "
                                f"the victim API takes {victim_shape}")
        elif self.mode != "clean" or self.selection != "random" or self.mixup > 0 or (
                self._augmentation_given and self.augmentation != "none"):
            raise ValueError("text copies are trained in clean mode with random selection, no mixup and augmentation "
                             f"'none' (got mode {self.mode!r}, selection {self.selection!r}, mixup {self.mixup}, "
                             f"augmentation {self.augmentation!r})")
        plan = self.plan(query_data)
        if self.budget > plan.capacity:
            raise DataError(f"budget {self.budget} exceeds the {plan.capacity} distinct queries {query_data.name} "
                            f"offers ({len(query_data)} images x {plan.views} view(s))")
        dim = int(self.api.dim)
        place = current()  # under torchrun: rank 0 pays, then the other ranks read the cache in turn, paying nothing
        if place.enabled and self.selection == "rounds":
            raise ValueError("selection 'rounds' trains between rounds of paying; run it on one process")
        place.wait_turn()
        with self.open_cache(query_data, dim=dim) as cache:  # locked: a concurrent run on this directory fails
            cached_before = self.budget - sum(b - a for a, b in cache.missing(self.budget))
            if not place.is_main and cached_before < self.budget:
                raise QueryCacheError(f"query cache {cache.path}: rank {place.rank} found unpaid positions after "
                                      "rank 0 paid; only rank 0 pays")
            if self.selection == "rounds":  # choose, pay and train round by round
                plan, new = pay_in_rounds(self, cache, images_only(query_data, purpose="selection 'rounds'"), dim)
            else:
                new = fill_cache(self.api, cache, plan, query_data, self.budget, batch_size=self.query_batch,
                                 progress=self.progress)
            query_seconds = time.perf_counter() - started
            answers = cache.read(self.budget)
        place.end_turn()
        check_answers(answers, plan, query_data, cache.path)
        train_started = time.perf_counter()
        copy, projector, losses = self._train(query_data, answers, dim)
        end = time.perf_counter()
        return StealResult(encoder=copy, projector=projector, queries_paid=self.budget, queries_new=new,
                           queries_cached=cached_before, epoch_losses=losses, query_seconds=query_seconds,
                           train_seconds=end - train_started, seconds=end - started, cache_dir=str(cache.path),
                           settings=self.settings(), paid_sources=answers.sources.clone())

    def build_copy(self, input_shape: tuple[int, int, int] | None, victim_dim: int, *,
                   arch: str | None = None) -> tuple[Encoder, nn.Module | None]:
        """A freshly initialised copy (seeded) and, when needed, its projection head to the victim's space.

        The initialisation is seeded with ``COPY_INIT_OFFSET + seed``, so that a copy never starts from the initial
        weights of an encoder trained with ``train --seed`` of the same number (a thief does not know the owner's
        initialisation, and sharing it would flatter the copy and the watermark test).
        """
        torch.manual_seed(COPY_INIT_OFFSET + self.seed)
        dim = self.embed_dim or victim_dim
        arch = arch or self.arch or DEFAULT_ARCH[IMAGE if input_shape is not None else TEXT]
        copy = create_encoder(arch, input_shape=input_shape, embed_dim=dim, **self.arch_kwargs)
        use_projection = (dim != victim_dim) if self.projection is None else self.projection
        projector = (projection_head(dim, hidden_dim=self.projection_hidden, out_dim=victim_dim)
                     if use_projection else None)
        return copy, projector

    def epochs_for(self, n: int) -> int:
        """Epochs over ``n`` answers: ``epochs``, raised to reach ``min_steps`` optimiser steps."""
        return max(self.epochs, math.ceil(self.min_steps / max(1, math.ceil(n / self.batch_size))))

    def train(self, query_data: ImageSet | TextSet, answers: CachedAnswers,
              victim_dim: int) -> tuple[Encoder, nn.Module | None, list[float]]:
        """Train a fresh copy on paid ``answers`` without querying: what :meth:`extract` does once it has paid.

        Returns the copy, its projection head (or ``None``) and the loss of each epoch.
        """
        return self._train(query_data, answers, victim_dim)

    def _train(self, query_data: ImageSet | TextSet, answers: CachedAnswers,
               victim_dim: int) -> tuple[Encoder, nn.Module | None, list[float]]:
        copy, projector = self.build_copy(query_data.input_shape, victim_dim, arch=self.arch_for(query_data))
        sources, targets = answers.sources, answers.answers
        if self.prototypes:
            sources, targets = sample_prototypes(sources, targets)
        images = query_data.images[sources] if isinstance(query_data, ImageSet) else query_data.inputs(sources)
        losses = train_copy(copy, images, targets, loss=self.loss_fn, projector=projector,
                            epochs=self.epochs_for(len(sources)), batch_size=self.batch_size, lr=self.lr,
                            weight_decay=self.weight_decay, seed=self.seed,
                            augmentation=self.augmentation if isinstance(query_data, ImageSet) else "none",
                            progress=self.progress, device=self.device,
                            views=self.views if self.mode == "clean" else 1, mixup=self.mixup)
        return copy, projector, losses


def fill_cache(api: EmbeddingAPI, cache: QueryCache, plan: QueryPlan, query_data: ImageSet | TextSet, stop: int, *,
               batch_size: int = 256, progress: bool = True, description: str = "queries") -> int:
    """Pay for every position below ``stop`` that ``cache`` lacks, one batch at a time, persisting each answer.

    Args:
        api: the victim.
        cache: where answers go (each batch is on disk before the next is sent).
        plan: the query plan.
        query_data: the plan's source images.
        stop: positions ``0 .. stop-1`` must be paid for when this returns.
        batch_size: images per request.
        progress: progress bar on stderr.
        description: label of the progress bar.

    Returns:
        The number of queries paid by this call.

    Raises:
        APIError: if the API fails or answers something malformed; the message says how many answers are cached.
    """
    gaps = cache.missing(stop)
    todo = sum(b - a for a, b in gaps)
    paid = 0
    with progress_bar(progress and todo > 0) as bar:
        task = bar.add_task(description, total=stop, completed=stop - todo, info="")
        for gap_start, gap_stop in gaps:
            for start in range(gap_start, gap_stop, batch_size):
                end = min(start + batch_size, gap_stop)
                inputs = plan.inputs(query_data, start, end)
                try:
                    answers = api.embed(inputs)
                except APIError as exc:
                    raise APIError(f"the victim API failed after {paid} new queries ({stop - todo + paid} of {stop} "
                                   f"answers are cached in {cache.path}; rerun to resume): {exc}",
                                   status=exc.status) from exc
                answers = torch.as_tensor(answers)
                if answers.ndim != 2 or answers.shape[0] != end - start or answers.shape[1] != cache.dim:
                    raise APIError(f"the victim API answered shape {list(answers.shape)} for {end - start} "
                                   f"images; expected [{end - start}, {cache.dim}]")
                sources, views = plan.sources(start, end)
                digests = torch.tensor(np.frombuffer(b"".join(image_digest(x) for x in inputs), dtype=np.uint8)
                                       .reshape(-1, 32).copy())
                cache.append(start, sources=torch.from_numpy(sources), views=torch.from_numpy(views),
                             input_sha256=digests, answers=answers)
                paid += end - start
                bar.update(task, advance=end - start, info=f"{paid} paid")
    return paid


def check_answers(answers: CachedAnswers, plan: QueryPlan, query_data: ImageSet | TextSet,
                  where: str | Path) -> None:
    """Check that cached answers belong to the plan's inputs: sources, views and input digests.

    Raises:
        QueryCacheError: at the first position whose record does not match what the plan sends there.
    """
    n = len(answers)
    if n == 0:
        return
    sources, views = plan.sources(0, n)
    bad = np.flatnonzero((answers.sources.numpy() != sources) | (answers.views.numpy() != views))
    if bad.size == 0:
        for start in range(0, n, 1024):
            inputs = plan.inputs(query_data, start, min(start + 1024, n))
            for offset, image in enumerate(inputs):
                if image_digest(image) != bytes(answers.input_sha256[start + offset].tolist()):
                    bad = np.array([start + offset])
                    break
            if bad.size:
                break
    if bad.size:
        raise QueryCacheError(f"query cache {where}: the answer cached for position {int(bad[0])} was paid for "
                              "another input than the plan sends there; delete the cache to start over")
