"""Dataset inference: does the suspect treat the owner's training images differently from its held-out images?

``verify di --owner DIR --self-check [--save-config F]`` runs the test on the owner's own encoder, says whether
dataset inference can protect it and from how many suspect queries, and freezes the test in ``F``
(:func:`~encoderguard.verify.di_workflow.freeze_di`). ``verify di --owner DIR --suspect DIR|--suspect-api URL
--suspect-key K [--config F]`` tests a suspect (:func:`~encoderguard.verify.di_workflow.verify_di`); with ``--config``
a flag that disagrees with a frozen value is an error. When the owner's own encoder shows no signal, the verdict is
``"inconclusive"``.
"""

from __future__ import annotations

import argparse
from typing import Any

from encoderguard.cli.common import add_data_dir, non_negative_int, positive_int
from encoderguard.optional import require


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
    p.add_argument("--gmm-components", type=positive_int, default=None,
                   help="mixture components of the gmm score (default 10)")
    p.add_argument("--gmm-covariance", choices=("full", "diag", "spherical", "tied"), default=None,
                   help="covariance type of the gmm score's mixture (default diag)")
    p.add_argument("--seed", type=non_negative_int, default=None, help="seed of the image draw and relabellings")
    p.add_argument("--null-encoders", type=non_negative_int, default=None,
                   help="random initialisations of the owner's architecture answering the same images: the test is "
                        "adjusted by their statistics, which removes what is atypical about the owner's sample "
                        "(default 3; 0: unadjusted)")
    p.add_argument("--config", default=None,
                   help="the frozen test (JSON written by --self-check --save-config); a flag that disagrees with "
                        "a frozen value (--alpha, --null-encoders, --seed, --budget, ...) is an error")
    p.add_argument("--save-config", default=None,
                   help="with --self-check: freeze the settings, null encoders, self-check and copy check in this "
                        "file")
    p.add_argument("--copy-check", action="store_true",
                   help="also steal a copy of the owner's own encoder (owner-side, no suspect queries; about a minute "
                        "on 2 cores) and test it: when that copy goes undetected, 'independent' verdicts become "
                        "'inconclusive'. Saved by --save-config and applied by --config")
    p.add_argument("--copy-loss", default="infonce", help="loss of the simulated copy (default infonce)")
    p.add_argument("--copy-budget", type=positive_int, default=2000,
                   help="query images of the simulated copy (default 2000, from the owner's query split)")
    p.add_argument("--copy-epochs", type=positive_int, default=60, help="training epochs of the simulated copy")
    p.add_argument("--copy-out", default=None,
                   help="with --copy-check: save the simulated copy as a checkpoint here (e.g. OWNER/copy-check, "
                        "where 'verify all' finds it and checks every test on it)")
    p.add_argument("--align", choices=("none", "auto", "orthogonal", "linear", "permutation"), default="none",
                   help="map the suspect's answers into the owner's space first, fitted on --align-queries images of "
                        "the owner's query split (default none: the standardised geometry already ignores "
                        "permutations and per-dimension scales)")
    p.add_argument("--align-queries", type=positive_int, default=1000, help="alignment images (default 1000)")
    p.add_argument("--plot", default=None, help="write a plot of the two score distributions (needs matplotlib)")
    add_data_dir(p)


_FLAG_SETTINGS = {"members": "members", "nonmembers": "nonmembers", "score": "score", "design": "design",
                  "test": "test", "direction": "direction", "geometry": "geometry", "k": "k",
                  "permutations": "n_permutations", "gmm_components": "gmm_components",
                  "gmm_covariance": "gmm_covariance", "seed": "seed"}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Freeze the test with the owner's self-check, or test a suspect; prints ``Verdict.to_dict()`` plus CLI fields."""
    from encoderguard.verify.di_config import FrozenDIConfig
    from encoderguard.verify.di_workflow import freeze_di, verify_di

    if args.self_check and (args.suspect or args.suspect_api):
        raise ValueError("--self-check tests the owner's own encoder: do not give --suspect/--suspect-api")
    if not args.self_check and not (args.suspect or args.suspect_api):
        raise ValueError("give --suspect DIR, --suspect-api URL --suspect-key K, or --self-check")
    if args.self_check and args.config:
        raise ValueError("--self-check freezes a new test and --config uses a frozen one: give one of them")
    if args.save_config and not args.self_check:
        raise ValueError("--save-config needs --self-check (the config freezes the owner's self-check)")
    if args.plot:  # fail now, not after the test has spent its queries
        require("matplotlib", extra="plots", purpose="--plot")
    settings = {key: getattr(args, flag) for flag, key in _FLAG_SETTINGS.items() if getattr(args, flag) is not None}
    copy = {"copy_check": args.copy_check, "copy_loss": args.copy_loss, "copy_budget": args.copy_budget,
            "copy_epochs": args.copy_epochs}
    if args.self_check:
        if args.alpha is not None:
            settings["alpha"] = args.alpha
        if args.null_encoders is not None:
            settings["null_encoders"] = args.null_encoders
        if args.copy_out and not args.copy_check:
            raise ValueError("--copy-out saves the copy of --copy-check: give --copy-check too")
        frozen = freeze_di(args.owner, budget=args.budget, data_dir=args.data_dir, progress=True,
                           copy_out=args.copy_out, **copy, **settings)
        result = frozen.summary()
        if args.copy_out:
            result["copy_out"] = str(args.copy_out)
        if args.save_config:
            frozen.save(args.save_config)
            result["config"] = str(args.save_config)
    else:
        from encoderguard.cli.verify_cmd import suspect_api

        config = FrozenDIConfig.load(args.config) if args.config else None
        api, alignment = _aligned(args, suspect_api(args))
        verdict = verify_di(args.owner, api, config=config, alpha=args.alpha,
                            null_encoders=args.null_encoders, budget=args.budget, data_dir=args.data_dir,
                            progress=True, **(copy if args.copy_check else {}), **settings)
        result = verdict.to_dict()
        result["suspect"] = args.suspect or args.suspect_api
        result["alignment"] = alignment
        result["queries_used"] += alignment["queries"]
    scores = result.get("details", {}).get("scores")
    if args.plot and scores:
        from encoderguard.verify.di_plot import plot_score_distributions

        try:
            result["plot"] = str(plot_score_distributions(scores, args.plot))
        except OSError as exc:  # an unwritable plot path must not cost the verdict
            result.setdefault("warnings", []).append(f"no plot written to {args.plot}: {exc}")
    return result


def _aligned(args: argparse.Namespace, api: Any) -> tuple[Any, dict[str, Any]]:
    """The suspect, mapped into the owner's space when ``--align`` asks (its cost in queries reported)."""
    if args.align == "none":
        return api, {"kind": "none", "queries": 0, "fit_r2": None}
    from encoderguard.models import load_checkpoint
    from encoderguard.verify.alignment import align_to_owner

    aligned, alignment = align_to_owner(api, load_checkpoint(args.owner), kind=args.align,
                                        queries=args.align_queries, data_dir=args.data_dir)
    return aligned, alignment.to_dict()
