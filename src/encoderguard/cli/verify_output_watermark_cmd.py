"""Serving-time watermark test: was the suspect trained on your watermarked answers? (needs only the key file)"""

from __future__ import annotations

import argparse
from typing import Any

from encoderguard.cli.common import add_data_dir

OWNER_REQUIRED = False  # the key file records everything verification needs besides the suspect


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``verify output-watermark`` (``--owner/--suspect/--suspect-api/--suspect-key/--alpha/--json``)."""
    p.add_argument("--watermark-key", required=True, help="the key file made by 'encoderguard watermark keygen'")
    p.add_argument("--references", default=None,
                   help="reference-set folder that calibrates the test (default: the one registered with --owner, "
                        "if given); without references the test cannot answer 'stolen'")
    p.add_argument("--align", choices=("none", "auto", "orthogonal", "linear", "permutation"), default="auto",
                   help="map the suspect's (and every reference's) answers into the owner's space before scoring, "
                        "fitted on the key's alignment inputs (default auto)")
    p.add_argument("--data", default=None,
                   help="data spec of the probe inputs when the key records none (dataset[:split]; images or texts, "
                        "e.g. bbc-news:query)")
    add_data_dir(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the test; the result is ``Verdict.to_dict()`` plus ``"suspect"``, ``"references"`` and ``"calibrated"``."""
    from encoderguard.cli.verify_cmd import alpha_of, suspect_api
    from encoderguard.defences.output_watermark_key import OutputWatermarkKey
    from encoderguard.verify.output_watermark import OutputWatermarkVerifier
    from encoderguard.verify.references import ReferenceSet

    key = OutputWatermarkKey.load(args.watermark_key)
    refs_note = "no reference set (--references): the test is uncalibrated and cannot answer 'stolen'"
    refs = None
    if args.references:
        refs, refs_note = ReferenceSet.load(args.references), f"references from {args.references} (--references)"
    elif args.owner:
        from encoderguard.verify.ownership import resolve_references

        refs, refs_note = resolve_references(args.owner, None)
    owner = None
    if args.owner and not key.calibrated:
        from encoderguard.models.model_spec import load_any

        owner = load_any(args.owner)  # a checkpoint directory, onnx:PATH or st:NAME (a text model)
    images = None
    if args.data:
        from encoderguard.data.registry import dataset_modality
        from encoderguard.data.splits import SplitSpec, load_split, parse_data_spec

        dataset, split = parse_data_spec(args.data, default_split="test")
        # a text corpus is small (bbc-news: 834 documents per half); its query and probe splits do not depend on
        # the training-set size, which a pretrained text owner does not have
        train_size = 1 if dataset_modality(dataset) == "text" else 10000
        images = load_split(SplitSpec(dataset, split, 0, train_size), data_dir=args.data_dir)
    verifier = OutputWatermarkVerifier(key, references=refs.references() if refs is not None else (),
                                       alpha=alpha_of(args), align=args.align, owner=owner, images=images,
                                       data_dir=args.data_dir)
    result = verifier.verify(suspect_api(args)).to_dict()
    result["calibrated"] = result["details"]["calibrated"]
    result["suspect"] = args.suspect or args.suspect_api
    result["references"] = refs_note
    result["alignment"] = result["details"]["alignment"]
    return result
