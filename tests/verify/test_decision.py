"""Tests of the combined decision: Holm-Bonferroni over the calibrated methods that detect the owner's model."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import pytest

from encoderguard.verify.decision import NOT_APPLICABLE, MethodResult, combine
from encoderguard.verify.verdict import Verdict, decide

ALPHA = 0.01


def _method(name: str, p: float, *, calibrated: bool = True, can_detect: bool = True,
            reason: str | None = None, verdict: str | None = None) -> MethodResult:
    if verdict is None:
        verdict = decide(p, ALPHA) if calibrated and can_detect else "inconclusive"
    return MethodResult(method=name, verdict=verdict, p_value=p, calibrated=calibrated, can_detect=can_detect,
                        reason=reason)


GRID = [1e-6, 0.0004, 0.003, 0.0049, 0.005, 0.0051, 0.009, 0.02, 0.3, 1.0]


@pytest.mark.parametrize(("p1", "p2"), list(itertools.combinations_with_replacement(GRID, 2)))
def test_two_methods_stolen_iff_min_p_below_alpha_over_two(p1, p2):
    decision = combine([_method("watermark", p1), _method("di", p2)], alpha=ALPHA)
    assert (decision.verdict == "stolen") == (min(p1, p2) < ALPHA / 2)
    assert decision.combined_p == pytest.approx(min(1.0, 2 * min(p1, p2)))
    assert set(decision.holm) == {"watermark", "di"}
    if decision.verdict != "stolen":
        assert decision.verdict in ("independent", "inconclusive")


@pytest.mark.parametrize("ps", [(0.001, 0.5, 0.9), (0.0034, 0.004, 0.02), (0.0033, 0.9, 0.9), (0.1, 0.2, 0.3)])
def test_three_methods_use_alpha_over_three(ps):
    methods = [_method(name, p) for name, p in zip(("a", "b", "c"), ps, strict=True)]
    decision = combine(methods, alpha=ALPHA)
    assert (decision.verdict == "stolen") == (min(ps) < ALPHA / 3)
    # Holm by hand: sorted p_(k) times (m - k + 1), running maximum, capped at 1
    ranked = sorted(ps)
    expected = [min(1.0, max((3 - j) * ranked[j] for j in range(k + 1))) for k in range(3)]
    assert sorted(decision.holm.values()) == pytest.approx(expected)


def test_a_single_method_decides_at_alpha():
    assert combine([_method("watermark", 0.0099)], alpha=ALPHA).verdict == "stolen"
    only = combine([_method("watermark", 0.01)], alpha=ALPHA)
    assert only.verdict == "independent" and only.combined_p == pytest.approx(0.01) and only.reason is None


def test_uncalibrated_methods_are_excluded_from_the_family():
    # the uncalibrated watermark's binomial p is tiny, but it neither decides nor counts in m
    watermark = _method("watermark", 1e-12, calibrated=False, reason="no calibrated null: 0 usable reference models")
    di = _method("di", 0.006)
    decision = combine([watermark, di], alpha=ALPHA)
    assert not watermark.in_family and di.in_family
    assert decision.verdict == "stolen" and decision.combined_p == pytest.approx(0.006)  # m = 1
    assert set(decision.holm) == {"di"}
    assert combine([watermark, _method("di", 0.3)], alpha=ALPHA).verdict == "independent"


def test_methods_that_cannot_detect_the_owner_are_excluded():
    blind = _method("di", 1e-9, can_detect=False, reason="the owner's own encoder shows no membership signal")
    decision = combine([_method("watermark", 0.2), blind], alpha=ALPHA)
    assert not blind.in_family and decision.verdict == "independent" and decision.holm == {"watermark": 0.2}
    rows = {row["method"]: row for row in decision.to_dict()["methods"]}
    assert rows["di"]["in_family"] is False and rows["di"]["holm_p"] is None
    assert rows["di"]["can_detect"] is False and rows["di"]["reason"] == blind.reason


def test_a_nan_p_value_is_not_in_the_family():
    broken = _method("watermark", math.nan, verdict="inconclusive", reason="no test ran")
    assert not broken.in_family
    assert combine([broken, _method("di", 0.004)], alpha=ALPHA).verdict == "stolen"


def test_not_applicable_methods_stay_visible():
    na = MethodResult.not_applicable("watermark", "it answers 8-d representations, the head reads 16-d ones")
    assert na.verdict == NOT_APPLICABLE and na.p_value is None and not na.in_family
    decision = combine([na, _method("di", 0.004)], alpha=ALPHA)
    assert decision.verdict == "stolen" and decision.to_dict()["family"] == ["di"]
    row = decision.to_dict()["methods"][0]
    assert row["method"] == "watermark" and row["verdict"] == "not applicable" and row["p_value"] is None
    assert row["reason"] == na.reason and row["in_family"] is False


def test_no_method_that_can_decide_gives_inconclusive_with_reason():
    methods = [MethodResult.not_applicable("watermark", "the owner's model carries no watermark"),
               _method("di", 1e-6, can_detect=False, reason=None),
               _method("extra", 1e-6, calibrated=False, reason=None)]
    decision = combine(methods, alpha=ALPHA)
    assert decision.verdict == "inconclusive" and decision.combined_p is None and decision.holm == {}
    assert "the owner's model carries no watermark" in decision.reason
    assert "di: does not detect the owner's own model" in decision.reason
    assert "extra: not calibrated" in decision.reason
    assert combine([], alpha=ALPHA).verdict == "inconclusive"


def test_family_of_inconclusive_methods_is_inconclusive_with_their_reasons():
    a = _method("watermark", 0.4, verdict="inconclusive", reason="too few queries")
    b = _method("di", 0.5, verdict="inconclusive", reason="copy check failed")
    decision = combine([a, b], alpha=ALPHA)
    assert decision.verdict == "inconclusive" and decision.combined_p == pytest.approx(0.8)
    assert "watermark: too few queries" in decision.reason and "di: copy check failed" in decision.reason


def test_significant_alone_but_not_after_holm_says_why():
    # each test alone would flag the suspect at alpha, but the family does not (0.008 * 2 >= 0.01)
    decision = combine([_method("watermark", 0.008, verdict="stolen"), _method("di", 0.009, verdict="stolen")],
                       alpha=ALPHA)
    assert decision.verdict == "independent" and decision.combined_p == pytest.approx(0.016)
    assert "Holm p" in decision.reason and "watermark" in decision.reason and "di" in decision.reason


def test_to_dict_contract_and_json():
    verdict = Verdict(method="watermark", verdict="stolen", p_value=0.001, alpha=ALPHA, statistic=0.7, effect=0.2,
                      n=300, queries_used=300, details={"calibrated": True, "can_detect": True, "reason": None,
                                                 "calibration": "prediction"})
    methods = [MethodResult.from_verdict(verdict), MethodResult.not_applicable("di", "no owner-train split")]
    out = combine(methods, alpha=ALPHA).to_dict()
    assert {"verdict", "alpha", "combined_p", "methods", "family", "rule", "reason"} <= set(out)
    assert out["verdict"] == "stolen" and out["alpha"] == ALPHA and out["combined_p"] == pytest.approx(0.001)
    for row in out["methods"]:
        assert {"method", "verdict", "p_value", "calibrated", "reason", "in_family", "holm_p", "can_detect"} <= set(row)
    wm, di = out["methods"]
    assert wm["method"] == "watermark" and wm["verdict"] == "stolen" and wm["calibrated"] is True
    assert wm["statistic"] == 0.7 and wm["n"] == 300 and wm["details"]["calibration"] == "prediction"
    assert di["verdict"] == "not applicable" and di["reason"] == "no owner-train split"
    assert json.loads(json.dumps(out)) == out


def test_from_verdict_reads_calibration_and_detection():
    plain = Verdict(method="watermark", verdict="inconclusive", p_value=1e-6, alpha=ALPHA,
                    details={"reason": "no calibrated null"})
    m = MethodResult.from_verdict(plain)
    assert m.calibrated is False and m.can_detect is True and m.reason == "no calibrated null" and not m.in_family
    gated = Verdict(method="di", verdict="inconclusive", p_value=0.2, alpha=ALPHA,
                    details={"calibrated": True, "can_detect": False, "reason": "owner shows no signal"})
    m = MethodResult.from_verdict(gated)
    assert m.calibrated and not m.can_detect and not m.in_family and m.details["method"] == "di"


@pytest.mark.parametrize(("kwargs", "match"), [({"alpha": 0.0}, "alpha must be in"), ({"alpha": 1.0}, "alpha"),
                                               ({"alpha": "0.01"}, "alpha")])
def test_bad_alpha(kwargs, match):
    with pytest.raises(ValueError, match=match):
        combine([_method("watermark", 0.1)], **kwargs)


def test_repeated_method_names_are_refused():
    with pytest.raises(ValueError, match="method names must differ"):
        combine([_method("di", 0.1), _method("di", 0.2)], alpha=ALPHA)


def test_a_method_that_misses_the_owners_copy_leaves_the_family():
    wm = MethodResult(method="watermark", verdict="independent", p_value=0.4, calibrated=True, can_detect=True,
                      sees_copies=False, reason="does not detect a copy the owner stole from its own model")
    di = MethodResult(method="di", verdict="stolen", p_value=0.006, calibrated=True, can_detect=True,
                      sees_copies=True)
    assert combine([replace(wm, sees_copies=None), replace(di, sees_copies=None)], alpha=ALPHA).verdict != "stolen"
    decision = combine([wm, di], alpha=ALPHA)  # Holm over {di} alone: 0.006 < 0.01
    assert decision.verdict == "stolen" and decision.combined_p == pytest.approx(0.006)
    rows = {row["method"]: row for row in decision.to_dict()["methods"]}
    assert rows["watermark"]["in_family"] is False and rows["di"]["in_family"] is True
    assert decision.to_dict()["family"] == ["di"]


def test_when_no_method_sees_the_owners_copy_no_evidence_is_inconclusive():
    wm = MethodResult(method="watermark", verdict="independent", p_value=0.4, calibrated=True, can_detect=True,
                      sees_copies=False, reason="watermark missed the copy")
    di = MethodResult(method="di", verdict="independent", p_value=0.3, calibrated=True, can_detect=True,
                      sees_copies=False, reason="di missed the copy")
    decision = combine([wm, di], alpha=ALPHA)
    assert decision.verdict == "inconclusive" and "no test detects a copy" in decision.reason
    assert set(decision.to_dict()["family"]) == {"watermark", "di"}  # both stay in: strong evidence still counts
    strong = combine([wm, replace(di, p_value=0.001, verdict="stolen")], alpha=ALPHA)
    assert strong.verdict == "stolen" and strong.combined_p == pytest.approx(0.002)
