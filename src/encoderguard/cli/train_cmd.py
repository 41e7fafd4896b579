"""``encoderguard train``: SimCLR-train an encoder on a dataset split and save a checkpoint."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from encoderguard.cli.common import add_common, add_data_dir, add_device, add_progress, non_negative_int, positive_int
from encoderguard.cli.distributed_launch import add_nproc, run_distributed


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help="train an encoder with SimCLR (optionally watermarked)",
                       description="Train an encoder with SimCLR on DATA (dataset[:split], split default "
                                   "owner-train) and write DIR/model.safetensors + DIR/card.json. Resumes from "
                                   "DIR/resume.safetensors after an interruption.")
    p.add_argument("--data", default="fashion-mnist", help="dataset[:split] (default fashion-mnist:owner-train)")
    p.add_argument("--preset", default="cpu", help="cpu (default), cpu-di (memorising victim for dataset "
                   "inference), gpu (ResNet-18, 200 epochs) or gpu-bench (ResNet-18, 40 epochs, batch 1024: the "
                   "victim of benchmarks/gpu.sh); explicit flags override it")
    p.add_argument("--arch", default=None,
                   help="encoder architecture: convnet or resnet18 (default: the preset's: convnet, resnet18 on gpu)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="training epochs (default: the preset's: cpu 15, cpu-di 240, gpu 200)")
    p.add_argument("--train-size", type=positive_int, default=None,
                   help="images of owner-train to use (default: the preset's: 10000 on cpu, 500 on cpu-di, 25000 "
                        "on gpu)")
    p.add_argument("--max-images", type=positive_int, default=None,
                   help="train on a seeded random sample of N images of a split other than owner-train (e.g. an "
                   "independent model on N query images); owner-train's size is --train-size")
    p.add_argument("--heldout-size", type=positive_int, default=None, help="size of owner-heldout (default: rest)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="training seed (default 0; with --watermark use a private one)")
    p.add_argument("--split-seed", type=non_negative_int, default=0, help="seed of the owner's data split (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images per SimCLR batch (default: the preset's: 256 on cpu and cpu-di, 512 on gpu)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 0.001)")
    p.add_argument("--temperature", type=float, default=None,
                   help="NT-Xent temperature (default: the preset's: 0.5 on cpu and gpu, 0.1 on cpu-di)")
    p.add_argument("--augmentation", choices=("simclr", "weak"), default=None,
                   help="simclr (strong) or weak (crop 0.8-1 + flip) views (default: the preset's: weak on cpu-di, "
                        "simclr otherwise)")
    p.add_argument("--embed-dim", type=positive_int, default=None,
                   help="size of the representation (default: the preset's: 128, 512 on gpu)")
    p.add_argument("--width", type=positive_int, default=None,
                   help="channels of the first layer (default: the preset's: 32, 64 on gpu)")
    p.add_argument("--pool", choices=("avg", "flatten"), default=None,
                   help="convnet output pooling (default: the preset's: flatten on cpu-di, avg otherwise)")
    p.add_argument("--watermark", action="store_true", help="train the secret rotation watermark jointly")
    p.add_argument("--watermark-weight", type=float, default=None,
                   help="weight of the watermark loss (default: the preset's, 1.0 for cpu and gpu, 0.25 for cpu-di)")
    p.add_argument("--no-probe", action="store_true", help="skip the linear/kNN probe after training")
    add_device(p)
    add_nproc(p, "the encoder")
    p.add_argument("--out", required=True,
                   help="output checkpoint directory: new, empty, or an interrupted run of this command to resume")
    add_data_dir(p)
    add_progress(p)
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    return run_distributed(args, lambda: _train(args))


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from encoderguard.data.splits import SplitSpec, parse_data_spec
    from encoderguard.train.presets import get_preset
    from encoderguard.train.run import train_to_dir
    from encoderguard.train.simclr import SimCLRConfig

    preset = get_preset(args.preset)
    dataset, split = parse_data_spec(args.data, default_split="owner-train")
    arch = args.arch or preset["arch"]
    arch_kwargs = dict(preset["arch_kwargs"]) if arch == preset["arch"] else {}
    for flag, key in (("embed_dim", "embed_dim"), ("width", "width"), ("pool", "pool")):
        if getattr(args, flag) is not None:
            arch_kwargs[key] = getattr(args, flag)
    train_size = args.train_size or preset["train_size"]
    spec = SplitSpec(dataset, split, args.split_seed, train_size, args.heldout_size)
    config = SimCLRConfig(
        epochs=args.epochs or preset["epochs"], batch_size=args.batch_size or preset["batch_size"],
        lr=args.lr if args.lr is not None else 1e-3,
        temperature=args.temperature if args.temperature is not None else preset["temperature"],
        augmentation=args.augmentation or preset["augmentation"], seed=args.seed,
        watermark_weight=(args.watermark_weight if args.watermark_weight is not None
                          else preset["watermark_weight"]) if args.watermark else 0.0)
    return train_to_dir(data=spec, arch=arch, arch_kwargs=arch_kwargs, config=config, out_dir=args.out,
                        max_images=args.max_images, data_dir=args.data_dir, probe=not args.no_probe,
                        progress=not args.no_progress, device=args.device, preset=args.preset)


def render(result: dict[str, Any]) -> str:
    processes = f", {result['processes']} processes" if result.get("processes", 1) > 1 else ""
    lines = [f"saved {result['out']} ({result['train_images']} images, {result['epochs']} epochs{processes}, "
             f"{result['seconds']:.0f} s, final loss {result['final_loss']:.4f})"]
    if "linear_acc" in result:
        lines.append(f"linear probe {result['linear_acc']:.4f}  kNN {result['knn_acc']:.4f}")
    if "watermark_acc" in result:
        lines.append(f"watermark accuracy on held-out rotated images {result['watermark_acc']:.4f}")
    return "\n".join(lines)
