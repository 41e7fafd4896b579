"""The results of dataset-inference tests, as frozen dataclasses that serialise to JSON (and back, for frozen
configs): one test on one encoder's answers, the owner's self-check, and the owner's copy check."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


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
