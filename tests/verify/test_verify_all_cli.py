"""``encoderguard verify all``: every applicable ownership test on one suspect, one decision (tiny digits owner)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.conftest import tiny_encoder
from tests.verify.owners import SPEC, reference_encoders, save_owner, save_reference_set

from encoderguard.cli.main import main
from encoderguard.models import ModelCard, save_checkpoint
from encoderguard.models.verify_key import VERIFY_KEY_FILE
from encoderguard.verify.references import register_with_owner

DI_FAST = {"members": 40, "nonmembers": 60, "n_permutations": 100}
CONTRACT = {"verdict", "alpha", "combined_p", "methods", "family", "rule", "reason", "references", "queries_used",
            "warnings", "suspect"}
ROW = {"method", "verdict", "p_value", "calibrated", "can_detect", "in_family", "holm_p", "reason"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The watermarked tiny owner, with a small frozen dataset-inference test at its default place."""
    from encoderguard.verify.di_workflow import freeze_di

    out = save_owner(tmp_path_factory.mktemp("all") / "owner", steps=80)
    freeze_di(out, null_encoders=1, **DI_FAST).save(out / "di-config.json")
    return out


@pytest.fixture(scope="module")
def refs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_reference_set(tmp_path_factory.mktemp("all-refs") / "refs", reference_encoders()).folder


def _suspect(folder: Path, seed: int, *, embed_dim: int = 16) -> Path:
    encoder = tiny_encoder(seed, embed_dim=embed_dim)
    save_checkpoint(folder, encoder=encoder.eval(), card=ModelCard(
        arch="convnet", arch_kwargs={}, input_shape=(1, 8, 8), embed_dim=embed_dim,
        data=SPEC.with_split("query").to_dict()))
    return folder


def _run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and out.startswith("{") else None), err


def _methods(result: dict) -> dict[str, dict]:
    return {row["method"]: row for row in result["methods"]}


def test_owner_is_stolen_with_references(owner, refs_dir, capsys):
    code, result, err = _run(capsys, "verify", "all", "--owner", str(owner), "--suspect", str(owner),
                             "--references", str(refs_dir), "--watermark-queries", "300", "--json")
    assert code == 0, err
    assert CONTRACT <= set(result) and result["suspect"] == str(owner)
    methods = _methods(result)
    assert set(methods) == {"watermark", "di"} and all(ROW <= set(row) for row in methods.values())
    assert result["verdict"] == "stolen" and result["combined_p"] < result["alpha"] == 0.01
    watermark = methods["watermark"]
    assert watermark["verdict"] == "stolen" and watermark["calibrated"] and watermark["in_family"]
    assert watermark["details"]["calibration"] == "prediction" and len(watermark["details"]["reference_scores"]) == 8
    assert "watermark" in result["family"] and watermark["holm_p"] >= watermark["p_value"]
    assert result["combined_p"] == min(row["holm_p"] for row in methods.values() if row["in_family"])
    assert methods["di"]["verdict"] in ("stolen", "independent", "inconclusive") and methods["di"]["calibrated"]
    assert not any("not frozen" in w for w in methods["di"]["warnings"])  # OWNER/di-config.json was used
    assert result["references"]["count"] == 8 and result["references"]["folder"] == str(refs_dir)
    # alignment (default auto) adds the owner's whole query split (674 digits images < --align-queries 1000)
    assert result["alignment"]["kind"] == "none" and result["alignment"]["queries"] == 674
    assert result["queries_used"] == watermark["queries_used"] + methods["di"]["queries_used"] == 300 + 674 + 100
    assert result["warnings"] == []


def test_an_unrelated_encoder_is_not_stolen(owner, refs_dir, tmp_path, capsys):
    suspect = _suspect(tmp_path / "unrelated", seed=21)
    code, result, err = _run(capsys, "verify", "all", "--owner", str(owner), "--suspect", str(suspect),
                             "--references", str(refs_dir), "--watermark-queries", "300", "--json")
    assert code == 0, err
    assert result["verdict"] != "stolen" and (result["combined_p"] is None or result["combined_p"] >= 0.01)
    assert _methods(result)["watermark"]["verdict"] == "independent"


def test_without_references_the_decision_cannot_say_stolen(owner, refs_dir, tmp_path, capsys):
    mine = shutil.copytree(owner, tmp_path / "owner")  # this test registers a set with its owner
    code, result, err = _run(capsys, "verify", "all", "--owner", str(mine), "--suspect", str(mine),
                             "--watermark-queries", "300", "--json")
    assert code == 0, err
    watermark = _methods(result)["watermark"]
    assert watermark["verdict"] == "inconclusive" and not watermark["calibrated"] and not watermark["in_family"]
    assert watermark["details"]["binomial_p_value"] < 1e-4  # strong, but uncalibrated
    assert result["verdict"] != "stolen" and result["references"]["count"] == 0
    assert any("no reference set" in w for w in result["warnings"])
    # the set registered with the owner (what 'references build' writes) is found without --references
    register_with_owner(mine, refs_dir)
    code, result, err = _run(capsys, "verify", "all", "--owner", str(mine), "--suspect", str(mine),
                             "--watermark-queries", "300", "--json")
    assert code == 0, err
    assert result["verdict"] == "stolen" and "registered with the owner" in result["references"]["source"]


def test_missing_reference_set_is_a_one_line_error(owner, capsys):
    code, out, err = _run(capsys, "verify", "all", "--owner", str(owner), "--suspect", str(owner),
                          "--references", "/nonexistent", "--json")
    assert code == 2 and out is None
    assert len(err.strip().splitlines()) == 1 and "no reference set at /nonexistent" in err


def test_suspect_of_another_size_makes_the_watermark_not_applicable(owner, refs_dir, tmp_path, capsys):
    suspect = _suspect(tmp_path / "narrow", seed=22, embed_dim=8)
    code, result, err = _run(capsys, "verify", "all", "--owner", str(owner), "--suspect", str(suspect),
                             "--references", str(refs_dir), "--align", "none", "--json")
    assert code == 0, err
    methods = _methods(result)
    watermark = methods["watermark"]
    assert watermark["verdict"] == "not applicable" and watermark["p_value"] is None and not watermark["in_family"]
    assert "8-d" in watermark["reason"] and "16-d" in watermark["reason"]
    assert "watermark" not in result["family"] and methods["di"]["verdict"] != "not applicable"
    assert result["verdict"] in ("independent", "inconclusive")


def test_human_output(owner, refs_dir, capsys):
    code = main(["verify", "all", "--owner", str(owner), "--suspect", str(owner), "--references", str(refs_dir),
                 "--watermark-queries", "300"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("decision: STOLEN")
    assert "watermark" in out and "calibrated" in out and f"null: references from {refs_dir}" in out


def test_missing_verification_key_makes_the_watermark_not_applicable(owner, tmp_path, capsys):
    keyless = shutil.copytree(owner, tmp_path / "owner")
    (keyless / VERIFY_KEY_FILE).unlink()
    code, result, err = _run(capsys, "verify", "all", "--owner", str(keyless), "--suspect", str(keyless), "--json")
    assert code == 0, err
    watermark = _methods(result)["watermark"]
    assert watermark["verdict"] == "not applicable" and "verification key" in watermark["reason"]
    assert _methods(result)["di"]["verdict"] != "not applicable"


def test_suspect_of_another_size_is_read_through_a_linear_map_by_default(owner, refs_dir, tmp_path, capsys):
    suspect = _suspect(tmp_path / "narrow", seed=22, embed_dim=8)
    code, result, err = _run(capsys, "verify", "all", "--owner", str(owner), "--suspect", str(suspect),
                             "--references", str(refs_dir), "--align-queries", "200", "--json")
    assert code == 0, err
    watermark = _methods(result)["watermark"]
    assert watermark["verdict"] == "independent" and watermark["in_family"]
    assert result["alignment"]["kind"] == "linear" and set(result["alignment"]["candidates"]) == {"linear"}
    assert result["verdict"] != "stolen"


def test_verify_all_reports_the_alignment(owner, refs_dir, capsys):
    code, result, err = _run(capsys, "verify", "all", "--owner", str(owner), "--suspect", str(owner),
                             "--references", str(refs_dir), "--watermark-queries", "300", "--align-queries", "200",
                             "--json")
    assert code == 0, err
    alignment = result["alignment"]
    assert {"kind", "queries", "fit_r2"} <= set(alignment) and alignment["queries"] == 200
    assert alignment["kind"] == "none" and alignment["fit_r2"] > 0.99  # the owner itself: the identity fits
    assert alignment == _methods(result)["watermark"]["details"]["alignment"]
    assert result["queries_used"] == 300 + 200 + 100 and result["verdict"] == "stolen"
    code, result, err = _run(capsys, "verify", "all", "--owner", str(owner), "--suspect", str(owner),
                             "--references", str(refs_dir), "--watermark-queries", "300", "--align", "none",
                             "--json")
    assert code == 0, err
    assert result["alignment"] == {"kind": "none", "queries": 0, "fit_r2": None}
    assert result["queries_used"] == 300 + 100


def test_verify_watermark_align_flag(owner, refs_dir, capsys):
    code, result, err = _run(capsys, "verify", "watermark", "--owner", str(owner), "--suspect", str(owner),
                             "--references", str(refs_dir), "--queries", "300", "--align", "auto",
                             "--align-queries", "200", "--json")
    assert code == 0, err
    alignment = result["alignment"]
    assert {"kind", "queries", "fit_r2"} <= set(alignment) and alignment == result["details"]["alignment"]
    assert alignment["kind"] == "none" and alignment["queries"] == 200 and alignment["fit_r2"] > 0.99
    assert result["queries_used"] == 500 and result["verdict"] == "stolen"
    code, result, err = _run(capsys, "verify", "watermark", "--owner", str(owner), "--suspect", str(owner),
                             "--references", str(refs_dir), "--queries", "300", "--json")
    assert code == 0, err
    assert result["alignment"]["kind"] == "none" and result["alignment"]["queries"] == 0
    assert result["queries_used"] == 300


def test_verify_di_align_flag_counts_the_alignment_queries(owner, capsys):
    code, result, err = _run(capsys, "verify", "di", "--owner", str(owner), "--suspect", str(owner), "--config",
                             str(owner / "di-config.json"), "--align", "auto", "--align-queries", "200", "--json")
    assert code == 0, err
    assert result["alignment"]["kind"] == "none" and result["alignment"]["queries"] == 200
    assert result["alignment"]["fit_r2"] > 0.99 and result["queries_used"] == 100 + 200


def test_the_owners_copy_check_narrows_the_family(owner, refs_dir, tmp_path, capsys):
    # a "copy" that no test detects (an unrelated encoder): every test misses it, so no evidence cannot mean
    # "independent"; the owner itself as the copy: every test that detects the owner stays in the family
    blind = _suspect(tmp_path / "blind-copy", seed=33)
    unrelated = _suspect(tmp_path / "unrelated", seed=34)
    code, result, err = _run(capsys, "verify", "all", "--owner", str(owner), "--suspect", str(unrelated),
                             "--references", str(refs_dir), "--watermark-queries", "300", "--copy-check", str(blind),
                             "--json")
    assert code == 0, err
    assert result["copy_check"]["copy"] == str(blind)
    assert not any(m["detected"] for m in result["copy_check"]["methods"].values())
    assert result["verdict"] == "inconclusive" and "no test detects a copy" in result["reason"]
    assert all(row["sees_copies"] is False for row in result["methods"] if row["can_detect"] and row["calibrated"])
    code, result, err = _run(capsys, "verify", "all", "--owner", str(owner), "--suspect", str(owner),
                             "--references", str(refs_dir), "--watermark-queries", "300", "--copy-check",
                             str(owner), "--json")
    assert code == 0, err
    assert result["verdict"] == "stolen" and result["copy_check"]["methods"]["watermark"]["detected"] is True
    assert _methods(result)["watermark"]["sees_copies"] is True and "watermark" in result["family"]
