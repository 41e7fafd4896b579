"""``defend-eval --sybils/--attack`` on a tiny victim, ``keys reset-state``, and the attacker's key split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from encoderguard.api.delegating_api import DelegatingAPI
from encoderguard.api.keys import KeyStore
from encoderguard.api.ledger import Ledger
from encoderguard.api.local_api import LocalAPI
from encoderguard.attacks.sybil_split import SybilSplitAPI, balanced_split, procrustes_split_attack
from encoderguard.cli.main import main
from encoderguard.defences import OrthogonalTransform

from .conftest import TinyEncoder


def test_balanced_split_gives_equal_shares() -> None:
    images = torch.randint(0, 256, (50, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    keys = balanced_split(images, 4, seed=0)
    assert sorted(np.bincount(keys).tolist()) == [12, 12, 13, 13]
    assert (balanced_split(images, 1) == 0).all()


def test_split_api_routes_each_input_to_its_key(encoder: TinyEncoder) -> None:
    api = LocalAPI(encoder, defences=[OrthogonalTransform(seed=3)])
    views = [DelegatingAPI(api, key=f"k{i}") for i in range(3)]
    images = torch.randint(0, 256, (30, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    assignment = balanced_split(images, 3, seed=0)
    router = SybilSplitAPI(views, images, assignment)
    out = router.embed(images.float() / 255)
    assert router.unassigned == 0 and [v.queries_used for v in views] == [10, 10, 10]
    for i in range(30):
        alone = views[int(assignment[i])].embed(images[i:i + 1].float() / 255)
        assert torch.allclose(out[i], alone[0], atol=1e-5)


def test_procrustes_undoes_per_key_rotations(encoder: TinyEncoder) -> None:
    api = LocalAPI(encoder, defences=[OrthogonalTransform(seed=3)])
    views = [DelegatingAPI(api, key=f"k{i}") for i in range(2)]
    pool = torch.randint(0, 256, (80, 1, 8, 8), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    data = procrustes_split_attack(views, pool, budget=80, anchors=20, seed=0)
    assert data.queries == 80 and data.details["anchors_per_key"] == 20
    truth = views[0].embed(data.images.float() / 255)
    assert torch.allclose(data.targets, truth, atol=1e-3)  # every answer in key 0's frame


def test_defend_eval_sybils_and_attacks(tiny_checkpoint: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    base = ["defend-eval", "--victim", str(tiny_checkpoint), "--defence", "guard:bits=3", "--budget", "64",
            "--epochs", "1", "--honest-users", "1", "--honest-classes", "2", "--honest-per-class", "8",
            "--no-broad-user", "--transport", "local", "--json", "--no-progress"]
    assert main(base) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["rows"][0]["sybils"] == 1 and single["rows"][0]["attack"] == "plain"
    assert {"honest_utility", "attacker_gain_recovery", "attacker_fidelity"} <= set(single["undefended"])
    assert "attacker_keys" not in single["settings"]  # the single-key run's settings are unchanged
    for attack in ("plain", "average", "procrustes"):
        assert main([*base, "--sybils", "4", "--attack", attack, "--mixed-users", "2"]) == 0
        result = json.loads(capsys.readouterr().out)
        row = result["rows"][0]
        assert row["sybils"] == 4 and row["attack"] == attack and result["undefended"]["sybils"] == 4
        assert row["details"]["guard"]["attacker_risk"] and len(row["details"]["mixed_after_attack"]) == 1
        assert np.isfinite(row["attacker_fidelity"])
    assert main([*base, "--attack", "procrustes"]) == 2
    assert "needs --sybils >= 2" in capsys.readouterr().err


def test_keys_reset_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    record, _ = keys.add(name="alice")
    ledger_path = tmp_path / "ledger.sqlite"
    with Ledger(ledger_path) as ledger:
        ledger.put_state(record.key_id, "guard/x", b"state")
        ledger.put_state(record.key_id, "spread/y", b"state")
        ledger.put_state("other", "guard/x", b"state")
    argv = ["keys", "reset-state", "--keys", str(keys.path), "--ledger", str(ledger_path)]
    assert main([*argv, record.key_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"key_id": record.key_id, "name": "alice", "states_removed": 2}
    with Ledger(ledger_path) as ledger:
        assert ledger.get_state(record.key_id, "guard/x") is None and ledger.get_state("other", "guard/x")
    assert main([*argv, "nosuchid"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown key id 'nosuchid'" in err
    assert main(["keys", "reset-state", "--keys", str(keys.path), "--ledger", str(tmp_path / "none.sqlite"),
                 record.key_id]) == 2
    assert "does not exist" in capsys.readouterr().err
