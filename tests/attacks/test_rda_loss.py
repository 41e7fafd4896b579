"""RDALoss: a hand-computed value, the role of each term, settings and the constant target."""

from __future__ import annotations

import math

import pytest
import torch

from encoderguard.attacks.losses import LOSSES, RDALoss, create_loss


def test_rda_loss_matches_a_hand_computed_value():
    # s = I (unit rows), prototypes = I / 2, T = 1: for each row the two negatives (the other prototype and the
    # other representation) both have similarity 0, the positive 0.5; |s - p|^2 = 0.25 and cos = 1.
    stolen, protos = torch.eye(2), 0.5 * torch.eye(2)
    eps = 1e-4
    disc = math.log(2.0) - 0.5
    align = math.log(0.25 + eps) - math.log(2.0 + eps)
    assert float(RDALoss(temperature=1.0)(stolen, protos)) == pytest.approx(disc + align, abs=1e-6)
    assert float(RDALoss(temperature=1.0, beta=0.0)(stolen, protos)) == pytest.approx(disc, abs=1e-6)
    assert float(RDALoss(temperature=1.0, alpha=0.0, beta=2.0)(stolen, protos)) == pytest.approx(2 * align, abs=1e-6)
    # the copy's side is normalised: scaling it changes nothing
    assert float(RDALoss(temperature=1.0)(3 * stolen, protos)) == pytest.approx(disc + align, abs=1e-6)


def test_rda_loss_matches_an_explicit_reference_on_random_data():
    gen = torch.Generator().manual_seed(0)
    stolen, protos = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen) * 0.3
    t, eps = 0.2, 1e-4
    s = stolen / stolen.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(6):
        neg = sum(math.exp(float(s[i] @ protos[j]) / t) + math.exp(float(s[i] @ s[j]) / t) for j in range(6) if j != i)
        disc = -math.log(math.exp(float(s[i] @ protos[i]) / t) / neg)
        cos = float(s[i] @ protos[i]) / float(protos[i].norm())
        align = -math.log((cos + 1 + eps) / (float((s[i] - protos[i]).pow(2).sum()) + eps))
        total += disc + align
    assert float(RDALoss(temperature=t, eps=eps)(stolen, protos)) == pytest.approx(total / 6, rel=1e-5)


def test_rda_loss_prefers_matched_pairs_and_keeps_the_target_constant():
    protos = torch.nn.functional.normalize(torch.randn(8, 5, generator=torch.Generator().manual_seed(1)), dim=1)
    loss = RDALoss()
    assert float(loss(protos.clone(), protos)) < float(loss(protos.roll(1, 0), protos))
    stolen, target = torch.randn(8, 5, requires_grad=True), protos.clone().requires_grad_(True)
    loss(stolen, target).backward()
    assert stolen.grad is not None and target.grad is None


def test_rda_loss_settings_and_registry():
    assert LOSSES["rda"] is RDALoss and isinstance(create_loss("rda", temperature=0.1), RDALoss)
    for kwargs, message in (({"temperature": 0}, "temperature must be a finite number > 0, got 0"),
                            ({"alpha": -1}, "alpha must be a finite number >= 0, got -1"),
                            ({"eps": float("nan")}, "eps must be a finite number > 0"),
                            ({"alpha": 0, "beta": 0}, "alpha and beta are both 0")):
        with pytest.raises(ValueError, match=message):
            RDALoss(**kwargs)
    with pytest.raises(ValueError, match="at least 2 rows"):
        RDALoss()(torch.randn(1, 3), torch.randn(1, 3))
