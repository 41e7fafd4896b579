"""Stealing yields a useful copy: close to the victim's answers and as good as the victim downstream."""

from __future__ import annotations

from tests.conftest import tiny_encoder

from encoderguard.api import LocalAPI
from encoderguard.attacks import StealingAttack, evaluate_copy, mean_cosine, victim_reference
from encoderguard.data import SplitSpec, load_split
from encoderguard.models.checkpoint_probe import probe_sets
from encoderguard.models.probe import encode
from encoderguard.models.random_init import random_init_like
from encoderguard.train.supervised import train_supervised


def test_mse_stealing_copies_the_victim(tmp_path):
    # A strong tiny victim: supervised on 300 owner-train digits. The thief pays for 600 of the 674 digits of the
    # disjoint query split and trains a (wider) copy on the cached answers; everything is judged on probe-test
    # images that neither the victim's training nor the thief's queries used.
    # Measured with this recipe on victim/attack seeds 0-7: fidelity 0.918-0.960 (seed 0: 0.957) against -0.15-0.26
    # for the copy's architecture at random init; linear probe: copy minus victim -0.022..+0.027 (seed 0: 0.809 vs
    # 0.831); gain recovery 0.85-1.2; final training loss 0.10-0.15 of the first epoch's.
    # (tests/conftest.py runs torch on one thread.)
    victim = tiny_encoder(0)
    train_supervised(victim, load_split(SplitSpec("digits", "owner-train", 0, 300)), epochs=10, batch_size=64,
                     lr=1e-2, seed=0)
    queries = load_split(SplitSpec("digits", "query", 0, 300))
    api = LocalAPI(victim)
    attack = StealingAttack(api, loss="mse", budget=600, cache_dir=tmp_path / "cache", epochs=60, batch_size=64,
                            lr=1e-2, arch_kwargs={"width": 8, "depth": 2, "pool": "avg"}, seed=0, progress=False)
    result = attack.extract(queries)
    assert result.queries_paid == 600 == api.queries_used
    assert result.epoch_losses[-1] < 0.25 * result.epoch_losses[0]

    probe_train, probe_test = probe_sets("digits")
    reference = victim_reference(victim, probe_train, probe_test)
    evaluation = evaluate_copy(result.encoder, reference, probe_train, probe_test)
    untrained = mean_cosine(encode(random_init_like(result.encoder, seed=0), probe_test), reference.test)
    assert evaluation.fidelity_cosine > 0.85
    assert evaluation.fidelity_cosine > untrained + 0.5
    assert evaluation.victim_linear_acc > 0.75  # the victim is worth stealing
    assert evaluation.linear_acc > evaluation.victim_linear_acc - 0.06
    assert evaluation.gain_recovery > 0.5
