import numpy as np
import pytest
import torch

from encoderguard.data import owner_split
from encoderguard.errors import APIError, DataError
from encoderguard.models import ModelCard
from encoderguard.verify.dataset_inference import DatasetInference, split_budget

N_MEMBERS, N_HELDOUT, DIM = 64, 192, 16


def _images(ids):
    """8x8 images that carry their id in two pixels, so a fake API can look up a fixed answer per image."""
    x = torch.rand(len(ids), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ids = torch.as_tensor(ids)
    x[:, 0, 0, 0] = (ids % 256).float() / 255
    x[:, 0, 0, 1] = (ids // 256).float() / 255
    return x


class FakeAPI:
    """An EmbeddingAPI answering a fixed table row per image id, optionally transformed."""

    def __init__(self, table, transform=None, corrupt=None):
        self.table, self.transform, self.corrupt = table, transform, corrupt
        self.queries_used, self.seen = 0, []
        self.dim = table.shape[1] if transform is None else transform(table[:1]).shape[1]
        self.input_shape = (1, 8, 8)

    def embed(self, x):
        ids = (x[:, 0, 0, 0] * 255).round().long() + 256 * (x[:, 0, 0, 1] * 255).round().long()
        self.seen.extend(ids.tolist())
        out = self.table[ids.numpy()]
        out = out if self.transform is None else self.transform(out)
        if self.corrupt == "nan":
            out = out.copy()
            out[3, 0] = np.nan
        elif self.corrupt == "count":
            out = out[:-1]
        self.queries_used += len(x)
        return torch.from_numpy(np.ascontiguousarray(out)).float()


def _table(seed, spread):
    """Answers for ids 0..N_MEMBERS-1 (members) and held-out ids: points around 8 shared cluster centres, members
    with `spread` times the held-out noise. spread > 1 mimics the repulsion of a memorising encoder (members
    farther from each other, in angle as well as in distance)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(8, DIM)) * 2
    noise = rng.normal(size=(N_MEMBERS + N_HELDOUT, DIM))
    noise[:N_MEMBERS] *= spread
    return centres[rng.integers(0, 8, N_MEMBERS + N_HELDOUT)] + noise


@pytest.fixture(scope="module")
def data():
    return _images(range(N_MEMBERS)), _images(range(N_MEMBERS, N_MEMBERS + N_HELDOUT))


def _di(**kw):
    return DatasetInference(**{"members": None, "nonmembers": 128, "n_permutations": 199, **kw})


def test_stolen_and_independent(data):
    members, heldout = data
    owner_table = _table(0, 1.5)
    di = _di().fit(members=members, nonmembers=heldout, owner=FakeAPI(owner_table))
    assert di.self_check_.protects and di.self_check_.owner.p_value < 0.01 and di.self_check_.owner.effect > 0
    copy = owner_table + np.random.default_rng(1).normal(scale=0.1, size=owner_table.shape)
    stolen = di.verify(FakeAPI(copy))
    assert stolen.verdict == "stolen" and stolen.p_value < 0.01 and stolen.effect > 0
    assert stolen.queries_used == N_MEMBERS + 128 and stolen.n == N_MEMBERS + 128
    assert stolen.details["self_check"]["protects"] is True
    independent = di.verify(FakeAPI(_table(2, 1.0)))
    assert independent.verdict == "independent" and independent.p_value > 0.01
    assert any("not a proof of independence" in w for w in independent.warnings)
    assert set(stolen.to_dict()) >= {"method", "verdict", "p_value", "alpha", "effect", "n", "queries_used"}


def test_inconclusive_when_the_owner_shows_no_signal(data):
    members, heldout = data
    di = _di().fit(members=members, nonmembers=heldout, owner=FakeAPI(_table(3, 1.0)))
    assert not di.self_check_.protects
    verdict = di.verify(FakeAPI(_table(0, 1.5)))  # even a suspect with a strong signal
    assert verdict.verdict == "inconclusive"
    assert "no membership signal" in verdict.details["reason"] and verdict.warnings


def test_wrong_direction_is_not_evidence(data):
    members, heldout = data
    di = _di(direction="higher").fit(members=members, nonmembers=heldout, owner=FakeAPI(_table(0, 1.5)))
    assert not di.self_check_.protects and di.self_check_.owner.p_value > 0.9
    assert di.self_check_.owner.effect < 0


@pytest.mark.parametrize("geometry, transform", [("standardised", "permute"), ("standardised", "pad"),
                                                 ("standardised", "scale"), ("whitened", "affine"),
                                                 ("whitened", "pad")])
def test_verdict_invariant_to_suspect_output_maps(data, geometry, transform):
    members, heldout = data
    owner_table = _table(0, 1.5)
    rng = np.random.default_rng(5)
    a = rng.normal(size=(DIM, DIM)) + 3 * np.eye(DIM)
    b = rng.normal(size=DIM) * 5
    scale = rng.uniform(0.1, 10, size=DIM)
    maps = {"permute": lambda t: t[:, ::-1], "pad": lambda t: np.concatenate([t, np.full((len(t), 4), 2.0)], 1),
            "affine": lambda t: t @ a.T + b, "scale": lambda t: t * scale - b}
    di = _di(geometry=geometry).fit(members=members, nonmembers=heldout, owner=FakeAPI(owner_table))
    copy = owner_table + np.random.default_rng(1).normal(scale=0.3, size=owner_table.shape)
    plain = di.verify(FakeAPI(copy))
    mapped = di.verify(FakeAPI(copy, transform=maps[transform]))
    assert mapped.verdict == plain.verdict == "stolen"
    assert mapped.p_value == pytest.approx(plain.p_value)
    assert mapped.statistic == pytest.approx(plain.statistic, rel=1e-4)


def test_null_encoders_adjust_the_test(data):
    members, heldout = data
    owner_table = _table(0, 1.5)
    nulls = [FakeAPI(_table(10 + i, 1.0)) for i in range(2)]
    di = _di().fit(members=members, nonmembers=heldout, owner=FakeAPI(owner_table), null_models=nulls)
    assert len(di.null_answers_) == 2 and len(di.self_check_.null) == 2
    stolen = di.verify(FakeAPI(owner_table))
    assert stolen.verdict == "stolen" and stolen.details["adjustment"]["null_models"] == 2
    assert {"beta", "rho", "z_unadjusted", "control_z"} <= set(stolen.details["adjustment"])
    unadjusted = _di(adjust=False).fit(members=members, nonmembers=heldout, null_models=nulls)
    assert unadjusted.test_answers(*unadjusted.query(FakeAPI(owner_table))[:2]).adjustment == {}


def test_split_design_welch_and_gmm(data):
    members, heldout = data
    owner = FakeAPI(_table(0, 1.6))
    for kw in ({"design": "split", "test": "welch"}, {"score": "gmm", "design": "split", "test": "welch",
                                                      "gmm_components": 2, "gmm_pca_dim": 8}):
        di = _di(**kw).fit(members=members, nonmembers=heldout, owner=owner)
        assert di.self_check_.owner.n_members == N_MEMBERS // 2
        assert di.self_check_.protects, kw


def test_queries_are_shuffled_and_the_budget_respected(data):
    members, heldout = data
    api = FakeAPI(_table(0, 1.5))
    di = DatasetInference(members=20, nonmembers=30, n_permutations=100).fit(members=members, nonmembers=heldout)
    m, h, used = di.query(api)
    assert used == 50 and m.shape == (20, DIM) and h.shape == (30, DIM)
    is_member = np.array(api.seen) < N_MEMBERS
    assert is_member.sum() == 20 and not (is_member[:20].all() or is_member[-20:].all())
    assert np.allclose(m, api.table[np.sort(np.array(api.seen)[is_member])], atol=1e-6)


def test_self_check_finds_a_query_budget(data):
    members, heldout = data
    di = _di().fit(members=members, nonmembers=heldout)
    check = di.self_check(FakeAPI(_table(0, 1.8)), budgets=[20, 60, 192], repeats=2)
    assert check.protects and check.min_queries is not None and check.min_queries <= 192
    assert set(check.budgets) <= {20, 60, 192}
    assert check.to_dict()["settings"] == di.settings()


@pytest.mark.parametrize("corrupt, message", [("nan", "NaN or infinite values for 1 of"),
                                              ("count", "answered 191 embeddings for 192 images")])
def test_unusable_answers(data, corrupt, message):
    members, heldout = data
    di = _di().fit(members=members, nonmembers=heldout)
    with pytest.raises(APIError, match=message):
        di.verify(FakeAPI(_table(0, 1.0), corrupt=corrupt))


def test_too_few_samples(data):
    members, heldout = data
    with pytest.raises(DataError, match="too few samples for the mixture"):
        DatasetInference(score="gmm", design="split", gmm_components=20, members=30, nonmembers=100).fit(
            members=members, nonmembers=heldout)
    with pytest.raises(DataError, match="too few owner-train images"):
        DatasetInference(members=100).fit(members=members, nonmembers=heldout)
    with pytest.raises(DataError, match="too few owner-heldout images"):
        DatasetInference(members=10, nonmembers=500).fit(members=members, nonmembers=heldout)


def test_owner_card_without_split_information():
    card = ModelCard(arch="convnet", arch_kwargs={}, input_shape=(1, 8, 8), embed_dim=16, data=None)
    with pytest.raises(DataError, match="no split information"):
        owner_split(card, "owner-train")
    card = ModelCard(arch="convnet", arch_kwargs={}, input_shape=(1, 8, 8), embed_dim=16,
                     data={"dataset": "digits", "split": "query", "split_seed": 0, "train_size": 100})
    with pytest.raises(DataError, match="not 'owner-train'"):
        owner_split(card, "owner-train")


def test_settings_are_validated_and_round_trip():
    di = DatasetInference(k=3, geometry="cosine", seed=4)
    assert DatasetInference.from_settings(di.settings()).settings() == di.settings()
    with pytest.raises(ValueError, match="unknown dataset-inference settings"):
        DatasetInference.from_settings({"colour": "red"})
    with pytest.raises(ValueError, match="'median'"):
        DatasetInference(score="median")
    with pytest.raises(ValueError, match="design='split'"):
        DatasetInference(score="gmm")
    with pytest.raises(ValueError, match="cannot give p < alpha"):
        DatasetInference(n_permutations=50, alpha=0.01)
    assert split_budget(2500, 500) == (500, 2000) and split_budget(1000, 500) == (200, 800)
    assert split_budget(2500, 100) == (100, 2400)
    with pytest.raises(ValueError, match="budget"):
        split_budget(4, 500)


@pytest.mark.parametrize("detected, suspect_spread, expected", [
    (False, 1.0, "inconclusive"),   # no evidence, and a copy of the owner would not have been detected either
    (True, 1.0, "independent"),     # no evidence, and the test did catch a copy: "independent" is backed
    (False, 1.8, "stolen"),         # evidence stands whatever the copy check said
])
def test_copy_check_gates_independent_verdicts(data, detected, suspect_spread, expected):
    from encoderguard.verify.dataset_inference import CopyCheck

    members, heldout = data
    di = _di().fit(members=members, nonmembers=heldout, owner=FakeAPI(_table(0, 1.8)))
    assert di.copy_check_ is None
    check = CopyCheck(detected=detected, p_value=0.001 if detected else 0.3, z=-1.0, effect=0.1, loss="infonce",
                      budget=2000, epochs=60, seconds=1.0, reason="" if detected else "copies go unnoticed")
    di.copy_check_ = CopyCheck.from_dict(check.to_dict())
    verdict = di.verify(FakeAPI(_table(1, suspect_spread)))
    assert verdict.verdict == expected
    assert verdict.details["copy_check"]["detected"] is detected
    assert ("copies go unnoticed" in verdict.warnings) == (expected == "inconclusive")
    with pytest.raises(ValueError, match="copy check"):
        CopyCheck.from_dict({"detected": True})
