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
from typing import Any

import numpy as np
import torch

from encoderguard.data.image_set import ImageSet
from encoderguard.errors import DataError
from encoderguard.models.encoder import Encoder
from encoderguard.verify.answers import check_answers, embed_any, queries_used
from encoderguard.verify.di_checks import owner_gated_verdict
from encoderguard.verify.di_results import CopyCheck, DITestResult, SelfCheck
from encoderguard.verify.di_sampling import MEMBER_SHARE, float_images, min_permutations, split_budget
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

__all__ = ["MEMBER_SHARE", "CopyCheck", "DITestResult", "DatasetInference", "SelfCheck", "min_permutations",
           "split_budget"]

SCORES = ("knn", "gmm")
DESIGNS = ("set", "split")
TESTS = ("permutation", "welch")
DIRECTIONS = ("lower", "higher")
COVARIANCES = ("full", "diag", "spherical", "tied")
CALIBRATION_NOTE = ("the permutation null is exact under the random owner split: for an encoder that never saw "
                    "owner-train, training and held-out images are exchangeable, so P(p < alpha) <= alpha")
WELCH_NOTE = "Welch's t-test is approximate (normal theory); use test='permutation' for an exact p-value"
INDEPENDENT_WARNING = ("'independent' means the test found no evidence of derivation at this query budget; it is not "
                       "a proof of independence")

Answers = tuple[np.ndarray, np.ndarray]  # (member answers [m, D], non-member answers [h, D])


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
    def fit(self, *, members: ImageSet | torch.Tensor | np.ndarray, nonmembers: ImageSet | torch.Tensor | np.ndarray,
            owner: Any | None = None, null_models: Sequence[Any] = (), self_check: SelfCheck | None = None,
            copy_check: CopyCheck | None = None) -> DatasetInference:
        """Draw the images the suspect will be asked about; answer them with the null encoders and the owner.

        Args:
            members: the owner's training images (``owner-train``): an ImageSet, or a uint8 (``0..255``) or float
                (``[0, 1]``) tensor or numpy array ``[N, C, H, W]``.
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
        train = float_images(members, "members")
        heldout = float_images(nonmembers, "nonmembers")
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
        self.copy_encoder_: Encoder | None = None
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
        before = queries_used(api)
        answers = embed_any(api, pool)
        after = queries_used(api)
        used = after - before if before is not None and after is not None else pool.shape[0]
        arr = check_answers(answers, pool.shape[0])
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
        """Run the frozen test on the owner's own encoder (:func:`~encoderguard.verify.di_checks.run_self_check`)."""
        from encoderguard.verify.di_checks import run_self_check

        return run_self_check(self, owner, budgets=budgets, repeats=repeats)

    # -- verification ----------------------------------------------------------------------------------------
    def copy_check(self, owner: Any, query_data: ImageSet, *, loss: str = "infonce", budget: int = 2000,
                   epochs: int = 60, seed: int = 1, progress: bool = False, **attack_kwargs: Any) -> CopyCheck:
        """Steal a copy of the owner's own encoder and test it; kept in ``copy_check_`` and ``copy_encoder_``
        (:func:`~encoderguard.verify.di_checks.run_copy_check`)."""
        from encoderguard.verify.di_checks import run_copy_check

        return run_copy_check(self, owner, query_data, loss=loss, budget=budget, epochs=epochs, seed=seed,
                              progress=progress, **attack_kwargs)

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
        verdict = owner_gated_verdict(self, result.p_value, details, warnings)
        if verdict == "independent":
            warnings.append(INDEPENDENT_WARNING)
        # Owner-side only: whether this test detects the owner's own model (decides membership of the family in
        # the combined decision, never the suspect's p-value).
        details["can_detect"] = self.self_check_ is None or self.self_check_.protects
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
