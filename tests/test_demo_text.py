"""The text demo's wiring without running it: settings, the command line (``demo --modality text``), the summary
table, the decisions' contract and the report's text branch. (The run itself loads MiniLM in several processes and
takes minutes; ``encoderguard demo --modality text --quick`` is its smoke run.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from encoderguard.cli.main import main
from encoderguard.scenarios import text_demo
from encoderguard.scenarios.text_demo import EXPECTED, TextDemoSettings, _forget_stale, text_summary_table


def _summary(victim: str = "stolen", stolen: str = "stolen", independent: str = "independent") -> dict[str, Any]:
    verdicts, combined = [], []
    for suspect, verdict, p, z in (("victim", victim, 0.001, 30.0), ("stolen", stolen, 0.004, 9.0),
                                   ("independent", independent, 0.6, -0.4)):
        for method in ("watermark", "di"):
            verdicts.append({"suspect": suspect, "method": method, "verdict": "not applicable", "p_value": None,
                             "reason": "does not apply", "warnings": None, "details": {}})
        verdicts.append({"suspect": suspect, "method": "output-watermark", "verdict": verdict, "p_value": p,
                         "statistic": z, "effect": 0.3, "warnings": [],
                         "details": {"reference_scores": {"ref00-lsa-lsa": 0.5, "ref01": -1.0}}})
        combined.append({"suspect": suspect, "verdict": verdict, "combined_p": p, "family": ["output-watermark"],
                         "reason": None})
    return {"settings": {"modality": "text", "encoder": "st:all-MiniLM-L6-v2", "student": "transformer"},
            "victim": {"linear_acc": 0.95}, "independent": {},
            "stolen": {"linear_acc": 0.9, "fidelity_cosine": 0.8, "retrieval_agreement": 0.4, "queries_paid": 2000,
                       "tokens_paid": 61234, "estimated_cost_usd": 0.0012, "price_per_million_tokens": 0.02},
            "verdicts": verdicts, "combined": combined, "seconds": 1.0, "all_decisions_right": True,
            "test_relied_on": "output-watermark", "wrong_decisions": []}


def test_settings_are_checked() -> None:
    assert TextDemoSettings.quick().budget < TextDemoSettings().budget
    with pytest.raises(ValueError, match="student"):
        TextDemoSettings(student="bert")
    with pytest.raises(ValueError, match="references"):
        TextDemoSettings(references=2)
    with pytest.raises(ValueError, match="strength"):
        TextDemoSettings(strength=0.0)


def test_summary_table_shows_the_output_watermark_and_the_cost() -> None:
    table = text_summary_table(_summary())
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["model", "linear", "fidelity"] and "OWM" in lines[0]
    assert lines[3].startswith("stolen") and "0.004" in lines[3] and lines[3].rstrip().endswith("stolen")
    assert "61,234 tokens" in table


def test_demo_command_runs_the_text_story_and_exits_nonzero_on_a_wrong_decision(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[Path, TextDemoSettings]] = []

    def fake(out: str | Path, *, settings: TextDemoSettings, data_dir: str | None = None) -> dict[str, Any]:
        calls.append((Path(out), settings))
        summary = _summary(stolen="independent")
        summary["wrong_decisions"] = [c for c in summary["combined"] if c["verdict"] != EXPECTED[c["suspect"]]]
        summary["all_decisions_right"] = not summary["wrong_decisions"]
        return summary

    monkeypatch.setattr(text_demo, "run_text_demo", fake)
    code = main(["demo", "--modality", "text", "--quick", "--budget", "300", "--out", str(tmp_path / "t")])
    assert code == 1
    out, settings = calls[0]
    assert out == tmp_path / "t" and settings.budget == 300 and settings.references == 3
    assert "WRONG decisions: stolen -> independent" in capsys.readouterr().out
    assert main(["demo", "--modality", "text", "--loss", "infonce", "--out", str(tmp_path / "t")]) == 2


def test_settings_change_forgets_the_key_and_references(tmp_path: Path) -> None:
    key, refs = tmp_path / "watermark.key", tmp_path / "references"
    key.write_text("{}")
    refs.mkdir()
    _forget_stale(tmp_path, TextDemoSettings(), (key, refs))
    assert not key.exists() and not refs.exists()
    key.write_text("{}")
    _forget_stale(tmp_path, TextDemoSettings(budget=50), (key, refs))  # the thief's settings do not matter
    assert key.exists()
    refs.mkdir()
    _forget_stale(tmp_path, TextDemoSettings(budget=50, strength=0.5), (key, refs))
    assert not key.exists() and refs.exists()  # the references do not depend on the watermark's strength


def test_report_has_a_text_branch(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from encoderguard.scenarios.report import render_report

    (tmp_path / "summary.json").write_text(json.dumps(_summary()))
    page = render_report(tmp_path).read_text()
    assert "Text run" in page and "retrieval agreement" in page and "Serving-time watermark" in page
    assert page.count("<img") >= 2
