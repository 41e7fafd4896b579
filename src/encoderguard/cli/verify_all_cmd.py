"""Every applicable ownership test on the suspect, combined into one decision (family-wise error <= alpha)."""

from __future__ import annotations

import argparse
from typing import Any

from encoderguard.cli.common import add_data_dir, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``verify all`` (``--owner/--suspect/--suspect-api/--suspect-key/--alpha/--json`` exist)."""
    p.add_argument("--references", default=None,
                   help="reference-set folder (default: the one registered with the owner by 'references build', "
                        "OWNER/references.json)")
    p.add_argument("--di-config", default=None,
                   help="frozen dataset-inference config (default: OWNER/di-config.json if present)")
    p.add_argument("--watermark-queries", type=positive_int, default=2000,
                   help="suspect queries of the watermark test (default 2000)")
    p.add_argument("--align", choices=("none", "auto", "orthogonal", "linear", "permutation"), default="auto",
                   help="alignment of the suspect's answers to the owner's space before the watermark head reads "
                        "them (default auto: the map with the best held-out fit, the identity when it fits as well; "
                        "the references are aligned the same way)")
    p.add_argument("--align-queries", type=positive_int, default=1000,
                   help="alignment images from the owner's query split (default 1000)")
    p.add_argument("--copy-check", default=None,
                   help="a copy the owner stole from its own model (checkpoint directory; default OWNER/copy-check "
                        "if present, e.g. from 'encoderguard steal --victim OWNER ... --out OWNER/copy-check'): a "
                        "test that does not detect it leaves the decision's family")
    p.add_argument("--watermark-key", default=None,
                   help="the serving-time watermark's key file (encoderguard watermark keygen): adds the "
                        "output-watermark test to the decision")
    p.add_argument("--similarity", action="store_true",
                   help="with --owner st:NAME and --watermark-key: add the calibrated similarity test (does the "
                        "suspect answer like the owner's model, more than every reference?); it cannot tell a copy of "
                        "your API from the same public model obtained elsewhere")
    add_data_dir(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from encoderguard.cli.verify_cmd import alpha_of, suspect_api
    from encoderguard.verify.ownership import verify_all

    result = verify_all(args.owner, suspect_api(args), references=args.references, alpha=alpha_of(args),
                        di_config=args.di_config, watermark_queries=args.watermark_queries, data_dir=args.data_dir,
                        align=args.align, align_queries=args.align_queries, copy_check=args.copy_check,
                        watermark_key=args.watermark_key, similarity=args.similarity)
    result["suspect"] = args.suspect or args.suspect_api
    return result


def render(result: dict[str, Any]) -> str:
    p = result.get("combined_p")
    head = (f"decision: {str(result['verdict']).upper()}  (combined p = {p:.3g}, alpha = {result['alpha']}, "
            f"{result['rule']})" if isinstance(p, float)
            else f"decision: {str(result['verdict']).upper()}  (alpha = {result['alpha']})")
    lines = [head]
    for m in result["methods"]:
        mp = m.get("p_value")
        p_text = f"p = {mp:.3g}" if isinstance(mp, float) else "p = -"
        holm = m.get("holm_p")
        holm_text = f", Holm p = {holm:.3g}" if isinstance(holm, float) else ""
        cal = "calibrated" if m.get("calibrated") else "uncalibrated"
        lines.append(f"  {m['method']:<10} {m['verdict']:<15} {p_text}{holm_text} ({cal})")
        if m.get("reason"):
            lines.append(f"      reason: {m['reason']}")
    if result.get("reason"):
        lines.append(f"reason: {result['reason']}")
    lines.append(f"null: {result['references']['source']}")
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)
