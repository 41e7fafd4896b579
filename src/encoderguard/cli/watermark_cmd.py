"""``encoderguard watermark keygen``: the secret key of the serving-time watermark (a 0600 JSON file)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from encoderguard.cli.common import add_common, add_data_dir, positive_int


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("watermark", help="the serving-time watermark: make its secret key",
                       description="The serving-time watermark marks every answer of your API with a keyed, "
                                   "input-dependent shift that copies trained on the answers inherit (serve it with "
                                   "--defence output-watermark:key=KEY_FILE; verify a suspect with 'encoderguard "
                                   "verify output-watermark --watermark-key KEY_FILE').")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    k = actions.add_parser("keygen", help="write a new secret watermark key (JSON, mode 0600; never overwrites)",
                           description="Write a new secret key: 32 random bytes plus what verification needs (the "
                                       "answer size, the probe inputs' data spec and count). With --encoder the key "
                                       "is calibrated on your encoder: the centre of its answers and its clean "
                                       "answers to the probe inputs are stored, so verification needs only the key.")
    k.add_argument("--out", required=True, help="the key file to create (refused if it exists)")
    k.add_argument("--dim", type=positive_int, default=None,
                   help="answer size the key marks (default: the encoder's with --encoder, else any size)")
    k.add_argument("--data", default=None,
                   help="data spec of the probe inputs, dataset[:split] (default with --encoder: the test part of "
                        "the encoder's dataset, e.g. fashion-mnist:test)")
    k.add_argument("--encoder", default=None,
                   help="your clean encoder: a checkpoint directory, onnx:PATH, or st:NAME for a text model "
                        "(e.g. st:all-MiniLM-L6-v2 with --data bbc-news:query); calibrates the key on its answers")
    k.add_argument("--probes", type=positive_int, default=1000, help="probe inputs verification sends (default 1000)")
    k.add_argument("--align-probes", type=positive_int, default=2000,
                   help="alignment candidates (default 2000); verification sends those in the watermark's dead zone, "
                        "about a third")
    k.add_argument("--strength", type=_strength, default=None,
                   help="step size relative to the answer's distance from the centre (default 0.2)")
    add_common(k)
    add_data_dir(k)
    k.set_defaults(handler=sys.modules[__name__])


def _data_spec(text: str | None, card: Any) -> dict[str, Any] | None:
    from encoderguard.data.registry import dataset_modality
    from encoderguard.data.splits import SplitSpec, parse_data_spec

    base = dict(card.data) if card is not None and card.data else {}
    if text is None:
        if not base:
            return None
        return SplitSpec.from_dict({**base, "split": "test"}).to_dict()
    dataset, split = parse_data_spec(text, default_split="test")
    same = base.get("dataset") == dataset
    # Without the owner's card the owner's training-set size is unknown. For a text dataset (a pretrained text
    # encoder holds no split of it) record 1: the query, probe and test splits do not depend on it, and a small
    # corpus such as bbc-news (834 documents per half) admits no default of 10,000.
    default_train = 1 if dataset_modality(dataset) == "text" else 10000
    return SplitSpec(dataset, split, int(base["split_seed"]) if same else 0,
                     int(base["train_size"]) if same else default_train,
                     base.get("heldout_size") if same else None).to_dict()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from encoderguard.defences.output_watermark import key_summary
    from encoderguard.defences.output_watermark_key import DEFAULT_STRENGTH, OutputWatermarkKey

    out = Path(args.out)
    if out.exists():
        raise ValueError(f"{out} already exists; refusing to replace a watermark key (choose another --out)")
    card = encoder = None
    if args.encoder:
        from encoderguard.models.model_spec import ONNX_PREFIX, load_any
        from encoderguard.models.text_encoders import ST_PREFIX

        if str(args.encoder).startswith((ST_PREFIX, ONNX_PREFIX)):
            # a pretrained model without a card (e.g. st:all-MiniLM-L6-v2): the probe data comes from --data
            encoder = load_any(args.encoder)
        else:
            from encoderguard.models.checkpoint import load_checkpoint

            checkpoint = load_checkpoint(args.encoder)
            card, encoder = checkpoint.card, checkpoint.encoder
        embed_dim = int(encoder.embed_dim)
        if args.dim is not None and args.dim != embed_dim:
            raise ValueError(f"--dim {args.dim} differs from the encoder's {embed_dim}-d answers")
    data = _data_spec(args.data, card)
    if encoder is not None and data is None:
        raise ValueError("--encoder needs --data SPEC: the encoder's card records no dataset (a text model: "
                         "e.g. --data bbc-news:query)")
    key = OutputWatermarkKey.generate(dim=args.dim, data=data, probes=args.probes, align=args.align_probes,
                                      strength=DEFAULT_STRENGTH if args.strength is None else args.strength)
    warnings = []
    if encoder is not None:
        from encoderguard.data.splits import SplitSpec, load_split

        pool = load_split(SplitSpec.from_dict(data), data_dir=args.data_dir)  # type: ignore[arg-type]
        key = key.calibrate(encoder, pool)
    else:
        warnings.append("not calibrated (no --encoder): the secret regions are cut through the origin, which "
                        "splits centred answers evenly but may not split yours, and verification needs the owner's "
                        "encoder (--owner DIR) to align a suspect")
        if data is None:
            warnings.append("no --data: verification must be given its probe inputs (--data SPEC)")
    key.save(out)
    return {"key": str(out), **key_summary(key), "mode": "0600", "warnings": warnings}


def render(result: dict[str, Any]) -> str:
    data = result["data"]
    source = f"{data['dataset']}:{data['split']}" if data else "no data spec"
    lines = [f"wrote watermark key {result['key']} (fingerprint {result['fingerprint']}, mode 0600; keep it private "
             "and backed up)",
             f"  dim {result['dim'] or 'any'}, strength {result['strength']}, probes {result['probes']} + "
             f"{result['align']} alignment candidates from {source}, "
             f"calibrated: {result['calibrated']}",
             f"serve with:  --defence output-watermark:key={result['key']}"]
    lines += [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)
