"""The defence evaluation end to end on a tiny digits victim (in process and over HTTP)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from encoderguard.cli.main import main
from encoderguard.scenarios import DefenceEvaluation, HonestPattern

TINY = {"width": 8, "depth": 2, "pool": "avg"}  # not the victim's architecture (same seed: same initial weights)
HONEST = HonestPattern(users=2, classes=2, train_per_class=10, test_per_class=10, batch=8)


def test_rows_and_adaptive_attacks_in_process(tiny_checkpoint: Path, tmp_path: Path) -> None:
    evaluation = DefenceEvaluation(tiny_checkpoint, budget=120, epochs=1, transport="local", honest=HONEST,
                                   broad_user=False, adaptive=["average", "sybil"], repeats=2, sybils=2, anchors=16,
                                   copy_arch_kwargs=TINY, out_dir=tmp_path / "out", progress=False)
    result = evaluation.run(["noise:sigma=0.0", "coverage:bits=4,tables=2+orthogonal"],
                            adaptive={"none": [], "coverage:bits=4,tables=2+orthogonal": ["filter"]})
    assert [r.defence for r in result.rows] == ["noise:sigma=0.0", "coverage:bits=4,tables=2+orthogonal"]
    base, zero, cov = result.undefended, *result.rows
    # zero noise changes no answer: identical utilities, identical copies
    assert zero.honest_utilities == base.honest_utilities
    assert zero.attacker_linear_acc == pytest.approx(base.attacker_linear_acc)
    assert zero.attacker_fidelity == pytest.approx(base.attacker_fidelity)
    assert [a.attack for a in zero.adaptive] == ["average", "sybil"] and base.adaptive == []
    assert zero.adaptive[0].queries == 120 and zero.adaptive[0].details["distinct_inputs"] == 60
    assert zero.adaptive[1].queries <= 120 and zero.adaptive[1].details["anchors_per_key"] == 16
    assert 0 < cov.details["attacker_coverage"] <= 1 and len(cov.details["honest_coverage"]) == 2
    assert [a.attack for a in cov.adaptive] == ["filter"] and cov.broad_user_utility is None
    # fidelity is measured against the clean victim as the attacker's key sees it: rotated, not noised
    from encoderguard.defences import parse_defences

    chain = parse_defences(["coverage:bits=4,tables=2", "orthogonal"])
    rotation = chain[1].matrix("attacker", 16)
    expected = (evaluation.victim_test.double() @ rotation).float()
    assert torch.allclose(evaluation._reference(chain, "attacker"), expected, atol=1e-5)
    payload = result.to_dict()
    assert {"honest_utility", "attacker_gain_recovery", "attacker_fidelity"} <= set(payload["undefended"])
    assert "| `coverage:bits=4,tables=2+orthogonal` |" in result.to_markdown()
    assert result.to_csv().splitlines()[0].startswith("defence,honest_utility")
    # finished rows are reused by a rerun with the same settings
    again = DefenceEvaluation(tiny_checkpoint, budget=120, epochs=1, transport="local", honest=HONEST,
                              broad_user=False, adaptive=["average", "sybil"], repeats=2, sybils=2, anchors=16,
                              copy_arch_kwargs=TINY, out_dir=tmp_path / "out", progress=False
                              ).evaluate("noise:sigma=0.0")
    assert json.dumps(again.to_dict()) == json.dumps(zero.to_dict())


def test_cli_over_http(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("fastapi")
    argv = ["defend-eval", "--victim", str(tiny_checkpoint), "--defence", "round:bits=2", "--budget", "60",
            "--epochs", "1", "--honest-users", "1", "--honest-classes", "2", "--honest-per-class", "8",
            "--no-broad-user", "--out", str(tmp_path / "o"), "--json", "--no-progress"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["defence"] for r in result["rows"]] == ["round:bits=2"]
    for part in (result["rows"][0], result["undefended"]):
        for name in ("honest_utility", "attacker_gain_recovery", "attacker_fidelity"):
            assert part[name] is None or math.isfinite(part[name])
    assert Path(result["files"]["table"]).is_file() and Path(result["files"]["plot"]).stat().st_size > 1000


def test_cli_rejects_a_bad_spec_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["defend-eval", "--victim", str(tmp_path / "missing"), "--defence", "noise:sigm=1"])
    assert code == 2
    assert "no parameter 'sigm'" in capsys.readouterr().err


def test_a_named_thief_is_the_attacker(tiny_checkpoint: Path, tmp_path: Path) -> None:
    settings = {"budget": 64, "epochs": 1, "transport": "local", "honest": HONEST, "broad_user": False,
                "copy_arch_kwargs": TINY, "progress": False}
    with pytest.raises(ValueError, match="unknown thief 'best'; choose one of: baseline"):
        DefenceEvaluation(tiny_checkpoint, thief="best", **settings)
    named = DefenceEvaluation(tiny_checkpoint, thief="mixup", loss="cosine", out_dir=tmp_path / "named", **settings)
    assert named.loss == "mse" and named.settings()["thief"] == "mixup"
    assert named.settings()["thief_settings"] == {"mixup": 0.4}
    plain = DefenceEvaluation(tiny_checkpoint, **settings)
    assert "thief" not in plain.settings()  # rows cached by a plain attacker are never reused for a thief
    row = named.evaluate("none")
    assert row.attacker_fidelity is not None and math.isfinite(row.attacker_fidelity)
