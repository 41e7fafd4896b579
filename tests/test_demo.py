"""The demo's wiring, end to end on a tiny setting: real subprocesses, a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from encoderguard.scenarios.demo import DemoSettings, StageError, _card_mismatch, run_demo, summary_table

pytestmark = pytest.mark.slow

TINY = DemoSettings(dataset="digits", victim_epochs=2, independent_epochs=1, budget=100, steal_epochs=1,
                    watermark_queries=60, copy_check_epochs=1, references=3, seed=3)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    return out, run_demo(out, settings=TINY, on_stage=lambda message: None)


def test_summary_follows_the_command_contract(demo_run):
    out, summary = demo_run
    assert json.loads((out / "summary.json").read_text())["verdicts"] == json.loads(
        json.dumps(summary["verdicts"], default=str))
    assert {"victim", "stolen", "independent", "seconds", "verdicts"} <= set(summary)
    pairs = {(v["suspect"], v["method"]) for v in summary["verdicts"]}
    assert pairs == {(s, m) for s in ("victim", "stolen", "independent") for m in ("di", "watermark")}
    for v in summary["verdicts"]:
        assert v["verdict"] in ("stolen", "independent", "inconclusive", "not applicable")
        if v["verdict"] == "not applicable":
            assert v["reason"]
        else:
            assert 0 <= v["p_value"] <= 1 and isinstance(v["calibrated"], bool)
        if v["verdict"] == "inconclusive":
            assert v["reason"] or v["warnings"]
    assert summary["stolen"]["queries_paid"] == 100 and summary["stolen"]["ledger_queries"] == 100
    assert summary["server"]["exit_code"] is not None  # the server was stopped
    # the owner's dashboard ran beside the API: its snapshot shows the thief's key with what the ledger charged
    snapshot = json.loads((out / "dashboard_state.json").read_text())
    assert summary["dashboard"]["url"].endswith("/dashboard")
    assert [k["used"] for k in snapshot["keys"] if k["name"] == "attacker"] == [100]
    assert oct((out / "admin-token").stat().st_mode & 0o777) == "0o600"
    assert [s["stage"][:3] for s in summary["stages"]] == [f"{i}/7" for i in range(1, 8)]
    assert json.loads((out / "di-config.json").read_text())["copy_check"]["epochs"] == 1
    assert (out / "victim" / "copy-check" / "card.json").is_file()  # the owner's own copy, checked by verify all
    assert all(isinstance(v["sees_copies"], bool) for v in summary["verdicts"] if v.get("in_family"))
    assert summary["references"]["count"] == 3 and (out / "victim" / "references.json").is_file()
    # one decision per suspect, and the demo's success means: victim and copy "stolen", independent not
    combined = {c["suspect"]: c for c in summary["combined"]}
    assert set(combined) == {"victim", "stolen", "independent"}
    for c in combined.values():
        assert c["verdict"] in ("stolen", "independent", "inconclusive")
        assert c["combined_p"] is None or 0 <= c["combined_p"] <= 1
        assert (c["verdict"] == "stolen") == (c["combined_p"] is not None and c["combined_p"] < 0.01)
    assert summary["wrong_decisions"] == [c for c in summary["combined"] if
                                          (c["verdict"] != "stolen") == (c["suspect"] != "independent")]
    assert summary["all_decisions_right"] == (not summary["wrong_decisions"])
    table = summary_table(summary)
    assert all(name in table for name in ("victim", "stolen", "independent")) and "decision" in table


def test_a_model_with_other_settings_is_not_reused():
    card = {"training": {"preset": "cpu-di", "epochs": 40, "seed": 0}, "watermark": {"heldout_acc": 0.9},
            "data": {"split": "owner-train", "dataset": "fashion-mnist"}}
    asked = {"preset": "cpu-di", "epochs": 240, "seed": 0, "split": "owner-train", "watermark": True,
             "dataset": "fashion-mnist"}
    assert _card_mismatch(card, asked) == ["epochs 40 (asked 240)"]  # a --quick model under full settings
    assert _card_mismatch(card, {**asked, "epochs": 40}) == []
    assert "watermark True (asked False)" in _card_mismatch(card, {**asked, "epochs": 40, "watermark": False})


def test_report_is_self_contained(demo_run):
    out, summary = demo_run
    html = (out / "report.html").read_text()
    assert summary["report"].endswith("report.html")
    assert html.count("data:image/png;base64,") >= 3  # quality, dataset-inference scores, watermark
    assert "Dataset inference" in html and "Watermark" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched from a network
    assert "Owner dashboard" in html and "dashboard_state.json" in html


def test_a_server_that_cannot_start_fails_the_demo(demo_run, tmp_path):
    out, _ = demo_run
    broken = tmp_path / "run"
    shutil.copytree(out / "victim", broken / "victim")  # reused by the demo, but its weights are damaged
    weights = broken / "victim" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(StageError, match="stage 'serve' failed"):
        run_demo(broken, settings=TINY, on_stage=lambda message: None)
