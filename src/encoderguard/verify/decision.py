"""One decision per suspect: combine the ownership tests' p-values with family-wise error at most alpha.

Acting when either of two tests at level alpha says "stolen" accuses up to 2 x alpha of innocent suspects. The
decision instead applies Holm-Bonferroni to the family of tests that can decide (calibrated, and able to detect the
owner's own model): "stolen" when the smallest p-value is below ``alpha / m``, which keeps the probability of
accusing an innocent suspect at most ``alpha`` whatever the dependence between the tests. Which tests form the family
depends only on the owner's side (calibration, self-checks), never on the suspect's p-values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from encoderguard.verify.stats import holm_adjust
from encoderguard.verify.verdict import Verdict

NOT_APPLICABLE = "not applicable"
DECISIONS = ("stolen", "independent", "inconclusive")


@dataclass(frozen=True)
class MethodResult:
    """One method's outcome as the decision sees it.

    Attributes:
        method: ``"watermark"``, ``"di"``, ...
        verdict: the method's own verdict at alpha, or ``"not applicable"``.
        p_value: its p-value (``None`` when it did not run).
        calibrated: its null was checked (reference models, or an exact permutation null).
        can_detect: the owner-side check says it could detect a copy (owner's own model detected).
        reason: why it is inconclusive or not applicable (``None`` otherwise).
        details: the method's full result.
        sees_copies: whether it detected a copy the owner stole from its own model (``None``: not checked).
    """

    method: str
    verdict: str
    p_value: float | None
    calibrated: bool
    can_detect: bool
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    sees_copies: bool | None = None

    @property
    def in_family(self) -> bool:
        """Whether the method's p-value can take part in the decision (before the copy check narrows the family)."""
        return (self.verdict != NOT_APPLICABLE and self.calibrated and self.can_detect and self.p_value is not None
                and math.isfinite(self.p_value))

    @classmethod
    def from_verdict(cls, verdict: Verdict) -> MethodResult:
        details = dict(verdict.details)
        return cls(method=verdict.method, verdict=verdict.verdict, p_value=float(verdict.p_value),
                   calibrated=bool(details.get("calibrated", False)), can_detect=bool(details.get("can_detect", True)),
                   reason=details.get("reason"), details=verdict.to_dict())

    @classmethod
    def not_applicable(cls, method: str, reason: str) -> MethodResult:
        return cls(method=method, verdict=NOT_APPLICABLE, p_value=None, calibrated=False, can_detect=False,
                   reason=reason)


@dataclass(frozen=True)
class Decision:
    """The combined decision on one suspect.

    Attributes:
        verdict: ``"stolen"`` (the Holm-Bonferroni family rejects at alpha), ``"independent"`` (no evidence from any
            test that could detect a copy; not a proof of independence) or ``"inconclusive"`` (no test could decide).
        alpha: family-wise error level.
        combined_p: the smallest Holm-adjusted p-value of the family (``None``: empty family).
        methods: each method's result, with its Holm-adjusted p-value when in the family.
        reason: why the decision is inconclusive, or why a test significant on its own did not make the decision
            "stolen" (``None`` otherwise).
    """

    verdict: str
    alpha: float
    combined_p: float | None
    methods: tuple[MethodResult, ...]
    holm: dict[str, float]
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for m in self.methods:
            row = {"method": m.method, "verdict": m.verdict, "p_value": m.p_value, "calibrated": m.calibrated,
                   "can_detect": m.can_detect, "sees_copies": m.sees_copies, "in_family": m.method in self.holm,
                   "holm_p": self.holm.get(m.method), "reason": m.reason}
            rows.append({**row, **{k: v for k, v in m.details.items() if k not in row}})
        return {"verdict": self.verdict, "alpha": self.alpha, "combined_p": self.combined_p,
                "rule": "holm-bonferroni over the calibrated methods that detect the owner's own model (and its own "
                        "copy, when the owner made one)",
                "family": [m.method for m in self.methods if m.method in self.holm], "reason": self.reason,
                "methods": rows}


def combine(methods: Sequence[MethodResult], *, alpha: float = 0.01) -> Decision:
    """Combine method results into one decision (Holm-Bonferroni over the family).

    Args:
        methods: one result per method (the method names must differ).
        alpha: family-wise error level.

    Raises:
        ValueError: alpha outside (0, 1) or a repeated method name.
    """
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    names = [m.method for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must differ, got {names}")
    usable = [m for m in methods if m.in_family]
    # A method that missed the owner's own copy cannot see copies of this model: the family is the methods that
    # can, unless none can (then every usable method stays in, and "no evidence" cannot mean "independent").
    seeing = [m for m in usable if m.sees_copies is not False]
    family = seeing or usable
    copies_unseen = bool(usable) and not seeing
    holm: dict[str, float] = {}
    if family:
        adjusted = holm_adjust([float(m.p_value) for m in family])  # type: ignore[arg-type]
        holm = {m.method: p for m, p in zip(family, adjusted, strict=True)}
    combined = min(holm.values()) if holm else None
    reason = None
    if combined is not None and combined < alpha:
        verdict = "stolen"
    elif not family:
        verdict = "inconclusive"
        why = [f"{m.method}: {m.reason or _excluded(m)}" for m in methods]
        reason = "no calibrated test that detects the owner's own model could run (" + "; ".join(why) + ")"
    elif copies_unseen:
        verdict = "inconclusive"
        reason = ("no test detects a copy the owner stole from its own model, so finding no evidence says nothing ("
                  + "; ".join(f"{m.method}: {m.reason}" for m in family if m.reason) + ")")
    elif any(m.verdict in ("independent", "stolen") for m in family):
        # At least one test that detects the owner's own model ran and the family did not reject. A method that is
        # significant on its own but not after the Holm adjustment is weak evidence, and is said so.
        verdict = "independent"
        weak = [m for m in family if m.verdict == "stolen"]
        if weak:
            reason = ("; ".join(f"{m.method}: p = {m.p_value:.3g} < alpha on its own, Holm p = "
                                f"{holm[m.method]:.3g} >= alpha" for m in weak)
                      + ": evidence below the family-wise threshold, not enough to call the suspect stolen")
    else:
        verdict = "inconclusive"
        reason = "; ".join(f"{m.method}: {m.reason or 'inconclusive'}" for m in family)
    return Decision(verdict=verdict, alpha=float(alpha), combined_p=combined, methods=tuple(methods), holm=holm,
                    reason=reason)


def _excluded(m: MethodResult) -> str:
    if m.verdict == NOT_APPLICABLE:
        return "not applicable"
    if not m.calibrated:
        return "not calibrated"
    if not m.can_detect:
        return "does not detect the owner's own model"
    return "no p-value"
