"""The result every ownership test returns."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

VERDICTS = ("stolen", "independent", "inconclusive")


@dataclass(frozen=True)
class Verdict:
    """Outcome of one ownership test on one suspect.

    Attributes:
        method: ``"di"`` (dataset inference) or ``"watermark"``.
        verdict: ``"stolen"`` (p < alpha: the suspect is the owner's model or derived from it), ``"independent"``
            (no evidence of derivation; not a proof of independence) or ``"inconclusive"`` (the test could not
            have detected derivation, e.g. the owner's own model shows no signal).
        p_value: one-sided p-value of the test (``nan`` when no test ran).
        alpha: significance level.
        statistic: the test statistic.
        effect: an effect size (method-specific; documented in ``details["effect_kind"]``).
        n: number of samples the test used.
        queries_used: suspect queries (images) this test paid for.
        warnings: plain-language caveats that travel with the verdict.
        details: method-specific numbers.
    """

    method: str
    verdict: str
    p_value: float
    alpha: float
    statistic: float = math.nan
    effect: float = math.nan
    n: int = 0
    queries_used: int = 0
    warnings: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if not (0 < self.alpha < 1):
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["warnings"] = list(self.warnings)
        return out


def decide(p_value: float, alpha: float) -> str:
    """``"stolen"`` if ``p_value < alpha``, else ``"independent"`` (``nan`` gives ``"inconclusive"``)."""
    if not (0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if math.isnan(p_value):
        return "inconclusive"
    return "stolen" if p_value < alpha else "independent"
