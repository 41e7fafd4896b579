"""``encoderguard references build|add|list``: independent reference models that calibrate the ownership tests."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from encoderguard.cli.common import add_data_dir, add_progress, input_shape, non_negative_int, positive_int
from encoderguard.cli.main import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("references", help="build or register independent reference models (the tests' null)",
                       description="Reference models never descend from the owner's model; the ownership tests "
                                   "compare a suspect with them, so a 'stolen' verdict rests on a checked null.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = actions.add_parser("build", help="train K reference encoders on data disjoint from the owner's (resumable)")
    b.add_argument("--owner", required=True,
                   help="the owner's checkpoint directory, or st:NAME for a pretrained text encoder it serves (then "
                        "--data names the text dataset; LSA and SimCSE text references are built)")
    b.add_argument("--data", default=None,
                   help="text owners: the dataset whose documents outside the query half the references train on "
                        "(default bbc-news)")
    b.add_argument("--steps", type=positive_int, default=None,
                   help="text owners: SimCSE steps per student reference (default 60)")
    b.add_argument("--sentences", type=positive_int, default=None,
                   help="text owners: training sentences per reference (default 6000)")
    b.add_argument("--count", type=positive_int, required=True,
                   help="how many references the set should hold (>= 8 recommended; rerun to add more)")
    b.add_argument("--out", required=True, help="the reference-set folder (also registered in OWNER/references.json)")
    b.add_argument("--seed", type=non_negative_int, default=None, help="first reference seed (default 1000000)")
    b.add_argument("--images", type=positive_int, default=None,
                   help="training images per reference from the owner's query split (default: the owner's "
                        "training-set size, at least 500)")
    b.add_argument("--max-epochs", type=positive_int, default=60,
                   help="cap on the SimCLR references' epochs (default 60; the owner's own epochs if fewer)")
    b.add_argument("--no-register", action="store_true", help="do not write OWNER/references.json")
    add_data_dir(b)
    add_progress(b)
    add_common(b)
    a = actions.add_parser("add", help="register a public or third-party model (checkpoint or API) as a reference")
    a.add_argument("--refs", required=True, help="the reference-set folder (created if missing)")
    a.add_argument("--name", required=True, help="a unique name")
    a.add_argument("--checkpoint", default=None,
                   help="checkpoint directory (safetensors + card.json), or onnx:PATH for an ONNX model")
    a.add_argument("--input-shape", type=input_shape, default=None, metavar="C,H,W",
                   help="image shape of an ONNX model with dynamic dimensions, e.g. 3,32,32")
    a.add_argument("--api", default=None, help="embedding API URL")
    a.add_argument("--api-key-env", default=None, help="environment variable holding the API key (never stored)")
    a.add_argument("--note", default=None, help="where the model comes from (kept in the manifest)")
    add_common(a)
    ls = actions.add_parser("list", help="the references of a set")
    ls.add_argument("--refs", required=True, help="the reference-set folder")
    add_common(ls)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from encoderguard.verify.references import DEFAULT_SEED, ReferenceSet, build_references

    if args.action == "build" and _text_owner(args.owner):
        return _build_text(args)
    if args.action == "build":
        refs = build_references(args.owner, args.out, count=args.count,
                                seed=DEFAULT_SEED if args.seed is None else args.seed, images=args.images,
                                max_epochs=args.max_epochs, data_dir=args.data_dir, progress=not args.no_progress,
                                register=not args.no_register)
        return {"refs": str(refs.folder), "count": len(refs.entries), "references": refs.entries,
                "registered_with_owner": not args.no_register,
                "seconds": sum(float(e.get("seconds") or 0.0) for e in refs.entries)}
    if args.action == "add":
        if bool(args.checkpoint) == bool(args.api):
            raise ValueError("give exactly one of --checkpoint DIR or --api URL")
        refs = ReferenceSet.create(args.refs)
        info = {"note": args.note} if args.note else {}
        entry = (refs.add_checkpoint(args.name, args.checkpoint, input_shape=args.input_shape, **info)
                 if args.checkpoint else refs.add_api(args.name, args.api, key_env=args.api_key_env, **info))
        return {"refs": str(refs.folder), "added": entry, "count": len(refs.entries)}
    refs = ReferenceSet.load(args.refs)
    return {"refs": str(refs.folder), "count": len(refs.entries), "references": refs.entries}


def _text_owner(owner: str) -> bool:
    """Whether ``--owner`` is a text model: ``st:NAME`` or a checkpoint directory of a text architecture."""
    if str(owner).startswith("st:"):
        return True
    from pathlib import Path

    if not (Path(owner) / "card.json").is_file():
        return False
    from encoderguard.models.checkpoint import read_card

    return read_card(owner).input_shape is None


def _build_text(args: argparse.Namespace) -> dict[str, Any]:
    """``references build`` for a text owner: LSA and SimCSE references (verify/text_references.py)."""
    from encoderguard.verify.references import DEFAULT_SEED, register_with_owner
    from encoderguard.verify.text_references import DEFAULT_SENTENCES, DEFAULT_STEPS, build_text_references

    dataset = args.data or "bbc-news"
    if ":" in dataset and not dataset.startswith(("text:", "jsonl:")):
        dataset = dataset.split(":", 1)[0]  # the references use the documents outside the query half, any split
    refs = build_text_references(args.out, count=args.count, dataset=dataset,
                                 seed=DEFAULT_SEED if args.seed is None else args.seed,
                                 sentences=args.sentences or DEFAULT_SENTENCES, steps=args.steps or DEFAULT_STEPS,
                                 owner=str(args.owner), data_dir=args.data_dir, progress=not args.no_progress)
    registered = not args.no_register and not str(args.owner).startswith("st:")
    if registered:  # an owner folder keeps a pointer; st:NAME has no folder (verify with --references)
        register_with_owner(args.owner, refs.folder)
    return {"refs": str(refs.folder), "count": len(refs.entries), "references": refs.entries,
            "registered_with_owner": registered, "modality": "text",
            "seconds": sum(float(e.get("seconds") or 0.0) for e in refs.entries)}


def render(result: dict[str, Any]) -> str:
    lines = [f"{result['count']} references in {result['refs']}"]
    for e in result.get("references") or ([result["added"]] if "added" in result else []):
        where = e.get("path") or e.get("url")
        cost = f"  {e['seconds']:.1f} s" if isinstance(e.get("seconds"), (int, float)) else ""
        lines.append(f"  {e['name']:<28} {e.get('recipe', ''):<12} {e.get('arch', ''):<10} {where}{cost}")
    return "\n".join(lines)
