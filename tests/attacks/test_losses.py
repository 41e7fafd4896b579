"""Tests of the stealing losses: hand-written references, closed forms, gradients, validation, registry."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from encoderguard.attacks.losses import (
    LOSSES,
    BarlowTwinsLoss,
    CosineLoss,
    InfoNCELoss,
    MSELoss,
    RDALoss,
    SoftNNLoss,
    StealingLoss,
    WassersteinLoss,
    create_loss,
)

N, D = 6, 5


def _pair(seed: int = 0, n: int = N, d: int = D, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


# ----------------------------------------------------------------------------------------------------
# (a) hand-written references (loops over rows, float64 numpy)


def ref_mse(s: np.ndarray, v: np.ndarray) -> float:
    total = 0.0
    for i in range(s.shape[0]):
        for k in range(s.shape[1]):
            total += (s[i, k] - v[i, k]) ** 2
    return total / s.size


def ref_cosine(s: np.ndarray, v: np.ndarray) -> float:
    sims = [float(_unit(s[i]) @ _unit(v[i])) for i in range(s.shape[0])]
    return 1.0 - sum(sims) / len(sims)


def ref_infonce(s: np.ndarray, v: np.ndarray, temperature: float, symmetric: bool) -> float:
    n = s.shape[0]
    sim = np.array([[_unit(s[i]) @ _unit(v[j]) for j in range(n)] for i in range(n)]) / temperature

    def ce(logits: np.ndarray) -> float:
        return float(np.mean([-logits[i, i] + math.log(np.exp(logits[i]).sum()) for i in range(n)]))

    return 0.5 * (ce(sim) + ce(sim.T)) if symmetric else ce(sim)


def ref_softnn(s: np.ndarray, v: np.ndarray, temperature: float, distance: str) -> float:
    n = s.shape[0]
    points = [_unit(row) for row in s] + [_unit(row) for row in v]
    labels = list(range(n)) + list(range(n))

    def dist(a: np.ndarray, b: np.ndarray) -> float:
        return float(((a - b) ** 2).sum()) if distance == "euclidean" else 1.0 - float(a @ b)

    losses = []
    for a in range(2 * n):
        same = sum(
            math.exp(-dist(points[a], points[b]) / temperature)
            for b in range(2 * n)
            if b != a and labels[b] == labels[a]
        )
        every = sum(math.exp(-dist(points[a], points[b]) / temperature) for b in range(2 * n) if b != a)
        losses.append(-math.log(same / every))
    return sum(losses) / len(losses)


def ref_sliced_wasserstein(
    s: np.ndarray, v: np.ndarray, seed: int, num_projections: int, pair_weight: float
) -> float:
    g = torch.Generator().manual_seed(seed)  # the documented way the loss draws its first projections
    theta = torch.randn(s.shape[1], num_projections, generator=g).double().numpy()
    total = 0.0
    for k in range(num_projections):
        direction = theta[:, k] / np.linalg.norm(theta[:, k])
        total += float(((np.sort(s @ direction) - np.sort(v @ direction)) ** 2).mean())
    return total / num_projections + pair_weight * ref_mse(s, v)


def ref_barlow(s: np.ndarray, v: np.ndarray, lambda_offdiag: float, eps: float) -> float:
    n, d = s.shape

    def standardise(x: np.ndarray) -> np.ndarray:
        return (x - x.mean(0)) / np.sqrt(x.var(0) + eps)  # numpy var is the biased one

    zs, zv = standardise(s), standardise(v)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(zs[b, i] * zv[b, j] for b in range(n)) / n
            total += (1 - c) ** 2 if i == j else lambda_offdiag * c**2
    return total


REFERENCE_CASES = [
    ("mse", MSELoss(), lambda s, v: ref_mse(s, v)),
    ("cosine", CosineLoss(), lambda s, v: ref_cosine(s, v)),
    ("infonce", InfoNCELoss(temperature=0.3), lambda s, v: ref_infonce(s, v, 0.3, False)),
    ("infonce-sym", InfoNCELoss(0.5, symmetric=True), lambda s, v: ref_infonce(s, v, 0.5, True)),
    ("softnn", SoftNNLoss(temperature=0.7), lambda s, v: ref_softnn(s, v, 0.7, "euclidean")),
    ("softnn-cos", SoftNNLoss(0.4, distance="cosine"), lambda s, v: ref_softnn(s, v, 0.4, "cosine")),
    (
        "barlow",
        BarlowTwinsLoss(lambda_offdiag=0.05, eps=1e-4),
        lambda s, v: ref_barlow(s, v, 0.05, 1e-4),
    ),
]


@pytest.mark.parametrize(
    "loss_fn,reference", [c[1:] for c in REFERENCE_CASES], ids=[c[0] for c in REFERENCE_CASES]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference(loss_fn: StealingLoss, reference: Any, seed: int) -> None:
    stolen, victim = _pair(seed)
    got = loss_fn(stolen, victim).item()
    assert got == pytest.approx(reference(stolen.numpy(), victim.numpy()), abs=1e-5, rel=1e-6)


@pytest.mark.parametrize("pair_weight", [0.0, 0.7])
def test_wasserstein_matches_reference(pair_weight: float) -> None:
    stolen, victim = _pair(3)
    got = WassersteinLoss(16, pair_weight=pair_weight, seed=11)(stolen, victim).item()
    want = ref_sliced_wasserstein(stolen.numpy(), victim.numpy(), 11, 16, pair_weight)
    assert got == pytest.approx(want, abs=1e-5, rel=1e-5)


def test_float32_matches_float64() -> None:
    stolen, victim = _pair(4)
    for name in LOSSES:
        kwargs = {"seed": 0} if name == "wasserstein" else {}
        want = create_loss(name, **kwargs)(stolen, victim).item()
        got = create_loss(name, **kwargs)(stolen.float(), victim.float()).item()
        assert got == pytest.approx(want, abs=1e-4, rel=1e-4), name


# ----------------------------------------------------------------------------------------------------
# (b) closed forms


def test_mse_closed_form() -> None:
    x, _ = _pair()
    assert MSELoss()(x, x.clone()).item() == 0.0
    assert MSELoss()(torch.zeros(3, 4), torch.full((3, 4), 2.0)).item() == pytest.approx(4.0)


def test_cosine_closed_form() -> None:
    x, _ = _pair()
    assert CosineLoss()(x, 3.0 * x).item() == pytest.approx(0.0, abs=1e-7)
    assert CosineLoss()(x, -x).item() == pytest.approx(2.0)
    assert CosineLoss()(torch.eye(2), torch.eye(2).flip(0)).item() == pytest.approx(1.0)


@pytest.mark.parametrize("n,temperature", [(2, 1.0), (4, 0.5), (8, 0.1)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_infonce_closed_form(n: int, temperature: float, symmetric: bool) -> None:
    pairs = torch.eye(n, dtype=torch.float64)
    got = InfoNCELoss(temperature, symmetric=symmetric)(pairs, pairs.clone()).item()
    assert got == pytest.approx(math.log(1 + (n - 1) * math.exp(-1 / temperature)), rel=1e-9)


def test_softnn_closed_form() -> None:
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    # identical pairs on orthogonal axes: partner at distance 0, the others at squared distance 2 (cosine 1)
    ortho = torch.tensor([e1, e2], dtype=torch.float64)
    assert SoftNNLoss(1.0)(ortho, ortho.clone()).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)))
    assert SoftNNLoss(1.0, distance="cosine")(ortho, ortho.clone()).item() == pytest.approx(
        math.log(1 + 2 * math.exp(-1))
    )
    # stolen rows 90 degrees off their victim row: for every point (by symmetry) the partner and one other
    # point lie at squared distance 2, the last one (antipodal) at 4
    victim = torch.tensor([e1, [-1.0, 0.0]], dtype=torch.float64)
    stolen = torch.tensor([e2, [0.0, -1.0]], dtype=torch.float64)
    want = math.log((2 * math.exp(-2) + math.exp(-4)) / math.exp(-2))
    assert SoftNNLoss(1.0)(stolen, victim).item() == pytest.approx(want)
    # two well-separated pairs (antipodal): loss vanishes at low temperature
    apart = torch.tensor([e1, [-1.0, 0.0]], dtype=torch.float64)
    assert SoftNNLoss(0.1)(apart, apart.clone()).item() == pytest.approx(0.0, abs=1e-12)


def test_softnn_euclidean_is_cosine_at_half_temperature() -> None:
    stolen, victim = _pair(5)
    euclid = SoftNNLoss(0.6)(stolen, victim)
    cosine = SoftNNLoss(0.3, distance="cosine")(stolen, victim)
    assert euclid.item() == pytest.approx(cosine.item(), rel=1e-9)


def test_wasserstein_closed_form_and_permutation_invariance() -> None:
    # 1-D: every unit direction is +-1, so the loss is the exact W2^2 of the sorted samples
    stolen = torch.tensor([[0.0], [1.0], [2.0]])
    victim = torch.tensor([[3.0], [1.0], [2.0]])
    assert WassersteinLoss(4, seed=0)(stolen, victim).item() == pytest.approx(1.0)
    x, _ = _pair()
    shuffled = x[torch.randperm(N, generator=torch.Generator().manual_seed(0))]
    assert WassersteinLoss(8, seed=0)(x, shuffled).item() == pytest.approx(0.0, abs=1e-12)
    paired = WassersteinLoss(8, pair_weight=2.0, seed=0)(x, shuffled).item()
    assert paired == pytest.approx(2.0 * MSELoss()(x, shuffled).item())


def test_wasserstein_reproducible() -> None:
    stolen, victim = _pair()
    first, second = WassersteinLoss(4, seed=7), WassersteinLoss(4, seed=7)
    values = [first(stolen, victim).item() for _ in range(3)]
    assert values == [second(stolen, victim).item() for _ in range(3)]
    assert len(set(values)) == 3  # fresh projections on every call
    from_generator = WassersteinLoss(4, generator=torch.Generator().manual_seed(7))
    assert from_generator(stolen, victim).item() == values[0]


def test_barlow_closed_form() -> None:
    # standardised, mutually orthogonal columns; victim is an affine copy (perfectly correlated)
    stolen = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert BarlowTwinsLoss()(stolen, 2.0 * stolen + 3.0).item() == pytest.approx(0.0, abs=1e-8)
    # anti-correlated: C = -I, each of the 2 diagonal terms is (1 - (-1))^2 = 4
    assert BarlowTwinsLoss()(stolen, -stolen).item() == pytest.approx(8.0, rel=1e-4)


# ----------------------------------------------------------------------------------------------------
# (c) gradients


def _fresh(name: str) -> StealingLoss:
    return create_loss(name, seed=0) if name == "wasserstein" else create_loss(name)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_flow_and_loss_decreases(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    victim = torch.randn(16, 8, generator=g).requires_grad_(True)
    stolen = torch.nn.Parameter(torch.randn(16, 8, generator=g))
    loss_fn = _fresh(name)
    optimiser = torch.optim.SGD([stolen], lr=5.0)
    before = _fresh(name)(stolen, victim).item()  # a fresh Wasserstein loss draws the same projections
    for _ in range(15):
        optimiser.zero_grad()
        loss = loss_fn(stolen, victim)
        loss.backward()
        assert stolen.grad is not None and torch.isfinite(stolen.grad).all() and stolen.grad.abs().sum() > 0
        assert victim.grad is None  # the victim's answers are a constant target
        optimiser.step()
    after = _fresh(name)(stolen, victim).item()
    assert after < 0.7 * before, (before, after)


def test_softnn_learned_temperature_gets_gradient() -> None:
    stolen, victim = _pair()
    loss_fn = SoftNNLoss(0.5, learn_temperature=True)
    assert loss_fn.temperature == pytest.approx(0.5)
    assert list(loss_fn.parameters()) == [loss_fn.log_temperature]
    loss_fn(stolen.float(), victim.float()).backward()
    assert loss_fn.log_temperature is not None and loss_fn.log_temperature.grad is not None
    assert SoftNNLoss(0.5)(stolen, victim).item() == pytest.approx(loss_fn(stolen, victim).item(), rel=1e-6)
    assert list(SoftNNLoss(0.5).parameters()) == []


# ----------------------------------------------------------------------------------------------------
# (d) validation

BAD_SETTINGS = [
    (InfoNCELoss, {"temperature": 0}, "got 0"),
    (InfoNCELoss, {"temperature": -0.5}, "got -0.5"),
    (InfoNCELoss, {"temperature": float("nan")}, "got nan"),
    (InfoNCELoss, {"temperature": float("inf")}, "got inf"),
    (InfoNCELoss, {"temperature": "0.1"}, "got '0.1'"),
    (SoftNNLoss, {"temperature": 0.0}, "got 0.0"),
    (SoftNNLoss, {"temperature": -1}, "got -1"),
    (SoftNNLoss, {"temperature": float("nan")}, "got nan"),
    (SoftNNLoss, {"distance": "manhattan"}, "'manhattan'"),
    (WassersteinLoss, {"num_projections": 0}, "got 0"),
    (WassersteinLoss, {"num_projections": -3}, "got -3"),
    (WassersteinLoss, {"num_projections": 2.5}, "got 2.5"),
    (WassersteinLoss, {"num_projections": True}, "got True"),
    (WassersteinLoss, {"pair_weight": -1.0}, "got -1.0"),
    (WassersteinLoss, {"pair_weight": float("nan")}, "got nan"),
    (WassersteinLoss, {"seed": "7"}, "got '7'"),
    (WassersteinLoss, {"seed": 1, "generator": torch.Generator()}, "seed=1"),
    (BarlowTwinsLoss, {"lambda_offdiag": -1e-3}, "got -0.001"),
    (BarlowTwinsLoss, {"lambda_offdiag": float("inf")}, "got inf"),
    (BarlowTwinsLoss, {"eps": 0}, "got 0"),
    (CosineLoss, {"eps": -1e-8}, "got -1e-08"),
]


@pytest.mark.parametrize("cls,kwargs,quoted", BAD_SETTINGS)
def test_bad_settings_raise(cls: type, kwargs: dict[str, Any], quoted: str) -> None:
    with pytest.raises(ValueError, match=re.escape(quoted)):
        cls(**kwargs)


def _nan_at_0(x: Tensor) -> Tensor:
    x = x.clone()
    x[0, 0] = float("nan")
    return x


def _inf_at_0(x: Tensor) -> Tensor:
    x = x.clone()
    x[0, 0] = float("inf")
    return x


BAD_INPUTS = {
    "1-D": (lambda s, v: (s[0], v[0]), "2-D"),
    "3-D": (lambda s, v: (s[None], v[None]), "2-D"),
    "shape mismatch": (lambda s, v: (s, v[:, :-1]), "same shape"),
    "empty": (lambda s, v: (s[:0], v[:0]), "N=0"),
    "no dims": (lambda s, v: (s[:, :0], v[:, :0]), "D=0"),
    "nan stolen": (lambda s, v: (_nan_at_0(s), v), "stolen contains NaN"),
    "inf victim": (lambda s, v: (s, _inf_at_0(v)), "victim contains NaN or infinite"),
    "integer": (lambda s, v: (s.long(), v.long()), "floating point"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_inputs_raise(name: str, case: str) -> None:
    make, message = BAD_INPUTS[case]
    stolen, victim = make(*_pair())
    with pytest.raises(ValueError, match=re.escape(message)):
        create_loss(name)(stolen, victim)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_batch_size_one(name: str) -> None:
    stolen, victim = _pair(n=1)
    loss_fn = create_loss(name)
    if loss_fn.min_batch_size >= 2:
        with pytest.raises(ValueError, match="at least 2 rows, got N=1"):
            loss_fn(stolen, victim)
    else:
        assert torch.isfinite(loss_fn(stolen, victim))


def test_batch_contrastive_losses_need_two_rows() -> None:
    contrastive = {name for name, cls in LOSSES.items() if cls.min_batch_size >= 2}
    assert contrastive == {"infonce", "softnn", "barlow", "rda"}


def test_victim_of_other_dtype_is_cast() -> None:
    stolen, victim = _pair()
    for name in LOSSES:
        assert create_loss(name)(stolen.float(), victim).dtype == torch.float32


# ----------------------------------------------------------------------------------------------------
# (e) registry


def test_registry_names_and_classes() -> None:
    assert LOSSES == {
        "mse": MSELoss,
        "cosine": CosineLoss,
        "infonce": InfoNCELoss,
        "softnn": SoftNNLoss,
        "wasserstein": WassersteinLoss,
        "barlow": BarlowTwinsLoss,
        "rda": RDALoss,
    }
    loss_fn = create_loss("InfoNCE", temperature=0.2, symmetric=True)
    assert isinstance(loss_fn, InfoNCELoss) and loss_fn.temperature == 0.2 and loss_fn.symmetric


def test_registry_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="'ntxent'") as info:
        create_loss("ntxent")
    for name in LOSSES:
        assert name in str(info.value)


def test_registry_bad_kwargs() -> None:
    with pytest.raises(ValueError, match="bad settings for loss 'mse'"):
        create_loss("mse", temperature=0.1)
    with pytest.raises(ValueError, match="temperature"):
        create_loss("softnn", temprature=0.1)
    with pytest.raises(ValueError, match="got -2"):
        create_loss("infonce", temperature=-2)
