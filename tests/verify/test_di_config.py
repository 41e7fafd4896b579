import json

import numpy as np
import pytest
from tests.verify.test_dataset_inference import N_MEMBERS, FakeAPI, _images, _table

from encoderguard.models.random_init import null_encoders
from encoderguard.verify.dataset_inference import CopyCheck, DatasetInference, SelfCheck, min_permutations
from encoderguard.verify.di_config import FrozenDIConfig, config_digest

N_HELDOUT = 192


@pytest.fixture(scope="module")
def data():
    return _images(range(N_MEMBERS)), _images(range(N_MEMBERS, N_MEMBERS + N_HELDOUT))


def _settings(**kw):
    return DatasetInference(**{"members": None, "nonmembers": 128, "n_permutations": 199, **kw}).settings()


def _frozen(data, owner_table, **kw):
    """Freeze the way freeze_di does: the owner's self-check on the draw seed + 1."""
    members, heldout = data
    settings = _settings(**kw)
    check_di = DatasetInference.from_settings(settings, seed=settings["seed"] + 1).fit(members=members,
                                                                                      nonmembers=heldout)
    check = check_di.self_check(FakeAPI(owner_table), budgets=())
    return FrozenDIConfig(settings=settings, null_encoders=0, self_check_seed=settings["seed"] + 1,
                          self_check=check.to_dict(), owner_weights_sha256="ab" * 32)


# -- the permutation-count guard ------------------------------------------------------------------------------------
def test_permutation_guard_needs_p_below_alpha_to_be_reachable():
    with pytest.raises(ValueError, match=r"cannot give p < alpha=0.01 .*use at least 100"):
        DatasetInference(n_permutations=99, alpha=0.01)  # smallest p = 1/100 = alpha: never below it
    assert DatasetInference(n_permutations=100, alpha=0.01).n_permutations == 100
    assert (min_permutations(0.05), min_permutations(0.01), min_permutations(0.001)) == (20, 100, 1000)
    for alpha in (0.05, 0.01, 0.001, 0.03, 0.5):
        b = min_permutations(alpha)
        assert 1 / (b + 1) < alpha <= 1 / b
        DatasetInference(n_permutations=b, alpha=alpha)
        with pytest.raises(ValueError, match="cannot give p < alpha"):
            DatasetInference(n_permutations=b - 1, alpha=alpha) if b > 1 else DatasetInference(
                n_permutations=1, alpha=0.5)


@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.001])
def test_self_check_budget_ladder_satisfies_the_guard(data, alpha):
    members, heldout = data
    di = DatasetInference(members=None, nonmembers=128, n_permutations=min_permutations(alpha), alpha=alpha).fit(
        members=members, nonmembers=heldout)
    check = di.self_check(FakeAPI(_table(0, 1.5)), budgets=[100], repeats=1)
    assert len(check.budgets[100]) == 1 and 0 < check.budgets[100][0] <= 1


# -- copy check at another alpha ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stored_alpha, detected, p_value, expected", [
    (0.05, True, 0.03, "inconclusive"),   # detected at 0.05, but not at this test's 0.01
    (0.001, False, 0.005, "independent"),  # missed at 0.001, but detected at 0.01
    (0.01, True, 0.005, "independent"),    # same alpha: taken as stored
])
def test_copy_check_is_rederived_at_the_tests_alpha(data, stored_alpha, detected, p_value, expected):
    members, heldout = data
    copy = CopyCheck(detected=detected, p_value=p_value, z=-2.0, effect=0.1, loss="infonce", budget=2000,
                     epochs=60, seconds=1.0, reason="" if detected else "copies go unnoticed", alpha=stored_alpha)
    di = DatasetInference(members=None, nonmembers=128, n_permutations=199).fit(
        members=members, nonmembers=heldout, owner=FakeAPI(_table(0, 1.8)), copy_check=copy)
    verdict = di.verify(FakeAPI(_table(1, 1.0)))
    assert verdict.verdict == expected
    assert verdict.details["copy_check"]["alpha"] == stored_alpha
    rederived = stored_alpha != 0.01
    assert ("copy_check_rederived" in verdict.details) == rederived
    assert any("re-derived at this test's alpha = 0.01" in w for w in verdict.warnings) == rederived
    if expected == "inconclusive":
        assert "not detected at alpha = 0.01" in verdict.details["reason"]
    assert verdict.details["calibrated"] is True and "exact" in verdict.details["calibration"]


# -- frozen self-check on another draw ------------------------------------------------------------------------------
def test_self_check_round_trips_and_must_match_the_test(data):
    members, heldout = data
    di = DatasetInference(members=None, nonmembers=128, n_permutations=199).fit(members=members, nonmembers=heldout)
    check = di.self_check(FakeAPI(_table(0, 1.5)), budgets=[60], repeats=1)
    again = SelfCheck.from_dict(json.loads(json.dumps(check.to_dict())))
    assert again.to_dict() == check.to_dict()
    with pytest.raises(ValueError, match="other settings: k=1"):
        DatasetInference(members=None, nonmembers=128, n_permutations=199, k=3).fit(
            members=members, nonmembers=heldout, self_check=check)
    with pytest.raises(ValueError, match="not both"):
        DatasetInference(members=None, nonmembers=128, n_permutations=199).fit(
            members=members, nonmembers=heldout, owner=FakeAPI(_table(0, 1.5)), self_check=check)
    with pytest.raises(ValueError, match="self-check"):
        SelfCheck.from_dict({"protects": True})


def test_owner_as_suspect_is_tested_on_another_draw_than_its_self_check(data):
    members, heldout = data
    owner_table = _table(0, 1.5)
    config = _frozen(data, owner_table)
    check_api, suspect_api = FakeAPI(owner_table), FakeAPI(owner_table)
    config.self_check_test().fit(members=members, nonmembers=heldout).query(check_api)
    di = config.suspect_test().fit(members=members, nonmembers=heldout, self_check=config.self_check_result())
    verdict = di.verify(suspect_api)
    held_check = {i for i in check_api.seen if i >= N_MEMBERS}
    held_suspect = {i for i in suspect_api.seen if i >= N_MEMBERS}
    assert len(held_check) == len(held_suspect) == 128 and held_check != held_suspect
    assert verdict.p_value != config.self_check["owner"]["p_value"] or verdict.statistic != pytest.approx(
        config.self_check["owner"]["statistic"])
    assert verdict.details["self_check"]["seed"] == 1 and verdict.details["self_check"]["same_draw"] is False
    assert verdict.verdict == "stolen"  # a fresh test of the owner's own model, which it passes here


# -- the config file ------------------------------------------------------------------------------------------------
def test_config_round_trips_and_refuses_edits(data, tmp_path):
    config = _frozen(data, _table(0, 1.5))
    assert config.digest == config_digest(config.settings, 0, 1) and len(config.digest) == 64
    path = tmp_path / "di.json"
    config.save(path)
    text = path.read_text()
    assert text.startswith('{\n  "format": "encoderguard-di-config"')
    loaded = FrozenDIConfig.load(path)
    assert loaded == config and loaded.source == str(path)
    for key, value in (("null_encoders", 3), ("self_check_seed", 5)):
        data_ = json.loads(text)
        data_[key] = value
        path.write_text(json.dumps(data_))
        with pytest.raises(ValueError, match="edited after it was frozen"):
            FrozenDIConfig.load(path)
    data_ = json.loads(text)
    data_["settings"]["n_permutations"] = 999
    path.write_text(json.dumps(data_))
    with pytest.raises(ValueError, match="edited after it was frozen"):
        FrozenDIConfig.load(path)
    del data_["digest"]
    path.write_text(json.dumps(data_))
    with pytest.raises(ValueError, match="without a digest; re-run .*--self-check --save-config"):
        FrozenDIConfig.load(path)
    for content, message in (("{not json", "cannot read"), ('{"format": "other"}', "not a dataset-inference config"),
                             ('{"format": "encoderguard-di-config", "digest": "x"}', "malformed")):
        path.write_text(content)
        with pytest.raises(ValueError, match=message):
            FrozenDIConfig.load(path)
    with pytest.raises(ValueError, match="cannot read"):
        FrozenDIConfig.load(tmp_path / "missing.json")


def test_check_overrides_names_the_frozen_value(data):
    config = _frozen(data, _table(0, 1.5))
    config.check_overrides(alpha=0.01, seed=0, null_encoders=0, n_permutations=199, k=None, budget=None)
    with pytest.raises(ValueError, match=r"--alpha 0.05 conflicts with the frozen alpha 0.01 in the frozen config"):
        config.check_overrides(alpha=0.05)
    with pytest.raises(ValueError) as info:
        config.check_overrides(null_encoders=3, n_permutations=999, seed=None)
    assert "--null-encoders 3 conflicts with the frozen null_encoders 0" in str(info.value)
    assert "--permutations 999 conflicts with the frozen n_permutations 199" in str(info.value)
    with pytest.raises(ValueError, match="unknown dataset-inference settings"):
        config.check_overrides(colour="red")


def test_config_is_validated(data):
    config = _frozen(data, _table(0, 1.5))
    with pytest.raises(ValueError, match="must differ"):
        FrozenDIConfig(settings=config.settings, null_encoders=0, self_check_seed=0, self_check=config.self_check)
    with pytest.raises(ValueError, match="does not match the frozen settings"):
        FrozenDIConfig(settings={**config.settings, "k": 2}, null_encoders=0, self_check_seed=1,
                       self_check=config.self_check)
    with pytest.raises(ValueError, match="null_encoders must be an int"):
        FrozenDIConfig(settings=config.settings, null_encoders=-1, self_check_seed=1, self_check=config.self_check)


def test_null_encoders_follow_one_convention():
    from tests.conftest import tiny_encoder

    from encoderguard.models.random_init import random_init_like

    owner = tiny_encoder(0)
    nulls = null_encoders(owner, 2)
    expected = random_init_like(owner, seed=10_001)
    assert len(nulls) == 2 and all(
        np.array_equal(a.detach().numpy(), b.detach().numpy())
        for a, b in zip(nulls[1].parameters(), expected.parameters(), strict=True))
    assert null_encoders(owner, 0) == []
    with pytest.raises(ValueError, match="null_encoders"):
        null_encoders(owner, -1)


# -- the library entry points on a checkpoint -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def owner_dir(tmp_path_factory):
    from encoderguard.models import ModelCard, create_encoder, save_checkpoint

    out = tmp_path_factory.mktemp("di-lib") / "owner"
    enc = create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2, pool="flatten")
    save_checkpoint(out, encoder=enc, card=ModelCard(
        arch="convnet", arch_kwargs={}, input_shape=(1, 8, 8), embed_dim=16,
        data={"dataset": "digits", "split": "owner-train", "split_seed": 0, "train_size": 200}))
    return out


def test_freeze_di_and_verify_di(owner_dir, tmp_path):
    from encoderguard.api import LocalAPI
    from encoderguard.models import load_encoder
    from encoderguard.verify import freeze_di, verify_di

    fast = {"members": 40, "nonmembers": 60, "n_permutations": 100}
    config = freeze_di(owner_dir, null_encoders=1, budgets=(), **fast)
    assert config.self_check_seed == 1 and config.settings["seed"] == 0 and config.null_encoders == 1
    assert config.self_check["settings"]["seed"] == 1 and config.owner_result is not None
    config.save(tmp_path / "di.json")
    frozen = FrozenDIConfig.load(tmp_path / "di.json")
    suspect = LocalAPI(load_encoder(owner_dir), key="suspect")
    verdict = verify_di(owner_dir, suspect, config=frozen, alpha=0.01)
    assert verdict.details["frozen_digest"] == config.digest and verdict.details["calibrated"] is True
    assert verdict.details["settings"] == config.settings and set(verdict.details["scores"]) == {"suspect"}
    assert not any("not frozen" in w for w in verdict.warnings)
    with pytest.raises(ValueError, match="--alpha 0.05 conflicts with the frozen alpha 0.01 in .*di.json"):
        verify_di(owner_dir, suspect, config=frozen, alpha=0.05)
    with pytest.raises(ValueError, match="copy check conflicts"):
        verify_di(owner_dir, suspect, config=frozen, copy_check=True)
    ad_hoc = verify_di(owner_dir, suspect, null_encoders=1, **fast)
    assert any("not frozen" in w for w in ad_hoc.warnings) and "frozen_digest" not in ad_hoc.details
    assert ad_hoc.details["self_check"]["same_draw"] is True and set(ad_hoc.details["scores"]) == {"owner", "suspect"}
