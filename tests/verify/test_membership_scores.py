import numpy as np
import pytest

from encoderguard.verify.membership_scores import (
    gmm_scores,
    neighbour_table,
    nn_scores,
    nn_scores_from_table,
    prepare,
    similarity_matrix,
    standardise,
    whiten,
)


def _pairwise(x):
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def _transforms(x, rng):
    d = x.shape[1]
    a = rng.normal(size=(d, d)) + 3 * np.eye(d)  # invertible, moderately conditioned
    return {
        "permuted": x[:, rng.permutation(d)],
        "padded": np.concatenate([x, np.full((x.shape[0], 5), 3.0), np.zeros((x.shape[0], 2))], axis=1),
        "affine": x @ a.T + rng.normal(size=d) * 10,
        "scaled": x * 1e3,
    }


def test_whiten_has_identity_covariance_and_drops_constant_directions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 10))  # rank 6 in 10 dimensions
    w = whiten(x)
    assert w.shape == (200, 6)
    assert np.allclose(np.cov(w.T), np.eye(6), atol=1e-8)


def test_whitened_distances_are_invariant():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 8)) * np.linspace(0.5, 3, 8)
    ref = _pairwise(whiten(x))
    for name, y in _transforms(x, rng).items():
        assert np.allclose(_pairwise(whiten(y)), ref, rtol=1e-6, atol=1e-6), name


def test_standardised_is_invariant_to_permutation_padding_and_scale_only():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 4))
    t = _transforms(x, rng)
    ref = _pairwise(standardise(x))
    for name in ("permuted", "padded", "scaled"):
        assert np.allclose(_pairwise(standardise(t[name])), ref), name
    assert not np.allclose(_pairwise(standardise(t["affine"])), ref)


def test_nn_scores_match_brute_force_and_the_table():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 5))
    sim = similarity_matrix(x, metric="euclidean")
    assert np.isneginf(np.diag(sim)).all()
    members = np.zeros(60, dtype=bool)
    members[rng.choice(60, 20, replace=False)] = True
    d = _pairwise(x)
    for k in (1, 3):
        expected = []
        for i in range(60):
            others = [j for j in np.flatnonzero(members) if j != i]
            expected.append(np.mean(np.sort(-d[i, others])[::-1][:k]))
        got = nn_scores(sim, members, k=k)
        assert np.allclose(got, expected, rtol=1e-5)
        for width in (4, 59):  # a narrow table forces the fallback path
            assert np.allclose(nn_scores_from_table(neighbour_table(sim, width=width), sim, members, k=k), got)
    with pytest.raises(ValueError, match="k must be"):
        nn_scores(sim, members, k=20)


def test_cosine_similarity_and_errors():
    x = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    sim = similarity_matrix(x, metric="cosine")
    assert sim[0, 2] == pytest.approx(np.sqrt(0.5))
    with pytest.raises(ValueError, match="zero vectors"):
        similarity_matrix(np.zeros((3, 2)), metric="cosine")
    with pytest.raises(ValueError, match="metric"):
        similarity_matrix(x, metric="manhattan")
    with pytest.raises(ValueError, match="NaN"):
        prepare(np.array([[1.0, np.nan], [0.0, 1.0]]), "whitened")
    with pytest.raises(ValueError, match="geometry"):
        prepare(x, "polar")


def test_gmm_scores_prefer_the_reference_distribution_and_refuse_too_few_samples():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(200, 6))
    near, far = rng.normal(size=(50, 6)), rng.normal(size=(50, 6)) * 3
    s = gmm_scores(ref, np.concatenate([near, far]), n_components=2, pca_dim=4)
    assert s[:50].mean() > s[50:].mean()
    assert np.allclose(s, gmm_scores(ref, np.concatenate([near, far]), n_components=2, pca_dim=4))  # seeded
    with pytest.raises(ValueError, match="too few samples for the mixture"):
        gmm_scores(ref[:10], near, n_components=10)
