"""Dataset inference: does the suspect treat the owner's training images differently from its held-out images?

``verify di --owner DIR --suspect DIR|--suspect-api URL --suspect-key K`` tests a suspect;
``verify di --owner DIR --self-check`` runs the same test on the owner's own encoder and says whether dataset
inference can protect it, and from how many suspect queries. Every suspect test re-runs the owner's check on the
same images first: when the owner's own encoder shows no signal, the verdict is ``"inconclusive"``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from encoderguard.cli.common import add_data_dir, non_negative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``verify di`` (``--owner/--suspect/--suspect-api/--suspect-key/--alpha/--json`` exist)."""
    p.add_argument("--self-check", action="store_true",
                   help="test the owner's own encoder: can dataset inference protect it, with how many queries?")
    p.add_argument("--budget", type=positive_int, default=None,
                   help="suspect queries (owner-train + owner-heldout images; default 2500 = 500 + 2000)")
    p.add_argument("--members", type=positive_int, default=None, help="owner-train images to send")
    p.add_argument("--nonmembers", type=positive_int, default=None, help="owner-heldout images to send")
    p.add_argument("--score", choices=("knn", "gmm"), default=None,
                   help="membership score: knn (nearest-neighbour similarity, default) or gmm (mixture likelihood)")
    p.add_argument("--design", choices=("set", "split"), default=None,
                   help="set (all members, set-level permutation test; default) or split (reference/test halves)")
    p.add_argument("--test", choices=("permutation", "welch"), default=None, help="permutation (default) or welch")
    p.add_argument("--direction", choices=("lower", "higher"), default=None,
                   help="membership lowers (default, measured) or raises the score; fixed before testing suspects")
    p.add_argument("--geometry", choices=("standardised", "whitened", "cosine"), default=None,
                   help="space the scores compare in (default standardised; whitened is invariant to every "
                        "invertible affine map of the answers, at a cost in power)")
    p.add_argument("--k", type=positive_int, default=None, help="nearest neighbours of the knn score (default 1)")
    p.add_argument("--permutations", type=positive_int, default=None, help="random relabellings (default 999)")
    p.add_argument("--gmm-components", type=positive_int, default=None)
    p.add_argument("--gmm-covariance", choices=("full", "diag", "spherical", "tied"), default=None)
    p.add_argument("--seed", type=non_negative_int, default=None, help="seed of the image draw and relabellings")
    p.add_argument("--null-encoders", type=non_negative_int, default=3,
                   help="random initialisations of the owner's architecture answering the same images: the test is "
                        "adjusted by their statistics, which removes what is atypical about the owner's sample "
                        "(default 3; 0: unadjusted)")
    p.add_argument("--config", default=None,
                   help="frozen settings (JSON written by --save-config after a self-check); flags may not change "
                        "them")
    p.add_argument("--save-config", default=None, help="write the frozen settings and the self-check to this file")
    p.add_argument("--copy-check", action="store_true",
                   help="also steal a copy of the owner's own encoder (owner-side, no suspect queries; about a minute "
                        "on 2 cores) and test it: when that copy goes undetected, 'independent' verdicts become "
                        "'inconclusive'. Saved by --save-config and applied by --config")
    p.add_argument("--copy-loss", default="infonce", help="loss of the simulated copy (default infonce)")
    p.add_argument("--copy-budget", type=positive_int, default=2000,
                   help="query images of the simulated copy (default 2000, from the owner's query split)")
    p.add_argument("--copy-epochs", type=positive_int, default=60, help="training epochs of the simulated copy")
    p.add_argument("--plot", default=None, help="write a plot of the two score distributions (needs matplotlib)")
    add_data_dir(p)


_FLAG_SETTINGS = {"members": "members", "nonmembers": "nonmembers", "score": "score", "design": "design",
                  "test": "test", "direction": "direction", "geometry": "geometry", "k": "k",
                  "permutations": "n_permutations", "gmm_components": "gmm_components",
                  "gmm_covariance": "gmm_covariance", "seed": "seed"}


def _settings(args: argparse.Namespace, n_train: int, owner_digest: str, n_heldout: int | None = None
              ) -> tuple[dict[str, Any], list[str], dict[str, Any] | None]:
    """The test's settings from flags or a frozen ``--config``; also returns that config (``None`` without one)."""
    from encoderguard.verify.dataset_inference import split_budget

    warnings: list[str] = []
    settings: dict[str, Any] = {}
    flags = {key: getattr(args, flag) for flag, key in _FLAG_SETTINGS.items() if getattr(args, flag) is not None}
    if args.config:
        try:
            frozen = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"--config {args.config}: cannot read frozen settings ({exc})") from exc
        if not isinstance(frozen, dict) or not isinstance(frozen.get("settings"), dict):
            raise ValueError(f"--config {args.config}: not a dataset-inference config (no \"settings\" object)")
        settings = dict(frozen["settings"])
        changed = sorted(k for k, v in flags.items() if settings.get(k) != v)
        if changed or args.budget is not None:
            raise ValueError(f"--config fixes the test's settings; do not change them with flags "
                             f"({', '.join(changed + (['budget'] if args.budget is not None else []))})")
        if frozen.get("owner_weights_sha256") not in (None, owner_digest):
            warnings.append("the frozen config was made for another owner checkpoint (weights digest differs)")
        if settings.get("alpha") != args.alpha:
            settings["alpha"] = args.alpha
        return settings, warnings, frozen
    if args.budget is not None:
        if args.members is not None or args.nonmembers is not None:
            raise ValueError("give either --budget or --members/--nonmembers, not both")
        flags["members"], flags["nonmembers"] = split_budget(args.budget, n_train)
    elif "members" not in flags:
        flags["members"] = min(500, n_train)
    if "nonmembers" not in flags and n_heldout is not None:
        flags["nonmembers"] = min(2000, n_heldout)  # a small dataset's held-out part may hold fewer
    return {**flags, "alpha": args.alpha}, warnings, None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the self-check or the suspect test; the result is a ``Verdict.to_dict()`` plus CLI fields."""
    from encoderguard.models import load_checkpoint
    from encoderguard.train.evaluate import random_init_like
    from encoderguard.verify.dataset_inference import DatasetInference, owner_data

    if args.self_check and (args.suspect or args.suspect_api):
        raise ValueError("--self-check tests the owner's own encoder: do not give --suspect/--suspect-api")
    if not args.self_check and not (args.suspect or args.suspect_api):
        raise ValueError("give --suspect DIR, --suspect-api URL --suspect-key K, or --self-check")
    owner = load_checkpoint(args.owner)
    train, heldout = owner_data(owner.card, data_dir=args.data_dir)
    settings, warnings, frozen = _settings(args, len(train), owner.card.weights_sha256, len(heldout))
    di = DatasetInference.from_settings(settings)
    nulls = [random_init_like(owner.encoder, seed=10_000 + i) for i in range(args.null_encoders)]
    if args.self_check:
        di.fit(members=train, nonmembers=heldout, null_models=nulls)
        check = di.self_check(owner.encoder)
        result = _self_check_result(check, di, warnings)
        if args.copy_check:
            copy = _copy_check(di, owner, args)
            result["copy_check"] = copy.to_dict()
            result["protects_copies"] = copy.detected
            result["warnings"].append(
                f"a copy of the owner ({copy.loss}, {copy.budget} queries) is detected (p = {copy.p_value:.3g})"
                if copy.detected else copy.reason)
        if args.save_config:
            from encoderguard.models import atomic_write_bytes

            frozen = {"format": "encoderguard-di-config", "settings": check.settings,
                      "owner": str(args.owner), "owner_weights_sha256": owner.card.weights_sha256,
                      "self_check": check.to_dict(),
                      **({"copy_check": di.copy_check_.to_dict()} if di.copy_check_ is not None else {})}
            atomic_write_bytes(args.save_config, (json.dumps(frozen, indent=2) + "\n").encode())
            result["config"] = str(args.save_config)
        plot_source = {"owner": check.owner}
    else:
        from encoderguard.cli.verify_cmd import suspect_api

        api = suspect_api(args)
        di.fit(members=train, nonmembers=heldout, owner=owner.encoder, null_models=nulls)
        frozen_copy = _frozen_copy_check(frozen, args.config)
        if args.copy_check:
            _copy_check(di, owner, args)
        elif frozen_copy is not None:
            di.copy_check_ = frozen_copy
        verdict = di.verify(api)
        result = verdict.to_dict()
        result["warnings"] = warnings + result["warnings"]
        result["suspect"] = args.suspect or args.suspect_api
        plot_source = {"suspect": di.last_result_} if getattr(di, "last_result_", None) is not None else {}
        if di.self_check_ is not None:
            plot_source = {"owner": di.self_check_.owner, **plot_source}
    from encoderguard.verify.di_plot import score_distributions

    if plot_source:
        distributions = score_distributions(plot_source)
        # Histogram data of the two score distributions (owner-train vs owner-heldout) for reports.
        result.setdefault("details", {})["scores"] = distributions
        if args.plot:
            from encoderguard.verify.di_plot import plot_score_distributions

            result["plot"] = str(plot_score_distributions(distributions, args.plot))
    return result


def _copy_check(di: Any, owner: Any, args: argparse.Namespace) -> Any:
    """Steal a copy of the owner's encoder from the owner's query split and test it (``di.copy_check_``)."""
    from encoderguard.data.splits import SplitSpec, load_split

    query = load_split(SplitSpec.from_dict(owner.card.data or {}).with_split("query"), data_dir=args.data_dir)
    return di.copy_check(owner.encoder, query, loss=args.copy_loss, budget=args.copy_budget,
                         epochs=args.copy_epochs, progress=True)


def _frozen_copy_check(frozen: dict[str, Any] | None, config: str | None) -> Any:
    """The copy check saved with a frozen config, if any."""
    if frozen is None or not isinstance(frozen.get("copy_check"), dict):
        return None
    from encoderguard.verify.dataset_inference import CopyCheck

    try:
        return CopyCheck.from_dict(frozen["copy_check"])
    except ValueError as exc:
        raise ValueError(f"--config {config}: {exc}") from exc


def _self_check_result(check: Any, di: Any, warnings: list[str]) -> dict[str, Any]:
    owner = check.owner
    verdict = "stolen" if check.protects else "inconclusive"
    notes = list(warnings)
    if check.protects:
        notes.append("the owner's own encoder is detected: dataset inference can protect it"
                     + (f" from {check.min_queries} suspect queries" if check.min_queries else "")
                     + "; copies carry a weaker signal than their victim, so give suspects at least this budget")
    else:
        notes.append(check.reason)
    if check.null and min(check.null) < check.alpha:
        notes.append(f"a random-initialised encoder was flagged on this owner sample (p = {min(check.null):.3g}): "
                     "the sample looks atypical")
    return {"method": "di", "mode": "self-check", "verdict": verdict, "p_value": owner.p_value,
            "alpha": check.alpha, "statistic": owner.statistic, "effect": owner.effect,
            "n": owner.n_members + owner.n_nonmembers, "queries_used": 0, "protects": check.protects,
            "min_queries": check.min_queries, "queries": check.queries, "warnings": notes,
            "details": {"z": owner.z, "auc": owner.auc, "n_members": owner.n_members,
                        "n_nonmembers": owner.n_nonmembers, "budgets": {str(k): v for k, v in check.budgets.items()},
                        "null_p_values": list(check.null), "reason": check.reason, "settings": check.settings,
                        "effect_kind": "Cohen's d of member vs non-member scores, positive in the membership "
                                       "direction"}}
