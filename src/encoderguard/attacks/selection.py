"""Which of the attacker's images to pay for: random, coverage (k-center) or uncertainty rounds.

Three selections, all spending exactly the budget and all compatible with the pay-once query cache:

- ``"random"``: a seeded random order of the pool (the :class:`~encoderguard.attacks.queries.QueryPlan` default).
- ``"kcenter"``: greedy k-center (farthest-first traversal) on a proxy embedding that costs no queries: the top
  :data:`PROXY_DIM` principal components of the pool's pixels. Each pick is the pool image farthest from every image
  picked so far, so the paid inputs cover the pool. The traversal is deterministic given the seed (which fixes the
  first pick), and its prefix of length ``b`` does not depend on how far it is run: a smaller budget is a prefix of a
  larger one, as with random order.
- ``"rounds"``: the budget is paid in ``R`` rounds of ``budget / R`` queries. Round 1 is random; before each later
  round the copy is trained on every answer paid so far, and the next inputs are those where the copy is least sure
  of itself: among a seeded sample of the unpaid pool, the ``4k`` images whose copy answers spread most across
  :data:`UNCERTAINTY_VIEWS` augmented views (``1 - |mean of the unit answers|``), thinned to ``k`` by farthest-first
  traversal in the copy's space, starting from the paid images (uncertain *and* not redundant).

Resuming: a plan's position ``p`` is always the same image. For ``kcenter`` the order is a pure function of the pool
and the seed. For ``rounds`` the images of the positions already in the cache are read back from the cache (never
recomputed), and only unpaid positions are chosen anew, so a rerun with the same settings pays nothing and a run
killed mid-round pays only for the rest of that round. The selection and its settings are part of the cache
fingerprint (see :meth:`SelectedPlan.to_dict`), so caches of different selections are never mixed.

What a victim can see: any selection other than random changes the query distribution (k-center sends outlying
images, rounds send hard ones), which a monitor of input coverage could detect; training-time tricks (views, mixup,
prototypes) are invisible to the victim.

References:
    - Sener, Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach", ICLR 2018
      (greedy k-center).
    - Pal, Gupta, Shukla, Kanade, Shevade, Ganapathy, "ActiveThief: Model Extraction Using Active Learning and
      Unannotated Public Data", AAAI 2020 (selection rounds for model extraction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from encoderguard.attacks.queries import QueryPlan, query_order
from encoderguard.attacks.query_cache import QueryCache
from encoderguard.data.augment import create_augmentation
from encoderguard.data.image_set import ImageSet

if TYPE_CHECKING:
    from encoderguard.attacks.stealing import StealingAttack

SELECTIONS = ("random", "kcenter", "rounds")
PROXY = "pixel-pca"
PROXY_DIM = 32
UNCERTAINTY_VIEWS = 4
CANDIDATES = 8192
SHORTLIST_FACTOR = 4


def check_selection(selection: str, *, rounds: int = 4, mixup: float = 0.0) -> None:
    """Validate the selection settings of :class:`~encoderguard.attacks.StealingAttack`.

    Raises:
        ValueError: an unknown selection (listing the choices), ``rounds`` not an integer ``>= 1`` or ``mixup`` not
            a finite number ``>= 0`` (quoting the value).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of: {', '.join(SELECTIONS)}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    if isinstance(mixup, bool) or not isinstance(mixup, (int, float)) or not math.isfinite(mixup) or mixup < 0:
        raise ValueError(f"mixup must be a finite number >= 0, got {mixup!r}")


def pixel_pca_features(images: ImageSet, *, dim: int = PROXY_DIM) -> torch.Tensor:
    """The proxy embedding of k-center: the top principal components of the pool's pixels (no queries).

    Args:
        images: the attacker's pool (uint8 ``[N, C, H, W]``).
        dim: number of components (clipped to the pixel count).

    Returns:
        float32 ``[N, min(dim, C*H*W)]``, deterministic (eigendecomposition of the pixel covariance).
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    x = images.images.reshape(len(images), -1).to(torch.float64) / 255.0
    x = x - x.mean(0, keepdim=True)
    _, vectors = torch.linalg.eigh(x.T @ x)
    top = vectors[:, -min(dim, x.shape[1]):].flip(1)
    return (x @ top).to(torch.float32)


def kcenter_order(features: torch.Tensor, k: int, *, seed: int = 0,
                  centres: torch.Tensor | None = None) -> np.ndarray:
    """Greedy k-center (farthest-first traversal): ``k`` row indices, each the row farthest from those before.

    Args:
        features: ``[N, D]`` points.
        k: points to pick, ``0 <= k <= N``.
        seed: picks the first point when ``centres`` is empty.
        centres: ``[M, D]`` points already covered (e.g. paid inputs); the first pick is then the farthest from them.

    Returns:
        int64 ``[k]``, distinct indices in pick order (ties go to the lowest index). The first ``j`` picks of a
        larger ``k`` are the picks for ``j``.

    Raises:
        ValueError: ``k`` out of range or ``features`` not 2-D.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got {list(features.shape)}")
    n = int(features.shape[0])
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..{n}, got {k}")
    points = features.to(torch.float32)
    picks = np.empty(k, dtype=np.int64)
    if k == 0:
        return picks
    if centres is not None and len(centres):
        nearest = torch.cdist(points, centres.to(torch.float32)).min(1).values
        start = 0
    else:
        picks[0] = int(np.random.default_rng(seed).integers(n))
        nearest = (points - points[picks[0]]).pow(2).sum(1).sqrt()
        nearest[picks[0]] = -1.0
        start = 1
    for i in range(start, k):
        picks[i] = int(torch.argmax(nearest))
        nearest = torch.minimum(nearest, (points - points[picks[i]]).pow(2).sum(1).sqrt())
        nearest[picks[i]] = -1.0  # never picked twice, even among duplicates (minimum keeps -1)
    return picks


def copy_spread(copy: torch.nn.Module, images: torch.Tensor, *, augmentation: str = "weak",
                views: int = UNCERTAINTY_VIEWS, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """How unsure the copy is of each image: the spread of its unit answers over augmented views.

    Args:
        copy: the copy (any ``[B, C, H, W] -> [B, D]`` module; run in eval mode).
        images: uint8 ``[N, C, H, W]``.
        augmentation: ``"weak"`` or ``"simclr"`` views.
        views: views per image (``>= 2``).
        batch_size: images per forward pass.

    Returns:
        ``(spread [N], clean [N, D])``: ``1 - |mean over views of the unit answers|`` (0: every view gets the same
        direction) and the copy's unit answer for the clean image.
    """
    if views < 2:
        raise ValueError(f"views must be >= 2, got {views}")
    c, h, w = (int(v) for v in images.shape[1:])
    augment = create_augmentation(augmentation, c, (h, w))
    copy.eval()
    spreads, cleans = [], []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = images[start: start + batch_size].float().div_(255.0)
            mean = torch.stack([F.normalize(copy(augment(x)), dim=1) for _ in range(views)]).mean(0)
            spreads.append(1.0 - mean.norm(dim=1))
            cleans.append(F.normalize(copy(x), dim=1))
    return torch.cat(spreads), torch.cat(cleans)


@dataclass(frozen=True)
class SelectedPlan(QueryPlan):
    """A query plan whose source order was chosen by a selection rather than drawn at random.

    Args:
        selection: ``"kcenter"`` or ``"rounds"``.
        chosen: a permutation of ``range(n_sources)``: position ``p`` sends source ``chosen[p // views]``.
        selection_settings: what else decided the choice (proxy, rounds, budget); part of the cache fingerprint.
    """

    selection: str = "kcenter"
    chosen: tuple[int, ...] = field(default=(), compare=False, repr=False)
    selection_settings: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.selection not in SELECTIONS[1:]:
            raise ValueError(f"unknown selection {self.selection!r}; choose one of: {', '.join(SELECTIONS)}")
        if len(self.chosen) != self.n_sources:
            raise ValueError(f"chosen must order all {self.n_sources} sources, got {len(self.chosen)}")

    def to_dict(self) -> dict[str, Any]:
        """The plan's settings for the cache fingerprint: the base plan's, plus the selection (not the order)."""
        base = {name: getattr(self, name) for name in ("n_sources", "mode", "views", "order", "seed", "augmentation")}
        return {**base, "selection": self.selection, **dict(self.selection_settings)}

    def sources(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= start <= stop <= self.capacity:
            raise ValueError(f"positions {start}..{stop} are outside the plan's 0..{self.capacity}")
        order = np.asarray(self.chosen, dtype=np.int64)
        positions = np.arange(start, stop, dtype=np.int64)
        return order[positions // self.views], positions % self.views


def _complete(picked: list[int] | np.ndarray, n: int, seed: int) -> tuple[int, ...]:
    """``picked`` followed by the other sources in seeded random order: a full permutation of ``range(n)``."""
    picked = [int(i) for i in picked]
    taken = np.zeros(n, dtype=bool)
    taken[picked] = True
    rest = query_order(n, strategy="random", seed=seed)
    return tuple(picked + [int(i) for i in rest if not taken[i]])


def _slots(budget: int, views: int) -> int:
    return math.ceil(budget / views)


def kcenter_plan(attack: StealingAttack, query_data: ImageSet) -> SelectedPlan:
    """The k-center plan of ``attack`` over ``query_data``: farthest-first on the pixel-PCA proxy."""
    views = attack.views if attack.mode == "siamese" else 1
    k = min(_slots(attack.budget, views), len(query_data))
    picks = kcenter_order(pixel_pca_features(query_data), k, seed=attack.seed)
    return SelectedPlan(len(query_data), mode=attack.mode, views=views, order="random", seed=attack.seed,
                        augmentation=attack._victim_aug(attack.augmentation), selection="kcenter",
                        chosen=_complete(picks, len(query_data), attack.seed),
                        selection_settings=(("proxy", PROXY), ("proxy_dim", PROXY_DIM)))


def rounds_plan(attack: StealingAttack, query_data: ImageSet, picked: list[int] | None = None) -> SelectedPlan:
    """The rounds plan with ``picked`` sources first (default: none yet, i.e. the fingerprint-only plan)."""
    views = attack.views if attack.mode == "siamese" else 1
    settings = (("rounds", attack.rounds), ("budget", attack.budget), ("uncertainty_views", UNCERTAINTY_VIEWS),
                ("candidates", CANDIDATES), ("train", {k: v for k, v in attack.settings().items()
                                                        if k not in ("budget", "method")}))
    return SelectedPlan(len(query_data), mode=attack.mode, views=views, order="random", seed=attack.seed,
                        augmentation=attack._victim_aug(attack.augmentation), selection="rounds",
                        chosen=_complete(picked or [], len(query_data), attack.seed), selection_settings=settings)


def round_ends(budget: int, rounds: int) -> list[int]:
    """Plan positions at which each of ``rounds`` rounds ends (the last is ``budget``; rounds differ by <= 1)."""
    return [budget * (r + 1) // rounds for r in range(rounds)]


def pay_in_rounds(attack: StealingAttack, cache: QueryCache, query_data: ImageSet,
                  dim: int) -> tuple[SelectedPlan, int]:
    """Pay ``attack.budget`` queries in ``attack.rounds`` rounds, training the copy between rounds.

    Sources of positions already in ``cache`` are read from it, so a rerun pays nothing and re-trains nothing.

    Returns:
        ``(plan, paid)``: the final plan (its first ``budget`` positions are what was paid) and the queries paid
        by this call.
    """
    from encoderguard.attacks.stealing import fill_cache

    views = attack.views if attack.mode == "siamese" else 1
    n = len(query_data)
    held = cache.prefix_length()
    known = cache.read(min(held, attack.budget)).sources.numpy()
    picked: list[int] = [int(s) for s in known[::views]] if views > 1 else [int(s) for s in known]
    base = query_order(n, strategy="random", seed=attack.seed)
    paid = 0
    for r, end in enumerate(round_ends(attack.budget, attack.rounds)):
        want = min(_slots(end, views), n)
        if len(picked) < want:
            k = want - len(picked)
            if r == 0:
                taken = set(picked)
                picked += [int(i) for i in base if int(i) not in taken][:k]
            else:
                picked += _uncertain_picks(attack, cache, query_data, picked, k, dim, views)
        plan = rounds_plan(attack, query_data, picked)
        paid += fill_cache(attack.api, cache, plan, query_data, end, batch_size=attack.query_batch,
                           progress=attack.progress, description=f"queries (round {r + 1}/{attack.rounds})")
    return rounds_plan(attack, query_data, picked), paid


def _uncertain_picks(attack: StealingAttack, cache: QueryCache, query_data: ImageSet, picked: list[int], k: int,
                     dim: int, views: int) -> list[int]:
    """``k`` unpaid sources where a copy trained on the answers so far is most unsure, thinned for coverage."""
    paid_positions = min(len(picked) * views, cache.prefix_length())
    answers = cache.read(paid_positions)
    copy, _, _ = attack._train(query_data, answers, dim)
    n = len(query_data)
    taken = np.zeros(n, dtype=bool)
    taken[picked] = True
    pool = np.flatnonzero(~taken)
    rng = np.random.default_rng([attack.seed, len(picked)])
    if len(pool) > CANDIDATES:
        pool = np.sort(rng.choice(pool, CANDIDATES, replace=False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(attack.seed * 7_919 + len(picked))
        spread, unit = copy_spread(copy, query_data.images[torch.from_numpy(pool)], augmentation="weak")
        _, paid_unit = copy_spread(copy, query_data.images[torch.tensor(sorted(set(picked)))], augmentation="weak")
    shortlist = torch.argsort(spread, descending=True, stable=True)[: min(len(pool), SHORTLIST_FACTOR * k)]
    thinned = kcenter_order(unit[shortlist], min(k, len(shortlist)), centres=paid_unit)
    return [int(pool[int(shortlist[i])]) for i in thinned]
