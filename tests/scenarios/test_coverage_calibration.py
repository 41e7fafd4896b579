"""The coverage defence's calibration on the owner's held-out images gives a spec that builds and serves."""

from __future__ import annotations

import math

import pytest
from tests.conftest import tiny_encoder

from encoderguard.data import SplitSpec, owner_split
from encoderguard.defences import CoverageNoise, coverage_noise_scale, parse_chain, prepare_chain
from encoderguard.scenarios import calibrate_coverage
from encoderguard.scenarios.coverage_calibration import solve_lam


def test_calibration_picks_a_resolution_and_a_cost_function() -> None:
    heldout = owner_split(SplitSpec("digits", "owner-train", 0, 300).to_dict(), "owner-heldout")
    result = calibrate_coverage(tiny_encoder(0, embed_dim=16).eval(), heldout, users=5, classes=3, queries=60,
                                sweeps=2, sweep=300, bits=(4, 5), tables=4, secret=7)
    assert [row["bits"] for row in result["scan"]] == [4, 5] and result["chosen_bits"] in (4, 5)
    best = next(row for row in result["scan"] if row["bits"] == result["chosen_bits"])
    assert result["beta"] == best["c_high"] == pytest.approx(1.1 * best["c_low"], abs=1e-3)
    assert result["calibration_data"] == "digits:owner-heldout"
    # the spec serves, and its noise at c_low is the allowed sigma_low
    (defence,) = parse_chain(result["spec"])
    prepare_chain([defence], dim=16)
    assert isinstance(defence, CoverageNoise) and defence.bits == result["chosen_bits"]
    sigma = float(coverage_noise_scale(best["c_low"], lam=result["lam"], alpha=4.0, beta=result["beta"]))
    assert math.isclose(sigma, 0.01, rel_tol=1e-2)


def test_settings_are_checked() -> None:
    heldout = owner_split(SplitSpec("digits", "owner-train", 0, 300).to_dict(), "owner-heldout")
    with pytest.raises(ValueError, match="margin must be >= 1"):
        calibrate_coverage(tiny_encoder(0).eval(), heldout, margin=0.5)
    with pytest.raises(ValueError, match="no lam reaches"):
        solve_lam(0.5, 10.0, 0.6, 4.0)
