"""Dataset inference from an owner checkpoint: freeze the test once, then verify suspects with it.

:func:`freeze_di` runs the owner's self-check (and optionally a copy check) on its own draw of images and returns a
:class:`~encoderguard.verify.di_config.FrozenDIConfig`; :func:`verify_di` tests a suspect, with a frozen config
(every value fixed, the suspect tested on another draw than the self-check) or without one (today's ad-hoc test:
the self-check re-runs on the suspect's own draw, with a warning that the test is not frozen). ``verify di`` calls
these two functions.

Example:
    >>> config = freeze_di("runs/victim", copy_check=True)  # doctest: +SKIP
    >>> config.save("di.json")  # doctest: +SKIP
    >>> verify_di("runs/victim", HTTPEmbeddingAPI(url, key), config=FrozenDIConfig.load("di.json")).verdict
    ... # doctest: +SKIP
    'stolen'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from encoderguard.data.data_set import images_only
from encoderguard.data.image_set import ImageSet
from encoderguard.data.splits import owner_split
from encoderguard.models.random_init import null_encoders as make_null_encoders
from encoderguard.verify.dataset_inference import DatasetInference, split_budget
from encoderguard.verify.di_config import FrozenDIConfig
from encoderguard.verify.verdict import Verdict

DEFAULT_ALPHA = 0.01
DEFAULT_NULL_ENCODERS = 3
NOT_FROZEN_WARNING = ("the test is not frozen: its settings were chosen in this run and the owner's self-check ran on "
                      "the suspect's own draw of images; freeze it once with freeze_di (verify di --self-check "
                      "--save-config FILE) and test suspects with that config")


def resolve_settings(n_train: int, n_heldout: int | None = None, *, budget: int | None = None,
                     **settings: Any) -> dict[str, Any]:
    """Complete dataset-inference settings for an owner with ``n_train`` training and ``n_heldout`` held-out images.

    ``budget`` (total suspect queries) is shared by :func:`split_budget`; otherwise members default to
    ``min(500, n_train)`` and non-members to ``min(2000, n_heldout)``. The rest are :class:`DatasetInference`
    defaults.

    Returns:
        The full :meth:`DatasetInference.settings` dict.

    Raises:
        ValueError: ``budget`` together with ``members``/``nonmembers``, or a bad setting.
    """
    settings = dict(settings)
    if budget is not None:
        if "members" in settings or "nonmembers" in settings:
            raise ValueError("give either budget or members/nonmembers, not both")
        settings["members"], settings["nonmembers"] = split_budget(budget, n_train)
    elif "members" not in settings:
        settings["members"] = min(500, n_train)
    if "nonmembers" not in settings and n_heldout is not None:
        settings["nonmembers"] = min(2000, n_heldout)  # a small dataset's held-out part may hold fewer
    return DatasetInference.from_settings(settings).settings()


def freeze_di(owner_checkpoint: Any, *, null_encoders: int = DEFAULT_NULL_ENCODERS, self_check_seed: int | None = None,
              budget: int | None = None, budgets: Sequence[int] | None = None, repeats: int = 3,
              copy_check: bool = False, copy_loss: str = "infonce", copy_budget: int = 2000, copy_epochs: int = 60,
              copy_out: str | os.PathLike[str] | None = None, data_dir: str | None = None, progress: bool = False,
              **settings: Any) -> FrozenDIConfig:
    """Freeze a dataset-inference test for an owner: settings, null encoders, self-check and copy check.

    The self-check (and the copy check) run on the draw of images ``self_check_seed``, not on the draw suspects
    will be tested on (``settings["seed"]``).

    Args:
        owner_checkpoint: the owner's checkpoint directory (or a loaded :class:`~encoderguard.models.Checkpoint`);
            its card names the owner's split.
        null_encoders: random initialisations of the owner's architecture that adjust the test (default 3).
        self_check_seed: the self-check's draw (default ``seed + 1``; must differ from ``seed``).
        budget: total suspect queries, shared between members and non-members (instead of ``members`` and
            ``nonmembers``).
        budgets, repeats: the self-check's budget ladder (:meth:`DatasetInference.self_check`).
        copy_check: also steal a copy of the owner from its ``query`` split and test it (CPU minutes, no suspect
            queries): ``copy_loss``, ``copy_budget`` images, ``copy_epochs`` epochs.
        data_dir: folder of the named datasets.
        progress: progress bars on stderr (copy check).
        settings: :class:`DatasetInference` settings (``alpha``, ``seed``, ``members``, ``n_permutations``, ...).

    Returns:
        The :class:`FrozenDIConfig` (``.save(path)`` writes it).

    Raises:
        DataError: the owner's card records no usable split, or too few images.
        ValueError: a bad setting.
    """
    owner = _checkpoint(owner_checkpoint)
    train, heldout = _owner_images(owner.card, data_dir=data_dir)
    resolved = resolve_settings(len(train), len(heldout), budget=budget, **settings)
    check_seed = resolved["seed"] + 1 if self_check_seed is None else self_check_seed
    if check_seed == resolved["seed"]:
        raise ValueError(f"self_check_seed must differ from seed (both {check_seed}): the self-check and the "
                         "suspects need separate draws of images")
    nulls = make_null_encoders(owner.encoder, null_encoders)
    di = DatasetInference.from_settings(resolved, seed=check_seed).fit(members=train, nonmembers=heldout,
                                                                        null_models=nulls)
    check = di.self_check(owner.encoder, budgets=budgets, repeats=repeats)
    copy = _copy_check(di, owner, data_dir=data_dir, loss=copy_loss, budget=copy_budget, epochs=copy_epochs,
                       progress=progress) if copy_check else None
    if copy is not None and copy_out is not None and di.copy_encoder_ is not None:
        # the simulated copy as a checkpoint: `verify all` tests every method on it (OWNER/copy-check by default)
        from encoderguard.models.card import ModelCard
        from encoderguard.models.checkpoint import save_checkpoint

        encoder = di.copy_encoder_
        card = ModelCard(arch=encoder.arch, arch_kwargs={}, input_shape=encoder.input_shape,
                         embed_dim=encoder.embed_dim,
                         training={"method": "steal", "loss": copy_loss, "budget": copy.budget,
                                   "epochs": copy_epochs, "note": "the owner's copy of its own model (copy check)"})
        save_checkpoint(copy_out, encoder=encoder, card=card)
    return FrozenDIConfig(settings=resolved, null_encoders=null_encoders, self_check_seed=check_seed,
                          self_check=check.to_dict(), copy_check=None if copy is None else copy.to_dict(),
                          owner_weights_sha256=getattr(owner.card, "weights_sha256", None), owner_result=check.owner)


def verify_di(owner_checkpoint: Any, suspect_api: Any, *, config: FrozenDIConfig | None = None,
              alpha: float | None = None, null_encoders: int | None = None, budget: int | None = None,
              copy_check: bool = False, copy_loss: str = "infonce", copy_budget: int = 2000, copy_epochs: int = 60,
              data_dir: str | None = None, progress: bool = False, **settings: Any) -> Verdict:
    """Test a suspect for derivation from the owner's encoder by dataset inference.

    With ``config`` the frozen test runs unchanged: its settings and null encoders, the frozen self-check (made on
    another draw of images) as the gate, and the frozen copy check. Any argument that disagrees with a frozen value
    raises ``ValueError``; an equal one is accepted. Without ``config`` the settings come from the arguments
    (``alpha`` 0.01 and 3 null encoders by default), the self-check re-runs on the suspect's draw and the verdict
    warns that the test is not frozen.

    Args:
        owner_checkpoint: the owner's checkpoint directory or a loaded :class:`~encoderguard.models.Checkpoint`.
        suspect_api: the suspect: an :class:`~encoderguard.api.EmbeddingAPI` (or an ``nn.Module``).
        config: a frozen test (:func:`freeze_di`, :meth:`FrozenDIConfig.load`).
        alpha: significance level (default 0.01, or the frozen one).
        null_encoders: null encoders (default 3, or the frozen number).
        budget: total suspect queries (instead of ``members``/``nonmembers``).
        copy_check, copy_loss, copy_budget, copy_epochs: run a copy check on this draw (without ``config`` only: a
            frozen test carries its own).
        data_dir: folder of the named datasets.
        progress: progress bars on stderr (copy check).
        settings: other :class:`DatasetInference` settings; with ``config`` only to be checked against it.

    Returns:
        The :class:`~encoderguard.verify.verdict.Verdict`; ``details`` adds ``calibrated``/``calibration`` (the
        permutation null is exact under the random owner split), ``frozen_digest`` (with ``config``) and ``scores``
        (histograms of the owner's and suspect's member and non-member scores).

    Raises:
        ValueError: an argument that conflicts with ``config``, a config frozen for another owner checkpoint, or
            a bad setting.
        DataError: the owner's card records no usable split.
        APIError: unusable suspect answers.
    """
    test = prepare_di(owner_checkpoint, config=config, alpha=alpha, null_encoders=null_encoders, budget=budget,
                      copy_check=copy_check, copy_loss=copy_loss, copy_budget=copy_budget, copy_epochs=copy_epochs,
                      data_dir=data_dir, progress=progress, **settings)
    return test.verify(suspect_api)


class PreparedDI:
    """A dataset-inference test fitted once for an owner, ready to verify any number of suspects.

    Built by :func:`prepare_di` (same arguments as :func:`verify_di`); :meth:`verify` gives what
    :func:`verify_di` gives for one suspect, without fitting the test (null encoders, self-check) again.
    """

    def __init__(self, di: DatasetInference, config: FrozenDIConfig | None, warnings: list[str]) -> None:
        self.di = di
        self.config = config
        self.warnings = list(warnings)

    def verify(self, suspect_api: Any) -> Verdict:
        di, config = self.di, self.config
        verdict = di.verify(suspect_api)
        details = dict(verdict.details)
        if config is not None:
            details["frozen_digest"] = config.digest
            details["null_encoders"] = config.null_encoders
            details["self_check_seed"] = config.self_check_seed
        results = {"owner": di.self_check_.owner} if di.self_check_ is not None else {}
        if getattr(di, "last_result_", None) is not None:
            results["suspect"] = di.last_result_
        results = {k: r for k, r in results.items() if r.member_scores.size and r.nonmember_scores.size}
        if results:
            from encoderguard.verify.di_plot import score_distributions

            details["scores"] = score_distributions(results)
        return replace(verdict, warnings=tuple(self.warnings) + verdict.warnings, details=details)


def prepare_di(owner_checkpoint: Any, *, config: FrozenDIConfig | None = None, alpha: float | None = None,
               null_encoders: int | None = None, budget: int | None = None, copy_check: bool = False,
               copy_loss: str = "infonce", copy_budget: int = 2000, copy_epochs: int = 60,
               data_dir: str | None = None, progress: bool = False, **settings: Any) -> PreparedDI:
    """Fit the test :func:`verify_di` runs (arguments and errors as there) once, for several suspects."""
    owner = _checkpoint(owner_checkpoint)
    warnings: list[str] = []
    if config is not None:
        config.check_overrides(alpha=alpha, null_encoders=null_encoders, budget=budget, **settings)
        where = config.source or "the frozen config"
        if copy_check:
            raise ValueError(f"a copy check conflicts with the frozen test in {where}: freeze one with "
                             "--self-check --copy-check --save-config")
        weights = getattr(owner.card, "weights_sha256", None)
        if config.owner_weights_sha256 and weights and config.owner_weights_sha256 != weights:
            raise ValueError(f"{where} was frozen for another owner checkpoint (weights digest "
                             f"{config.owner_weights_sha256[:12]}..., this owner {weights[:12]}...): its self-check "
                             "does not describe this model")
        train, heldout = _owner_images(owner.card, data_dir=data_dir)
        di = config.suspect_test().fit(members=train, nonmembers=heldout,
                                       null_models=make_null_encoders(owner.encoder, config.null_encoders),
                                       self_check=config.self_check_result(),
                                       copy_check=config.copy_check_result())
    else:
        train, heldout = _owner_images(owner.card, data_dir=data_dir)
        resolved = resolve_settings(len(train), len(heldout), budget=budget,
                                    alpha=DEFAULT_ALPHA if alpha is None else alpha, **settings)
        count = DEFAULT_NULL_ENCODERS if null_encoders is None else null_encoders
        di = DatasetInference.from_settings(resolved).fit(members=train, nonmembers=heldout, owner=owner.encoder,
                                                          null_models=make_null_encoders(owner.encoder, count))
        if copy_check:
            _copy_check(di, owner, data_dir=data_dir, loss=copy_loss, budget=copy_budget, epochs=copy_epochs,
                        progress=progress)
        warnings.append(NOT_FROZEN_WARNING)
    return PreparedDI(di, config, warnings)


def _owner_images(card: Any, *, data_dir: str | None) -> tuple[ImageSet, ImageSet]:
    """The owner's training images (the members) and held-out images (the non-members), from its card."""
    purpose = "dataset inference"
    return (images_only(owner_split(card, "owner-train", data_dir=data_dir), purpose=purpose),
            images_only(owner_split(card, "owner-heldout", data_dir=data_dir), purpose=purpose))


def _checkpoint(owner: Any) -> Any:
    """A loaded checkpoint (``owner`` is one already, or its directory)."""
    if hasattr(owner, "encoder") and hasattr(owner, "card"):
        return owner
    if not isinstance(owner, (str, os.PathLike)):
        raise ValueError(f"owner_checkpoint must be a checkpoint directory or a loaded Checkpoint, got "
                         f"{type(owner).__name__}")
    from encoderguard.models import load_checkpoint

    return load_checkpoint(owner)


def _copy_check(di: DatasetInference, owner: Any, *, data_dir: str | None, loss: str, budget: int, epochs: int,
                progress: bool) -> Any:
    """Steal a copy of the owner's encoder from its ``query`` split and test it with ``di``."""
    query = images_only(owner_split(owner.card, "query", data_dir=data_dir), purpose="dataset inference")
    return di.copy_check(owner.encoder, query, loss=loss, budget=budget, epochs=epochs, progress=progress)
