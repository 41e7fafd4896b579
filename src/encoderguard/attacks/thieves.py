"""Named stealing recipes: a thief is a :class:`~encoderguard.attacks.StealingAttack` with fixed settings.

A defence or a verifier is only as good as the thief it was measured against, so benchmarks name the thief they
used. ``"baseline"`` is :class:`~encoderguard.attacks.StealingAttack`'s defaults with MSE; each other recipe adds one
option, and ``"strong"`` is the combination chosen before the budget ladder was run (``benchmarks/steal_ladder.py``):
it was picked on a tuning victim (the ``cpu-di`` preset, 240 epochs on 500 images, split seed 3) with attack seed 100
at 250 queries, neither of which the reported ladder rows use. There, training longer (``min_steps``) was the one
option that raised both fidelity and kNN agreement, and adding mixup raised the linear probe further; views (2-4 per
step), RDA and k-center did not beat the baseline, and rounds helped but multiply the training time.

    >>> attack = create_thief("strong", api, budget=250, cache_dir="runs/stolen/query_cache")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.attacks.stealing import StealingAttack

THIEVES: dict[str, dict[str, Any]] = {
    # today's StealingAttack defaults: random order, clean mode, one weak view per step, 60 epochs, MSE
    "baseline": {"loss": "mse"},
    # query selection (changes which inputs are sent: visible to a monitor of input coverage)
    "kcenter": {"loss": "mse", "selection": "kcenter"},
    "rounds": {"loss": "mse", "selection": "rounds", "rounds": 4},
    # more from each answer (offline: invisible to the victim)
    "views": {"loss": "mse", "views": 2},
    "mixup": {"loss": "mse", "mixup": 0.4},
    "rda": {"loss": "rda"},
    "long": {"loss": "mse", "min_steps": 600},
    # the combination chosen on the tuning victim and seed: longer training on the few answers, plus mixup
    "strong": {"loss": "mse", "mixup": 0.4, "min_steps": 600},
}


def thief_settings(name: str) -> dict[str, Any]:
    """The :class:`~encoderguard.attacks.StealingAttack` settings of recipe ``name`` (a copy).

    Raises:
        ValueError: an unknown name (the message lists the recipes).
    """
    if name not in THIEVES:
        raise ValueError(f"unknown thief {name!r}; choose one of: {', '.join(THIEVES)}")
    return dict(THIEVES[name])


def create_thief(name: str, api: EmbeddingAPI, **overrides: Any) -> StealingAttack:
    """Build the attack of recipe ``name`` against ``api``.

    Args:
        name: a key of :data:`THIEVES`.
        api: the victim.
        **overrides: further :class:`~encoderguard.attacks.StealingAttack` settings; ``budget`` and ``cache_dir``
            are required, and any recipe setting may be overridden.

    Returns:
        The attack (nothing is paid before :meth:`~encoderguard.attacks.StealingAttack.extract`).

    Raises:
        ValueError: an unknown name (listing the recipes), or a bad setting.
    """
    settings = thief_settings(name)
    settings.update(overrides)
    for required in ("budget", "cache_dir"):
        if required not in settings:
            raise ValueError(f"create_thief({name!r}) needs {required}=...")
    return StealingAttack(api, **settings)
