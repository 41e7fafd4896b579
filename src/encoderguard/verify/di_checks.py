"""The owner's checks of a dataset-inference test: does it detect the owner's own encoder (self-check, with the
smallest budget that does), and does it detect a copy the owner steals from its own encoder (copy check)?

Both run owner-side, on a fitted :class:`~encoderguard.verify.dataset_inference.DatasetInference`, and cost no
suspect queries; the copy check is the only part of verification that runs an attack.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from encoderguard.data.image_set import ImageSet
from encoderguard.errors import DataError
from encoderguard.verify.di_results import CopyCheck, SelfCheck
from encoderguard.verify.di_sampling import split_budget

if TYPE_CHECKING:
    from encoderguard.verify.dataset_inference import DatasetInference


def run_self_check(di: DatasetInference, owner: Any, *, budgets: Sequence[int] | None = None,
                   repeats: int = 3) -> SelfCheck:
    """Run the frozen test on the owner's own encoder: can DI protect it, and with how many queries?

    The owner's encoder is queried once on the fitted pool (it is the owner's own model: no suspect queries).
    Smaller budgets are tried on random sub-samples of that pool, shared between members and non-members by
    :func:`split_budget`; null encoders from :meth:`DatasetInference.fit` are sub-sampled alike. The budget ladder uses
    ``max(199, 2 / alpha)`` relabellings (enough to resolve ``p < alpha``) to keep the check fast.

    Args:
        owner: the owner's encoder (``nn.Module`` or EmbeddingAPI).
        budgets: total query budgets (members + non-members) to try (default: a ladder up to the configured
            budget; ``()``: none).
        repeats: random draws per budget.

    Returns:
        :class:`SelfCheck`.
    """
    di._require_fit()
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    owner_members, owner_nonmembers, _ = di.query(owner)
    result = di.test_answers(owner_members, owner_nonmembers)
    m_all, h_all = owner_members.shape[0], owner_nonmembers.shape[0]
    total = m_all + h_all
    if budgets is None:
        budgets = sorted({b for b in (200, 500, 1000, 1500, 2500, 5000) if b < total} | {total})
    ladder = type(di).from_settings(
        di.settings(), n_permutations=min(di.n_permutations, max(199, math.ceil(2 / di.alpha))))
    tried: dict[int, list[float]] = {}
    min_queries: int | None = None
    rng = np.random.default_rng(di.seed + 1)
    for budget in sorted(int(b) for b in budgets):
        if budget < 5:
            continue
        m, h = split_budget(budget, m_all)
        if h > h_all:  # fewer fitted non-members than the share asks for: the rest of the budget to members
            h = h_all
            m = min(m_all, budget - h)
        try:
            di._check_sizes(m, h)
        except DataError:
            continue
        ps = []
        for _ in range(repeats):
            mi = rng.choice(m_all, size=m, replace=False)
            hi = rng.choice(h_all, size=h, replace=False)
            nulls = [(nm[mi], nh[hi]) for nm, nh in getattr(di, "null_answers_", [])]
            try:
                ps.append(ladder.test_answers(owner_members[mi], owner_nonmembers[hi], null_answers=nulls,
                                              seed=int(rng.integers(2**31))).p_value)
            except ValueError:
                ps.append(math.nan)
        tried[m + h] = ps
        if min_queries is None and all(p < di.alpha for p in ps):
            min_queries = m + h
    null_ps = [di.test_answers(nm, nh, null_answers=[]).p_value for nm, nh in di.null_answers_]
    protects = result.p_value < di.alpha
    reason = "" if protects else (
        f"the owner's own encoder shows no membership signal in the '{di.direction}' direction "
        f"(p = {result.p_value:.3g} >= alpha = {di.alpha}, effect {result.effect:+.3f}): dataset inference "
        "cannot detect copies of this model at this query budget")
    return SelfCheck(protects=protects, owner=result, alpha=di.alpha, queries=total, min_queries=min_queries,
                     budgets=tried, null=null_ps, reason=reason, settings=di.settings())


def run_copy_check(di: DatasetInference, owner: Any, query_data: ImageSet, *, loss: str = "infonce",
                   budget: int = 2000, epochs: int = 60, seed: int = 1, progress: bool = False,
                   **attack_kwargs: Any) -> CopyCheck:
    """Steal a copy of the owner's own encoder and run the frozen test on it: can a copy be detected?

    The copy is made like a thief's (:class:`~encoderguard.attacks.StealingAttack`: ``budget`` images of
    ``query_data``, each answered once by the owner's encoder, ``epochs`` of training on the answers), owner-side:
    it costs CPU time (about a minute on 2 cores with the defaults), no suspect queries. The result is kept in
    ``di.copy_check_`` (the copy in ``di.copy_encoder_``); from then on :meth:`DatasetInference.verify` answers
    ``"inconclusive"`` instead of ``"independent"`` when the simulated copy was not detected.

    Args:
        owner: the owner's encoder (``nn.Module``) or an EmbeddingAPI serving it.
        query_data: images a thief would send (the owner's ``query`` split: disjoint from its own data).
        loss, budget, epochs, seed: the simulated attack; ``attack_kwargs`` go to ``StealingAttack``.
        progress: progress bars on stderr.
    """
    import tempfile

    from encoderguard.api import LocalAPI
    from encoderguard.attacks import StealingAttack

    di._require_fit()
    started = time.perf_counter()
    api = LocalAPI(owner) if isinstance(owner, nn.Module) else owner
    with tempfile.TemporaryDirectory(prefix="encoderguard-copy-check-") as cache:
        attack = StealingAttack(api, loss=loss, budget=min(budget, len(query_data)), cache_dir=cache,
                                epochs=epochs, seed=seed, progress=progress, **attack_kwargs)
        stolen = attack.extract(query_data)
    copy = stolen.encoder.eval()
    di.copy_encoder_ = copy  # kept so that the owner can save it and check other tests on it
    members, nonmembers, _ = di.query(copy)
    result = di.test_answers(members, nonmembers)
    detected = bool(result.p_value < di.alpha)
    reason = "" if detected else (
        f"a copy the owner stole from its own encoder ({loss}, {stolen.queries_paid} queries, {epochs} epochs) "
        f"is not detected (p = {result.p_value:.3g} >= alpha = {di.alpha}): copies of this model can go "
        "unnoticed at this query budget, so no 'independent' verdict is given")
    di.copy_check_ = CopyCheck(detected=detected, p_value=result.p_value, z=result.z, effect=result.effect,
                                 loss=loss, budget=stolen.queries_paid, epochs=epochs,
                                 seconds=time.perf_counter() - started, reason=reason, alpha=di.alpha)
    return di.copy_check_


def owner_gated_verdict(di: DatasetInference, p_value: float, details: dict[str, Any], warnings: list[str]) -> str:
    """The verdict of a suspect test with p-value ``p_value``, gated by the owner's checks on ``di``.

    ``"stolen"`` when ``p < alpha`` (unless the self-check found no signal in the owner's own encoder: then
    ``"inconclusive"``); ``"independent"`` becomes ``"inconclusive"`` when the copy check found that a copy of the
    owner goes undetected at this test's alpha (a copy check made at another alpha is re-derived from its p-value).
    Adds what it found to ``details`` and ``warnings``.
    """
    check = di.self_check_
    if check is None:
        verdict = "stolen" if p_value < di.alpha else "independent"
        warnings.append("the owner's own encoder was not self-checked: the test's power is unknown")
    else:
        details["self_check"] = {"protects": check.protects, "owner_p_value": check.owner.p_value,
                                 "owner_effect": check.owner.effect, "owner_z": check.owner.z,
                                 "null_p_values": list(check.null), "seed": check.settings.get("seed"),
                                 "same_draw": check.settings.get("seed") == di.seed}
        if not check.protects:
            verdict = "inconclusive"
            warnings.append(check.reason)
            details["reason"] = check.reason
        else:
            verdict = "stolen" if p_value < di.alpha else "independent"
        if check.null and min(check.null) < di.alpha:
            warnings.append(f"a null encoder (never trained on the owner's data) is flagged on this owner "
                            f"sample without adjustment (p = {min(check.null):.3g}): the sample is atypical")
    copy_check = di.copy_check_
    if copy_check is not None:
        details["copy_check"] = copy_check.to_dict()
        detected, reason = copy_check.detected, copy_check.reason
        if copy_check.alpha != di.alpha:
            # "detected" was decided at the copy check's own alpha; what gates this verdict is its p-value
            # against this test's alpha.
            detected = copy_check.detected_at(di.alpha)
            reason = reason if detected == copy_check.detected else "" if detected else (
                f"a copy the owner stole from its own encoder ({copy_check.loss}, {copy_check.budget} queries) "
                f"is not detected at alpha = {di.alpha} (p = {copy_check.p_value:.3g}): copies of this model "
                "can go unnoticed at this query budget, so no 'independent' verdict is given")
            details["copy_check_rederived"] = {"alpha": di.alpha, "detected": detected}
            made = ("records no alpha" if copy_check.alpha is None
                    else f"was computed at alpha = {copy_check.alpha}")
            warnings.append(f"the copy check {made}; re-derived at this test's alpha = {di.alpha} from its "
                            f"p = {copy_check.p_value:.3g}: the simulated copy is "
                            f"{'' if detected else 'not '}detected")
        if verdict == "independent" and not detected:
            verdict = "inconclusive"
            warnings.append(reason)
            details["reason"] = reason
    return verdict
