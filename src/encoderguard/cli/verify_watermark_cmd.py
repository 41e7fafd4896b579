"""Rotation-watermark test: does the suspect carry the owner's secret watermark? (calibrated on reference models)"""

from __future__ import annotations

import argparse
from typing import Any

from encoderguard.cli.common import add_data_dir, non_negative_int, positive_int


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``verify watermark`` (``--owner/--suspect/--suspect-api/--suspect-key/--alpha/--json`` exist)."""
    p.add_argument("--queries", type=positive_int, default=2000,
                   help="most images sent to the suspect (default 2000); the test uses the largest even number")
    p.add_argument("--references", default=None,
                   help="reference-set folder that calibrates the test (default: the one registered with the owner "
                        "by 'references build'); without references the test cannot answer 'stolen'")
    p.add_argument("--align", choices=("none", "auto", "orthogonal", "linear", "permutation"), default="none",
                   help="map the suspect's (and every reference's) answers into the owner's space before the head "
                        "reads them, fitted on --align-queries images of the owner's query split (default none)")
    p.add_argument("--align-queries", type=positive_int, default=1000, help="alignment images (default 1000)")
    p.add_argument("--verify-key", default=None,
                   help="the owner's secret verification key (default: OWNER/watermark-verify-key.json)")
    p.add_argument("--seed", type=non_negative_int, default=None,
                   help="draw the verification set from this (public) seed instead of the secret key")
    p.add_argument("--decoys", type=_fraction, default=0.0,
                   help="fraction of --queries spent on un-rotated images mixed among the watermark queries "
                        "(default 0)")
    p.add_argument("--null-accuracy", type=float, default=0.5,
                   help="accuracy expected without the watermark, tested against (default 0.5)")
    p.add_argument("--mirror", action="store_true",
                   help="mirror a random half of each class (mirror-balanced set): encoders whose head output does "
                        "not change under a mirror then score 0.5 whatever their chance correlation with the head")
    p.add_argument("--no-match-scale", action="store_true",
                   help="read the suspect's answers at their own scale (default: rescale them to the owner's "
                        "mean norm)")
    add_data_dir(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the test; the result is ``Verdict.to_dict()`` plus ``"suspect"`` (the directory or API URL)."""
    from encoderguard.cli.verify_cmd import alpha_of, suspect_api
    from encoderguard.models.verify_key import VerifyKey
    from encoderguard.verify.ownership import resolve_references
    from encoderguard.verify.watermark import WatermarkVerifier

    if args.queries < 2:
        raise ValueError(f"--queries must be >= 2, got {args.queries}")
    refs, refs_note = resolve_references(args.owner, args.references)
    key = VerifyKey.load(args.verify_key) if args.verify_key else None
    verifier = WatermarkVerifier(args.owner, max_queries=args.queries, alpha=alpha_of(args), seed=args.seed,
                                 references=refs.references() if refs is not None else (), key=key,
                                 align=args.align, align_queries=args.align_queries,
                                 null_accuracy=args.null_accuracy, decoys=args.decoys, mirror=args.mirror,
                                 match_scale=not args.no_match_scale, data_dir=args.data_dir)
    api = suspect_api(args)
    result = verifier.verify(api).to_dict()
    result["suspect"] = args.suspect or args.suspect_api
    result["references"] = refs_note
    result["alignment"] = result["details"]["alignment"]
    return result
