"""Dataset inference (DI): is a suspect encoder the owner's model or derived from it?

The owner's private training images are the signature. The owner holds ``owner-train`` (what its encoder was trained
on) and ``owner-heldout`` (same distribution, never trained on). It asks the suspect for representations of a
random sample of both, mixed in one shuffled batch, and tests whether the suspect's answers separate the two sets.
An independent encoder never saw ``owner-train``; for it the two sets are exchangeable (the owner's split is a seeded
random partition), so any statistic of its answers has the same distribution under a random relabelling of the
pool. A model that memorised ``owner-train``, or a copy stolen from such a model, treats its training images
differently.

Two designs:

- ``design="set"`` (default): every queried member is scored against the other members by nearest-neighbour
  similarity (leave-one-out) and every non-member against the members; the statistic
  ``mean(member scores) - mean(non-member scores)`` is tested by relabelling the pool at random (exact, although the
  scores share one reference set). With null encoders (encoders that cannot carry membership signal, e.g. random
  initialisations of the owner's architecture) the statistic is adjusted by theirs on the same relabellings
  (:func:`~encoderguard.verify.permutation.control_variate_test`): what every encoder sees in this particular
  owner sample is removed, and the test stays exact.
- ``design="split"`` (the seed's): members are split into a reference part A and a test part B; a score fitted on A
  (a Gaussian mixture's log-likelihood, or nearest-neighbour similarity to A) is compared between B and the
  non-members with a one-sided Welch t-test or a permutation test. Given A the scores are independent, so both
  tests are valid; only part of the members is tested.

Scores are computed from the suspect's answers alone. Anything derived from the owner's encoder (for instance a map
of the suspect's answers into the owner's space) would carry the owner's memory of its training set into the test
of an independent suspect and break the test's validity.

Direction and statistic are settings fixed before any suspect is seen (:meth:`DatasetInference.settings`). The
default direction, ``"lower"``, was measured on the owner's own encoder: a small encoder trained to near-zero
contrastive loss at a low temperature pushes its training images apart, so members are *less* similar to each other
(and get *lower* mixture likelihood) than held-out images are to them, the opposite of the seed's assumption. The
owner's self-check (:meth:`DatasetInference.self_check`) runs the same test on the owner's own encoder; when it finds
no signal, :meth:`DatasetInference.verify` answers ``"inconclusive"``: the test could not have detected a copy.

References:
    Dziedzic, Duan, Kaleem, Dhawan, Guan, Cattan, Boenisch, Papernot, "Dataset Inference for Self-Supervised
    Models", NeurIPS 2022.
    Maini, Yaghini, Papernot, "Dataset Inference: Ownership Resolution in Machine Learning", ICLR 2021.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from encoderguard.data.image_set import ImageSet
from encoderguard.errors import APIError, DataError
from encoderguard.verify.membership_scores import (
    GEOMETRIES,
    gmm_scores,
    metric_for,
    neighbour_table,
    nn_scores,
    nn_scores_from_table,
    prepare,
    similarity_matrix,
)
from encoderguard.verify.permutation import (
    control_variate_test,
    mean_difference_permutation_test,
    permutation_p_value,
    permutation_statistics,
)
from encoderguard.verify.two_sample import auc, cohens_d, welch_t_test
from encoderguard.verify.verdict import Verdict

SCORES = ("knn", "gmm")
DESIGNS = ("set", "split")
TESTS = ("permutation", "welch")
DIRECTIONS = ("lower", "higher")
COVARIANCES = ("full", "diag", "spherical", "tied")
# Share of a query budget spent on owner-train images (500 of 2500): the pre-registered setting, validated on a
# held-out split (benchmarks/results_di.md). A larger share looked better at small budgets, but only on that same split.
MEMBER_SHARE = 0.2
CALIBRATION_NOTE = ("the permutation null is exact under the random owner split: for an encoder that never saw "
                    "owner-train, training and held-out images are exchangeable, so P(p < alpha) <= alpha")
WELCH_NOTE = "Welch's t-test is approximate (normal theory); use test='permutation' for an exact p-value"
INDEPENDENT_WARNING = ("'independent' means the test found no evidence of derivation at this query budget; it is not "
                       "a proof of independence")

Answers = tuple[np.ndarray, np.ndarray]  # (member answers [m, D], non-member answers [h, D])


@dataclass(frozen=True)
class DITestResult:
    """One dataset-inference test on one encoder's answers (no verdict yet).

    Attributes:
        p_value: one-sided p-value in the frozen direction.
        statistic: the tested statistic: ``mean(member scores) - mean(non-member scores)`` (set design without null
            encoders and split design with ``test="permutation"``), the null-adjusted standardised statistic (set
            design with null encoders) or Welch's t (``test="welch"``).
        z: the statistic in standard deviations of its permutation null (``nan`` for Welch).
        effect: Cohen's d of member vs non-member scores, signed so that a positive value points in the frozen
            membership direction (evidence of membership); ``< 0`` is the opposite direction.
        auc: probability that a member scores further in the membership direction than a non-member (0.5: none).
        n_members: members whose scores were compared.
        n_nonmembers: non-members whose scores were compared.
        adjustment: for the null-adjusted test, ``{"beta", "rho", "z_unadjusted", "control_z", "null_models"}``
            (see :func:`~encoderguard.verify.permutation.control_variate_test`); empty otherwise.
        member_scores: per-image scores of the compared members (not serialised by :meth:`to_dict`).
        nonmember_scores: per-image scores of the non-members (not serialised).
    """

    p_value: float
    statistic: float
    z: float
    effect: float
    auc: float
    n_members: int
    n_nonmembers: int
    adjustment: dict[str, float] = field(default_factory=dict)
    member_scores: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.empty(0))
    nonmember_scores: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.empty(0))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.endswith("_scores")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DITestResult:
        """Rebuild a result from :meth:`to_dict` (without per-image scores).

        Raises:
            ValueError: a missing or malformed field.
        """
        try:
            return cls(p_value=float(data["p_value"]), statistic=float(data["statistic"]), z=float(data["z"]),
                       effect=float(data["effect"]), auc=float(data["auc"]), n_members=int(data["n_members"]),
                       n_nonmembers=int(data["n_nonmembers"]),
                       adjustment={str(k): float(v) for k, v in dict(data.get("adjustment") or {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a dataset-inference test result ({exc!r})") from exc


@dataclass(frozen=True)
class SelfCheck:
    """What the owner's own encoder says about the test (see :meth:`DatasetInference.self_check`).

    Attributes:
        protects: the owner's encoder is detected (``p < alpha``) at the configured budget; without that, suspect
            verdicts are ``"inconclusive"``.
        owner: the test on the owner's encoder at the configured budget.
        alpha: significance level.
        queries: images the configured test sends to a suspect.
        min_queries: the smallest budget of the ones tried at which the owner's encoder was detected in every one
            of ``repeats`` random draws (``None``: none of them, or none tried). A stolen copy carries a weaker
            signal than its victim, so this is a lower bound for copies.
        budgets: per tried budget, the owner's p-values over the draws.
        null: unadjusted p-values of the test on each null encoder on the same images: none of them can carry
            membership signal, so a small one says the owner's sample is atypical.
        reason: why the owner is not protected (empty when it is).
        settings: the frozen settings of the test.
    """

    protects: bool
    owner: DITestResult
    alpha: float
    queries: int
    min_queries: int | None
    budgets: dict[int, list[float]]
    null: list[float]
    reason: str
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"protects": self.protects, "owner": self.owner.to_dict(), "alpha": self.alpha,
                "queries": self.queries, "min_queries": self.min_queries,
                "budgets": {str(k): v for k, v in self.budgets.items()}, "null_p_values": list(self.null),
                "reason": self.reason, "settings": dict(self.settings)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelfCheck:
        """Rebuild a self-check from :meth:`to_dict` (the owner's per-image scores are not stored).

        Raises:
            ValueError: a missing or malformed field.
        """
        try:
            min_queries = data["min_queries"]
            return cls(protects=bool(data["protects"]), owner=DITestResult.from_dict(data["owner"]),
                       alpha=float(data["alpha"]), queries=int(data["queries"]),
                       min_queries=None if min_queries is None else int(min_queries),
                       budgets={int(k): [float(p) for p in v] for k, v in dict(data["budgets"]).items()},
                       null=[float(p) for p in data["null_p_values"]], reason=str(data["reason"]),
                       settings=dict(data["settings"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a dataset-inference self-check ({exc!r})") from exc


@dataclass(frozen=True)
class CopyCheck:
    """Dataset inference on a copy the owner stole from its own encoder (see :meth:`DatasetInference.copy_check`).

    A copy carries only part of its victim's membership signal, so the owner's own detection does not show that
    copies are detected. This check makes one, the way a thief would, and runs the frozen test on it.

    Attributes:
        detected: the test flags the simulated copy (``p < alpha``); without that, ``"independent"`` verdicts
            become ``"inconclusive"``.
        p_value, z, effect: the test on the simulated copy.
        loss, budget, epochs: how the copy was stolen (owner-side: no suspect queries).
        reason: why copies are not protected (empty when they are).
        alpha: the significance level ``detected`` was decided at (``None``: unknown). A test at another alpha
            re-derives ``detected`` from ``p_value`` (:meth:`detected_at`).
    """

    detected: bool
    p_value: float
    z: float
    effect: float
    loss: str
    budget: int
    epochs: int
    seconds: float
    reason: str
    alpha: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def detected_at(self, alpha: float) -> bool:
        """Whether the simulated copy is detected at significance level ``alpha`` (``p_value < alpha``)."""
        return bool(self.p_value < alpha)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CopyCheck:
        try:
            alpha = data.get("alpha")
            return cls(detected=bool(data["detected"]), p_value=float(data["p_value"]), z=float(data["z"]),
                       effect=float(data["effect"]), loss=str(data["loss"]), budget=int(data["budget"]),
                       epochs=int(data["epochs"]), seconds=float(data.get("seconds", 0.0)),
                       reason=str(data.get("reason", "")), alpha=None if alpha is None else float(alpha))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a dataset-inference copy check ({exc!r})") from exc


class DatasetInference:
    """Dataset-inference ownership test through an :class:`~encoderguard.api.EmbeddingAPI`.

    The defaults are the test chosen on a development split (``benchmarks/di_select.py``) and confirmed on a fresh
    one (``benchmarks/di_matrix.py``; numbers in ``benchmarks/results_di.md``).

    Args:
        score: ``"knn"`` (nearest-neighbour similarity to the members; default) or ``"gmm"`` (Gaussian-mixture
            log-likelihood; needs ``design="split"``).
        design: ``"set"`` (leave-one-out scores of all members, set-level permutation test; default) or
            ``"split"`` (reference part / test part of the members, per-image test).
        test: ``"permutation"`` (default; exact) or ``"welch"`` (one-sided Welch t-test; split design only).
        direction: ``"lower"`` (members score lower than non-members: the repulsion of a memorising contrastive
            encoder; default) or ``"higher"`` (the seed's direction).
        geometry: ``"standardised"`` (cosine after per-dimension standardisation of the suspect's answers; default),
            ``"whitened"`` (Mahalanobis distances) or ``"cosine"`` (raw answers); see
            :func:`~encoderguard.verify.membership_scores.prepare`. All are invariant to permuted or
            constant-padded answers; ``"standardised"`` also to per-dimension affine maps, ``"whitened"`` to every
            invertible affine map.
        k: nearest neighbours averaged by the ``knn`` score.
        members: owner-train images sent to the suspect (``None``: all of them).
        nonmembers: owner-heldout images sent to the suspect.
        reference_fraction: share of the members used as the reference part in the split design.
        n_permutations: random relabellings of the permutation test (999 resolves p down to 0.001); the test
            must be able to reach ``p < alpha``: ``1 / (n_permutations + 1) < alpha`` (:func:`min_permutations`).
        adjust: adjust the set-design statistic by the null encoders given to :meth:`fit` (no effect without them).
        gmm_components: mixture components (``score="gmm"``).
        gmm_covariance: ``"full"``, ``"diag"``, ``"spherical"`` or ``"tied"``.
        gmm_pca_dim: principal directions the mixture sees (``None``: all).
        alpha: significance level; ``p < alpha`` gives ``"stolen"``.
        seed: seeds the choice of images, their order, the reference split and the relabellings.

    Raises:
        ValueError: a bad setting (quoted).

    Example:
        >>> di = DatasetInference().fit(members=train, nonmembers=heldout, owner=owner_api)  # doctest: +SKIP
        >>> di.verify(suspect_api).verdict  # doctest: +SKIP
        'stolen'
    """

    def __init__(self, *, score: str = "knn", design: str = "set", test: str = "permutation",
                 direction: str = "lower", geometry: str = "standardised", k: int = 1, members: int | None = 500,
                 nonmembers: int = 2000, reference_fraction: float = 0.5, n_permutations: int = 999,
                 adjust: bool = True, gmm_components: int = 10, gmm_covariance: str = "diag",
                 gmm_pca_dim: int | None = 32, alpha: float = 0.01, seed: int = 0) -> None:
        for name, value, choices in (("score", score, SCORES), ("design", design, DESIGNS), ("test", test, TESTS),
                                     ("direction", direction, DIRECTIONS), ("geometry", geometry, GEOMETRIES),
                                     ("gmm_covariance", gmm_covariance, COVARIANCES)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if score == "gmm" and design != "split":
            raise ValueError(f"score 'gmm' needs design='split' (a mixture is fitted on a reference part), got "
                             f"design={design!r}")
        if design == "set" and test != "permutation":
            raise ValueError(f"design 'set' is tested by permutation only (its scores are not independent), got "
                             f"test={test!r}")
        for label, number, low in (("k", k, 1), ("nonmembers", nonmembers, 2),
                                   ("n_permutations", n_permutations, 1), ("gmm_components", gmm_components, 1),
                                   ("seed", seed, 0)):
            if isinstance(number, bool) or not isinstance(number, int) or number < low:
                raise ValueError(f"{label} must be an int >= {low}, got {number!r}")
        if members is not None and (isinstance(members, bool) or not isinstance(members, int) or members < 3):
            raise ValueError(f"members must be an int >= 3 or None, got {members!r}")
        if gmm_pca_dim is not None and (isinstance(gmm_pca_dim, bool) or not isinstance(gmm_pca_dim, int)
                                        or gmm_pca_dim < 1):
            raise ValueError(f"gmm_pca_dim must be a positive int or None, got {gmm_pca_dim!r}")
        if not isinstance(adjust, bool):
            raise ValueError(f"adjust must be True or False, got {adjust!r}")
        if not (isinstance(reference_fraction, (int, float)) and 0 < reference_fraction < 1):
            raise ValueError(f"reference_fraction must be in (0, 1), got {reference_fraction!r}")
        if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        if test == "permutation" and not 1 / (n_permutations + 1) < alpha:
            raise ValueError(f"n_permutations={n_permutations} cannot give p < alpha={alpha} (the smallest "
                             f"permutation p-value is 1/(1 + n_permutations) = {1 / (n_permutations + 1):.3g}); "
                             f"use at least {min_permutations(alpha)}")
        self.score = score
        self.design = design
        self.test = test
        self.direction = direction
        self.geometry = geometry
        self.k = k
        self.members = members
        self.nonmembers = nonmembers
        self.reference_fraction = float(reference_fraction)
        self.n_permutations = n_permutations
        self.adjust = adjust
        self.gmm_components = gmm_components
        self.gmm_covariance = gmm_covariance
        self.gmm_pca_dim = gmm_pca_dim
        self.alpha = float(alpha)
        self.seed = seed

    # -- settings --------------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The frozen settings (JSON-serialisable); ``DatasetInference(**settings)`` rebuilds the same test."""
        return {"score": self.score, "design": self.design, "test": self.test, "direction": self.direction,
                "geometry": self.geometry, "k": self.k, "members": self.members, "nonmembers": self.nonmembers,
                "reference_fraction": self.reference_fraction, "n_permutations": self.n_permutations,
                "adjust": self.adjust, "gmm_components": self.gmm_components,
                "gmm_covariance": self.gmm_covariance, "gmm_pca_dim": self.gmm_pca_dim, "alpha": self.alpha,
                "seed": self.seed}

    @classmethod
    def from_settings(cls, settings: dict[str, Any], **overrides: Any) -> DatasetInference:
        """Rebuild a test from :meth:`settings` (unknown keys raise ``ValueError`` listing the valid ones)."""
        merged = {**settings, **overrides}
        valid = set(cls().settings())
        unknown = sorted(set(merged) - valid)
        if unknown:
            raise ValueError(f"unknown dataset-inference settings {unknown}; valid: {sorted(valid)}")
        return cls(**merged)

    # -- fitting ---------------------------------------------------------------------------------------------
    def fit(self, *, members: ImageSet | torch.Tensor, nonmembers: ImageSet | torch.Tensor,
            owner: Any | None = None, null_models: Sequence[Any] = (), self_check: SelfCheck | None = None,
            copy_check: CopyCheck | None = None) -> DatasetInference:
        """Draw the images the suspect will be asked about; answer them with the null encoders and the owner.

        Args:
            members: the owner's training images (``owner-train``), uint8 ImageSet or float ``[N, C, H, W]``
                in ``[0, 1]``.
            nonmembers: held-out images of the same distribution (``owner-heldout``).
            owner: the owner's encoder (an ``nn.Module`` or an EmbeddingAPI): its self-check runs on the images
                drawn here, the suspect's draw. ``None`` skips it.
            null_models: encoders that never saw the owner's data (random initialisations of the owner's
                architecture, independently trained reference encoders), queried here once; the set design adjusts
                every test by their statistics, and the self-check reports their own p-values.
            self_check: a frozen self-check to gate verdicts with instead of running one (give ``owner`` or
                ``self_check``, not both). It should come from another draw of images (another ``seed``): then
                whether the owner's own model is detected *as a suspect* is a fresh test, not the self-check
                again. Its settings must equal this test's, ``seed`` excepted.
            copy_check: a frozen :class:`CopyCheck` (from :meth:`copy_check` on a test with the same settings).

        Returns:
            ``self``, with ``member_images_``, ``nonmember_images_``, ``order_``, ``null_answers_``,
            ``self_check_`` and ``copy_check_`` set.

        Raises:
            DataError: too few images for the settings, or images of different shapes.
            APIError: a null encoder's answers are unusable.
            ValueError: both ``owner`` and ``self_check``, or a self-check of another test.
        """
        if owner is not None and self_check is not None:
            raise ValueError("give owner (run the self-check on this draw) or self_check (a frozen one), not both")
        if self_check is not None:
            mine = self.settings()
            differ = sorted(k for k in set(mine) | set(self_check.settings)
                            if k != "seed" and self_check.settings.get(k) != mine.get(k))
            if differ:
                raise ValueError("the frozen self-check was made with other settings: "
                                 + ", ".join(f"{k}={self_check.settings.get(k)!r} (this test: {mine.get(k)!r})"
                                             for k in differ))
        train = _as_float(members, "members")
        heldout = _as_float(nonmembers, "nonmembers")
        if train.shape[1:] != heldout.shape[1:]:
            raise DataError(f"member images are {tuple(train.shape[1:])} but non-member images are "
                            f"{tuple(heldout.shape[1:])}")
        n_members = train.shape[0] if self.members is None else self.members
        if train.shape[0] < n_members:
            raise DataError(f"too few owner-train images: {train.shape[0]} available, members={n_members} "
                            "requested")
        if heldout.shape[0] < self.nonmembers:
            raise DataError(f"too few owner-heldout images: {heldout.shape[0]} available, "
                            f"nonmembers={self.nonmembers} requested")
        self._check_sizes(n_members, self.nonmembers)
        rng = np.random.default_rng(self.seed)
        member_idx = np.sort(rng.choice(train.shape[0], size=n_members, replace=False))
        nonmember_idx = np.sort(rng.choice(heldout.shape[0], size=self.nonmembers, replace=False))
        self.member_images_ = train[torch.from_numpy(member_idx)]
        self.nonmember_images_ = heldout[torch.from_numpy(nonmember_idx)]
        # One shuffled batch: the suspect cannot tell members from non-members by their position.
        self.order_ = rng.permutation(n_members + self.nonmembers)
        self.null_answers_: list[Answers] = []
        for model in null_models:
            m, h, _ = self.query(model)
            self.null_answers_.append((m, h))
        self._null_cache: dict[tuple[Any, ...], tuple[np.ndarray, list[Answers]]] = {}
        self.self_check_: SelfCheck | None = self_check
        self.copy_check_: CopyCheck | None = copy_check
        if owner is not None:
            self.self_check_ = self.self_check(owner, budgets=())
        return self

    def _check_sizes(self, n_members: int, n_nonmembers: int) -> None:
        if n_nonmembers < 2:
            raise DataError(f"too few non-members: {n_nonmembers} (need >= 2)")
        if self.design == "split":
            n_ref = int(round(n_members * self.reference_fraction))
            if n_ref < 2 or n_members - n_ref < 2:
                raise DataError(f"too few members for the split design: {n_members} members give a reference "
                                f"part of {n_ref} and a test part of {n_members - n_ref} (need >= 2 each)")
            if self.score == "knn" and n_ref <= self.k:
                raise DataError(f"too few reference members ({n_ref}) for k={self.k} nearest neighbours")
            if self.score == "gmm" and n_ref < 2 * self.gmm_components:
                raise DataError(f"too few samples for the mixture: a reference part of {n_ref} members cannot fit "
                                f"{self.gmm_components} components (need at least {2 * self.gmm_components}); "
                                "query more owner-train images or use fewer components")
        elif n_members <= self.k:
            raise DataError(f"too few members ({n_members}) for k={self.k} nearest neighbours")

    # -- querying --------------------------------------------------------------------------------------------
    def query(self, api: Any) -> tuple[np.ndarray, np.ndarray, int]:
        """Ask ``api`` (an EmbeddingAPI or an ``nn.Module``) for the pool in its shuffled order.

        Returns:
            ``(member_answers [m, D], nonmember_answers [h, D], queries_used)``.

        Raises:
            APIError: the answers have the wrong count or shape, or contain NaN/inf.
        """
        self._require_fit()
        pool = torch.cat([self.member_images_, self.nonmember_images_])[torch.from_numpy(self.order_)]
        before = _queries_used(api)
        answers = _embed(api, pool)
        after = _queries_used(api)
        used = after - before if before is not None and after is not None else pool.shape[0]
        arr = _check_answers(answers, pool.shape[0])
        unshuffled = np.empty_like(arr)
        unshuffled[self.order_] = arr
        m = self.member_images_.shape[0]
        return unshuffled[:m], unshuffled[m:], int(used)

    # -- the test --------------------------------------------------------------------------------------------
    def test_answers(self, member_answers: np.ndarray, nonmember_answers: np.ndarray, *,
                     null_answers: Sequence[Answers] | None = None, seed: int | None = None) -> DITestResult:
        """Run the frozen test on answers ``[m, D]`` (members) and ``[h, D]`` (non-members) of one encoder.

        Args:
            member_answers: answers for the member images.
            nonmember_answers: answers for the non-member images, same ``D``.
            null_answers: null encoders' answers for the same images (default: those :meth:`fit` collected; pass
                ``[]`` for an unadjusted test). Used by the set design when ``adjust`` is on.
            seed: seed of the reference split and relabellings (default: the instance's ``seed``).

        Raises:
            ValueError: mismatched shapes, NaN/inf, or too few images for the settings.
        """
        a = np.asarray(member_answers, dtype=np.float64)
        b = np.asarray(nonmember_answers, dtype=np.float64)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
            raise ValueError(f"answers must be [m, D] and [h, D] with equal D, got {a.shape} and {b.shape}")
        self._check_sizes(a.shape[0], b.shape[0])
        seed = self.seed if seed is None else seed
        rng = np.random.default_rng(seed)
        labels = np.zeros(a.shape[0] + b.shape[0], dtype=bool)
        labels[: a.shape[0]] = True
        alternative = "less" if self.direction == "lower" else "greater"
        adjustment: dict[str, float] = {}
        if self.design == "set":
            sim, statistic = self._set_statistic(a, b)
            nulls = list(getattr(self, "null_answers_", [])) if null_answers is None else list(null_answers)
            values = permutation_statistics([statistic], labels, n_permutations=self.n_permutations, seed=rng)[:, 0]
            if self.adjust and nulls:
                controls = self._null_statistics(nulls, labels, seed)
                perm, info = control_variate_test(values, controls, alternative=alternative)
                adjustment = {**info, "null_models": float(len(nulls))}
                p, stat, z = perm.p_value, perm.observed, perm.z
            else:
                null = values[1:]
                p = permutation_p_value(float(values[0]), null, alternative=alternative)
                std = float(null.std(ddof=1))
                stat, z = float(values[0]), (float(values[0]) - float(null.mean())) / std if std > 0 else math.nan
            scores = nn_scores(sim, labels, k=self.k)
            member_scores, nonmember_scores = scores[labels], scores[~labels]
        else:
            features = prepare(np.concatenate([a, b]), self.geometry)
            order = rng.permutation(a.shape[0])
            n_ref = int(round(a.shape[0] * self.reference_fraction))
            ref_idx, test_idx = order[:n_ref], order[n_ref:]
            rows = np.concatenate([test_idx, np.arange(a.shape[0], features.shape[0])])
            if self.score == "knn":
                sim = similarity_matrix(features, metric=metric_for(self.geometry))
                scores = nn_scores(sim, ref_idx, k=self.k, rows=rows)
            else:
                scores = gmm_scores(features[ref_idx], features[rows], n_components=self.gmm_components,
                                    covariance_type=self.gmm_covariance, pca_dim=self.gmm_pca_dim, seed=self.seed)
            member_scores, nonmember_scores = scores[: test_idx.size], scores[test_idx.size:]
            if self.test == "welch":
                stat, _, p = welch_t_test(member_scores, nonmember_scores, alternative=alternative)
                z = math.nan
            else:
                result = mean_difference_permutation_test(member_scores, nonmember_scores,
                                                          n_permutations=self.n_permutations,
                                                          alternative=alternative, seed=rng)
                p, stat, z = result.p_value, result.observed, result.z
        sign = -1.0 if self.direction == "lower" else 1.0
        d = cohens_d(member_scores, nonmember_scores)
        area = auc(member_scores, nonmember_scores)
        return DITestResult(p_value=float(p), statistic=float(stat), z=float(z), effect=sign * d,
                            auc=area if sign > 0 else 1.0 - area, n_members=int(member_scores.size),
                            n_nonmembers=int(nonmember_scores.size), adjustment=adjustment,
                            member_scores=member_scores, nonmember_scores=nonmember_scores)

    def _set_statistic(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Any]:
        """Similarity matrix of the pool and the set statistic ``mask -> mean member score - mean non-member``."""
        features = prepare(np.concatenate([a, b]), self.geometry)
        sim = similarity_matrix(features, metric=metric_for(self.geometry))
        n, k = features.shape[0], self.k
        # Wide enough that a row almost never runs out of members before its k-th one (then it falls back).
        table = neighbour_table(sim, width=min(n - 1, int(math.ceil(8 * k * n / a.shape[0])) + 32))

        def statistic(mask: np.ndarray) -> float:
            s = nn_scores_from_table(table, sim, mask, k=k)
            return float(s[mask].mean() - s[~mask].mean())

        return sim, statistic

    def _null_statistics(self, nulls: Sequence[Answers], labels: np.ndarray, seed: int) -> np.ndarray:
        """The set statistic of every null encoder on the same labellings as the suspect's (same seed).

        The last two results are cached per (seed, answer arrays): the owner's self-check and every suspect tested
        on the same pool share one computation.
        """
        key = (seed, int(labels.sum()), labels.size, tuple(id(x) for pair in nulls for x in pair))
        cache = self.__dict__.setdefault("_null_cache", {})
        if key in cache:
            return cache[key][0]
        while len(cache) >= 2:
            cache.pop(next(iter(cache)))
        statistics = [self._set_statistic(np.asarray(m, dtype=np.float64), np.asarray(h, dtype=np.float64))[1]
                      for m, h in nulls]
        controls = permutation_statistics(statistics, labels, n_permutations=self.n_permutations,
                                          seed=np.random.default_rng(seed))
        cache[key] = (controls, list(nulls))  # keeping the arrays alive keeps their ids unique
        return controls

    # -- self-check ------------------------------------------------------------------------------------------
    def self_check(self, owner: Any, *, budgets: Sequence[int] | None = None, repeats: int = 3) -> SelfCheck:
        """Run the frozen test on the owner's own encoder: can DI protect it, and with how many queries?

        The owner's encoder is queried once on the fitted pool (it is the owner's own model: no suspect queries).
        Smaller budgets are tried on random sub-samples of that pool, shared between members and non-members by
        :func:`split_budget`; null encoders from :meth:`fit` are sub-sampled alike. The budget ladder uses
        ``max(199, 2 / alpha)`` relabellings (enough to resolve ``p < alpha``) to keep the check fast.

        Args:
            owner: the owner's encoder (``nn.Module`` or EmbeddingAPI).
            budgets: total query budgets (members + non-members) to try (default: a ladder up to the configured
                budget; ``()``: none).
            repeats: random draws per budget.

        Returns:
            :class:`SelfCheck`.
        """
        self._require_fit()
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive int, got {repeats!r}")
        owner_members, owner_nonmembers, _ = self.query(owner)
        result = self.test_answers(owner_members, owner_nonmembers)
        m_all, h_all = owner_members.shape[0], owner_nonmembers.shape[0]
        total = m_all + h_all
        if budgets is None:
            budgets = sorted({b for b in (200, 500, 1000, 1500, 2500, 5000) if b < total} | {total})
        ladder = DatasetInference.from_settings(
            self.settings(), n_permutations=min(self.n_permutations, max(199, math.ceil(2 / self.alpha))))
        tried: dict[int, list[float]] = {}
        min_queries: int | None = None
        rng = np.random.default_rng(self.seed + 1)
        for budget in sorted(int(b) for b in budgets):
            if budget < 5:
                continue
            m, h = split_budget(budget, m_all)
            if h > h_all:  # fewer fitted non-members than the share asks for: the rest of the budget to members
                h = h_all
                m = min(m_all, budget - h)
            try:
                self._check_sizes(m, h)
            except DataError:
                continue
            ps = []
            for _ in range(repeats):
                mi = rng.choice(m_all, size=m, replace=False)
                hi = rng.choice(h_all, size=h, replace=False)
                nulls = [(nm[mi], nh[hi]) for nm, nh in getattr(self, "null_answers_", [])]
                try:
                    ps.append(ladder.test_answers(owner_members[mi], owner_nonmembers[hi], null_answers=nulls,
                                                  seed=int(rng.integers(2**31))).p_value)
                except ValueError:
                    ps.append(math.nan)
            tried[m + h] = ps
            if min_queries is None and all(p < self.alpha for p in ps):
                min_queries = m + h
        null_ps = [self.test_answers(nm, nh, null_answers=[]).p_value for nm, nh in self.null_answers_]
        protects = result.p_value < self.alpha
        reason = "" if protects else (
            f"the owner's own encoder shows no membership signal in the '{self.direction}' direction "
            f"(p = {result.p_value:.3g} >= alpha = {self.alpha}, effect {result.effect:+.3f}): dataset inference "
            "cannot detect copies of this model at this query budget")
        return SelfCheck(protects=protects, owner=result, alpha=self.alpha, queries=total, min_queries=min_queries,
                         budgets=tried, null=null_ps, reason=reason, settings=self.settings())

    # -- verification ----------------------------------------------------------------------------------------
    def copy_check(self, owner: Any, query_data: ImageSet, *, loss: str = "infonce", budget: int = 2000,
                   epochs: int = 60, seed: int = 1, progress: bool = False, **attack_kwargs: Any) -> CopyCheck:
        """Steal a copy of the owner's own encoder and run the frozen test on it: can a copy be detected?

        The copy is made like a thief's (:class:`~encoderguard.attacks.StealingAttack`: ``budget`` images of
        ``query_data``, each answered once by the owner's encoder, ``epochs`` of training on the answers), owner-side:
        it costs CPU time (about a minute on 2 cores with the defaults), no suspect queries. The result is kept in
        ``copy_check_``; from then on :meth:`verify` answers ``"inconclusive"`` instead of ``"independent"`` when
        the simulated copy was not detected.

        Args:
            owner: the owner's encoder (``nn.Module``) or an EmbeddingAPI serving it.
            query_data: images a thief would send (the owner's ``query`` split: disjoint from its own data).
            loss, budget, epochs, seed: the simulated attack; ``attack_kwargs`` go to ``StealingAttack``.
            progress: progress bars on stderr.
        """
        import tempfile

        from encoderguard.api import LocalAPI
        from encoderguard.attacks import StealingAttack

        self._require_fit()
        started = time.perf_counter()
        api = LocalAPI(owner) if isinstance(owner, nn.Module) else owner
        with tempfile.TemporaryDirectory(prefix="encoderguard-copy-check-") as cache:
            attack = StealingAttack(api, loss=loss, budget=min(budget, len(query_data)), cache_dir=cache,
                                    epochs=epochs, seed=seed, progress=progress, **attack_kwargs)
            stolen = attack.extract(query_data)
        copy = stolen.encoder.eval()
        self.copy_encoder_ = copy  # kept so that the owner can save it and check other tests on it
        members, nonmembers, _ = self.query(copy)
        result = self.test_answers(members, nonmembers)
        detected = bool(result.p_value < self.alpha)
        reason = "" if detected else (
            f"a copy the owner stole from its own encoder ({loss}, {stolen.queries_paid} queries, {epochs} epochs) "
            f"is not detected (p = {result.p_value:.3g} >= alpha = {self.alpha}): copies of this model can go "
            "unnoticed at this query budget, so no 'independent' verdict is given")
        self.copy_check_ = CopyCheck(detected=detected, p_value=result.p_value, z=result.z, effect=result.effect,
                                     loss=loss, budget=stolen.queries_paid, epochs=epochs,
                                     seconds=time.perf_counter() - started, reason=reason, alpha=self.alpha)
        return self.copy_check_

    def verify(self, suspect: Any) -> Verdict:
        """Test a suspect (an EmbeddingAPI, or an ``nn.Module`` for local experiments).

        The per-image scores behind the verdict are kept in ``last_result_`` (for plots).

        Returns:
            :class:`~encoderguard.verify.verdict.Verdict` with ``method="di"``. ``"stolen"`` when ``p < alpha``;
            ``"inconclusive"`` when the self-check found no signal in the owner's own encoder, or when ``p >= alpha``
            and a :meth:`copy_check` found that a copy of the owner goes undetected (at this test's alpha: a copy
            check made at another alpha is re-derived from its p-value, with a warning); otherwise
            ``"independent"`` (no evidence, with a warning saying so). ``details["calibrated"]`` says whether the
            p-value is exact under the null hypothesis (permutation tests: yes, by the random owner split).

        Raises:
            APIError: unusable suspect answers (wrong count or shape, NaN/inf).
        """
        self._require_fit()
        started = time.perf_counter()
        members, nonmembers, used = self.query(suspect)
        result = self.test_answers(members, nonmembers)
        self.last_result_ = result
        warnings: list[str] = []
        check = self.self_check_
        details: dict[str, Any] = {
            "score": self.score, "design": self.design, "test": self.test, "direction": self.direction,
            "geometry": self.geometry, "z": result.z, "auc": result.auc, "n_members": result.n_members,
            "n_nonmembers": result.n_nonmembers, "suspect_dim": int(members.shape[1]),
            "adjustment": dict(result.adjustment),
            "effect_kind": "Cohen's d of member vs non-member scores, positive in the membership direction",
            "statistic_kind": _statistic_kind(self.design, self.test, bool(result.adjustment)),
            "settings": self.settings(), "seconds": None,
            "calibrated": self.test == "permutation",
            "calibration": CALIBRATION_NOTE if self.test == "permutation" else WELCH_NOTE,
        }
        if self.design == "set" and self.adjust and not result.adjustment:
            warnings.append("no null encoders were given: the test is not adjusted for an atypical owner sample")
        if check is None:
            verdict = "stolen" if result.p_value < self.alpha else "independent"
            warnings.append("the owner's own encoder was not self-checked: the test's power is unknown")
        else:
            details["self_check"] = {"protects": check.protects, "owner_p_value": check.owner.p_value,
                                     "owner_effect": check.owner.effect, "owner_z": check.owner.z,
                                     "null_p_values": list(check.null), "seed": check.settings.get("seed"),
                                     "same_draw": check.settings.get("seed") == self.seed}
            if not check.protects:
                verdict = "inconclusive"
                warnings.append(check.reason)
                details["reason"] = check.reason
            else:
                verdict = "stolen" if result.p_value < self.alpha else "independent"
            if check.null and min(check.null) < self.alpha:
                warnings.append(f"a null encoder (never trained on the owner's data) is flagged on this owner "
                                f"sample without adjustment (p = {min(check.null):.3g}): the sample is atypical")
        copy_check = getattr(self, "copy_check_", None)
        if copy_check is not None:
            details["copy_check"] = copy_check.to_dict()
            detected, reason = copy_check.detected, copy_check.reason
            if copy_check.alpha != self.alpha:
                # "detected" was decided at the copy check's own alpha; what gates this verdict is its p-value
                # against this test's alpha.
                detected = copy_check.detected_at(self.alpha)
                reason = reason if detected == copy_check.detected else "" if detected else (
                    f"a copy the owner stole from its own encoder ({copy_check.loss}, {copy_check.budget} queries) "
                    f"is not detected at alpha = {self.alpha} (p = {copy_check.p_value:.3g}): copies of this model "
                    "can go unnoticed at this query budget, so no 'independent' verdict is given")
                details["copy_check_rederived"] = {"alpha": self.alpha, "detected": detected}
                made = ("records no alpha" if copy_check.alpha is None
                        else f"was computed at alpha = {copy_check.alpha}")
                warnings.append(f"the copy check {made}; re-derived at this test's alpha = {self.alpha} from its "
                                f"p = {copy_check.p_value:.3g}: the simulated copy is "
                                f"{'' if detected else 'not '}detected")
            if verdict == "independent" and not detected:
                verdict = "inconclusive"
                warnings.append(reason)
                details["reason"] = reason
        if verdict == "independent":
            warnings.append(INDEPENDENT_WARNING)
        # Owner-side only: whether this test detects the owner's own model (decides membership of the family in
        # the combined decision, never the suspect's p-value).
        details["can_detect"] = check is None or check.protects
        details.setdefault("reason", None)
        details["seconds"] = time.perf_counter() - started
        return Verdict(method="di", verdict=verdict, p_value=result.p_value, alpha=self.alpha,
                       statistic=result.statistic, effect=result.effect, n=result.n_members + result.n_nonmembers,
                       queries_used=used, warnings=tuple(warnings), details=details)

    def _require_fit(self) -> None:
        if not hasattr(self, "member_images_"):
            raise RuntimeError("call fit(members=..., nonmembers=...) before querying or verifying")


def _statistic_kind(design: str, test: str, adjusted: bool) -> str:
    if test == "welch":
        return "Welch t of member vs non-member scores"
    if adjusted:
        return "standardised mean member - mean non-member score, minus its regression on the null encoders'"
    return "mean member score - mean non-member score"


def owner_data(card: Any, *, data_dir: str | None = None) -> tuple[ImageSet, ImageSet]:
    """The owner's ``owner-train`` and ``owner-heldout`` images, rebuilt from its model card's ``data``.

    Args:
        card: the owner's :class:`~encoderguard.models.ModelCard`.
        data_dir: folder of the named datasets.

    Returns:
        ``(owner_train, owner_heldout)``.

    Raises:
        DataError: the card records no split (dataset, split seed, training-set size), or says the model was trained
            on another split than ``owner-train`` (then ``owner-train`` is not its training data).
    """
    from encoderguard.data.splits import SplitSpec, load_split

    data = getattr(card, "data", None)
    missing = [k for k in ("dataset", "split_seed", "train_size") if not isinstance(data, dict) or k not in data]
    if missing or not isinstance(data, dict):
        raise DataError(f"the owner's card has no split information (missing data.{', data.'.join(missing)}): "
                        "dataset inference needs to know which images the owner trained on (owner-train) and "
                        "which it held out; retrain with 'encoderguard train', which records them")
    split = data.get("split", "owner-train")
    if split != "owner-train":
        raise DataError(f"the owner's card says it was trained on split {split!r}, not 'owner-train': "
                        "owner-train/owner-heldout would not be its training and held-out data")
    spec = SplitSpec.from_dict(data)
    return load_split(spec, data_dir=data_dir), load_split(spec.with_split("owner-heldout"), data_dir=data_dir)


def min_permutations(alpha: float) -> int:
    """The fewest random relabellings ``B`` with which a permutation test can give ``p < alpha``.

    The smallest permutation p-value is ``1 / (B + 1)`` (the observed labelling counts), so ``B`` must satisfy
    ``1 / (B + 1) < alpha`` strictly: 100 at ``alpha = 0.01`` (99 reaches only ``p = 0.01``), 1000 at 0.001.

    Raises:
        ValueError: ``alpha`` outside ``(0, 1)``.
    """
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    b = max(1, math.floor(1 / alpha))
    while not 1 / (b + 1) < alpha:
        b += 1
    while b > 1 and 1 / b < alpha:
        b -= 1
    return b


def split_budget(budget: int, n_train: int, *, member_share: float = MEMBER_SHARE) -> tuple[int, int]:
    """Share a total query budget between owner-train images (members) and held-out images (non-members).

    Members get ``member_share`` of the budget (default 0.2) as long as there are owner-train images left; the rest
    goes to non-members. With 500 owner-train images: 1000 -> 200 + 800, 2500 -> 500 + 2000.

    Args:
        budget: total images to send (``>= 5``).
        n_train: owner-train images available.
        member_share: share of members (capped by ``n_train``).

    Returns:
        ``(members, nonmembers)`` summing to ``budget``.

    Raises:
        ValueError: a budget too small to hold 3 members and 2 non-members.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 5:
        raise ValueError(f"budget must be an int >= 5 (3 members + 2 non-members), got {budget!r}")
    if not 0 < member_share < 1:
        raise ValueError(f"member_share must be in (0, 1), got {member_share!r}")
    members = min(n_train, max(3, int(round(budget * member_share))))
    return members, budget - members


def _as_float(images: ImageSet | torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(images, ImageSet):
        return images.float()
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise DataError(f"{name} must be an ImageSet or a float tensor [N, C, H, W], got "
                        f"{getattr(images, 'shape', type(images).__name__)}")
    if images.dtype == torch.uint8:
        return images.float().div(255.0)
    return images.float()


def _queries_used(api: Any) -> int | None:
    value = getattr(api, "queries_used", None)
    return int(value) if isinstance(value, int) else None


def _embed(api: Any, images: torch.Tensor) -> Any:
    if hasattr(api, "embed"):
        return api.embed(images)
    if isinstance(api, nn.Module):
        from encoderguard.train.probe import encode

        return encode(api, images)
    raise ValueError(f"expected an EmbeddingAPI (with .embed) or an nn.Module, got {type(api).__name__}")


def _check_answers(answers: Any, expected: int) -> np.ndarray:
    if isinstance(answers, torch.Tensor):
        answers = answers.detach().cpu().numpy()
    try:
        arr = np.asarray(answers, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise APIError(f"the suspect's answers are not numeric ({exc})") from exc
    if arr.ndim != 2:
        raise APIError(f"the suspect answered an array of shape {list(arr.shape)}; expected [{expected}, D]")
    if arr.shape[0] != expected:
        raise APIError(f"the suspect answered {arr.shape[0]} embeddings for {expected} images")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise APIError(f"the suspect answered NaN or infinite values for {int(bad.sum())} of {expected} images")
    return arr
