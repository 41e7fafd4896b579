"""``encoderguard probe``: linear-probe and kNN accuracy of an encoder, beside the same architecture at random init."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from encoderguard.cli.common import add_data_dir, input_shape, non_negative_int
from encoderguard.cli.main import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("probe", help="linear-probe and kNN accuracy of an encoder (and of random init)",
                       description="Measure how useful an encoder's representations are downstream: fit a linear "
                                   "probe (and a kNN classifier) on probe-train and report accuracy on probe-test, "
                                   "beside the same architecture at random initialisation, whose gap is the value "
                                   "training added (and what a thief's copy should recover).")
    p.add_argument("--encoder", required=True, help="checkpoint directory, or onnx:PATH for an ONNX model")
    p.add_argument("--input-shape", type=input_shape, default=None, metavar="C,H,W",
                   help="image shape of an ONNX model with dynamic dimensions, e.g. 3,32,32")
    p.add_argument("--data", default=None, help="dataset for the probe (default: the encoder's own dataset)")
    p.add_argument("--split-seed", type=non_negative_int, default=None,
                   help="seed of the probe-train/probe-test split (default: the card's)")
    p.add_argument("--random-seed", type=non_negative_int, default=0, help="seed of the random-init baseline")
    add_data_dir(p)
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from encoderguard.models.checkpoint_probe import probe_checkpoint

    return probe_checkpoint(args.encoder, dataset=args.data, split_seed=args.split_seed,
                            random_seed=args.random_seed, data_dir=args.data_dir,
                            input_shape=args.input_shape).to_dict()


def render(result: dict[str, Any]) -> str:
    sets = f"on {result['dataset']} probe-train {result['n_train']} / probe-test {result['n_test']}"
    head = (f"{'model':<12}{'linear':>8}{'kNN':>8}\n"
            f"{'encoder':<12}{result['linear_acc']:>8.4f}{result['knn_acc']:>8.4f}\n")
    if result["random_init_linear_acc"] is None:  # an ONNX model: no architecture to re-initialise
        return head + f"no random-init baseline for this model, {sets}"
    return (head + f"{'random init':<12}{result['random_init_linear_acc']:>8.4f}"
            f"{result['random_init_knn_acc']:>8.4f}\n"
            f"gain over random init: {result['linear_gain']:+.4f} (linear), {sets}")
