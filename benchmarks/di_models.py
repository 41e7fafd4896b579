"""Train the independent encoders of the dataset-inference benchmarks (copies come from ``encoderguard steal``).

``independent`` writes a checkpoint directory (``model.safetensors`` + ``card.json``) trained with SimCLR on
random images of the ``query`` split (disjoint from all of the owner's data for that split seed),
e.g. the ``cpu-di`` recipe on 500 query images with another seed, or another width/depth/embedding size::

    .venv/bin/python benchmarks/di_models.py independent --split-seed 0 --seed 100 --out runs/di/i0
    .venv/bin/python benchmarks/di_models.py independent --split-seed 0 --seed 101 --width 16 --depth 3 \\
        --embed-dim 64 --train-size 1000 --epochs 120 --temperature 0.2 --out runs/di/i0w

It prints one JSON summary (probe accuracy) and stores it in the card's ``metrics``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from encoderguard.data import SplitSpec, load_split
from encoderguard.models import ModelCard, create_encoder, probe_model, save_checkpoint
from encoderguard.models.checkpoint_probe import probe_sets
from encoderguard.train import SimCLRConfig, train_simclr


def _probe(encoder: torch.nn.Module, dataset: str, split_seed: int) -> dict[str, float]:
    train, test = probe_sets(dataset, split_seed=split_seed)
    result = probe_model(encoder, train, test)
    return {"linear_acc": result.linear_acc, "knn_acc": result.knn_acc}


def independent(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    spec = SplitSpec(args.dataset, "query", args.split_seed, 500)
    pool = load_split(spec)
    gen = torch.Generator().manual_seed(args.seed)
    images = pool.subset(torch.randperm(len(pool), generator=gen)[: args.train_size], name=f"{args.dataset}:query")
    torch.manual_seed(args.seed)
    encoder = create_encoder("convnet", input_shape=images.input_shape, embed_dim=args.embed_dim,
                             width=args.width, depth=args.depth, pool=args.pool)
    config = SimCLRConfig(epochs=args.epochs, temperature=args.temperature, augmentation=args.augmentation,
                          seed=args.seed)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    result = train_simclr(encoder, images, config, work_dir=args.out, progress=False)
    metrics: dict[str, Any] = {"final_loss": result.epoch_losses[-1], **_probe(encoder, args.dataset, args.split_seed)}
    metrics["train_seconds"] = time.perf_counter() - started
    card = ModelCard(arch="convnet", arch_kwargs={}, input_shape=encoder.input_shape, embed_dim=encoder.embed_dim,
                     data=SplitSpec(args.dataset, "query", args.split_seed, args.train_size).to_dict(),
                     training={"method": "simclr", "note": f"{args.train_size} random images of the query split",
                               **config.to_dict(), "epoch_losses": result.epoch_losses},
                     metrics=metrics, heads={"projector": {"hidden_dim": config.proj_hidden,
                                                           "out_dim": config.proj_dim}})
    save_checkpoint(args.out, encoder=encoder, card=card, projector=result.projector)
    (Path(args.out) / "resume.safetensors").unlink(missing_ok=True)
    return {"out": args.out, **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ind = sub.add_parser("independent")
    ind.add_argument("--dataset", default="fashion-mnist")
    ind.add_argument("--split-seed", type=int, default=0)
    ind.add_argument("--seed", type=int, default=100)
    ind.add_argument("--train-size", type=int, default=500)
    ind.add_argument("--epochs", type=int, default=240)
    ind.add_argument("--temperature", type=float, default=0.1)
    ind.add_argument("--augmentation", default="weak")
    ind.add_argument("--width", type=int, default=32)
    ind.add_argument("--depth", type=int, default=4)
    ind.add_argument("--pool", default="flatten")
    ind.add_argument("--embed-dim", type=int, default=128)
    ind.add_argument("--out", required=True)
    args = parser.parse_args()
    print(json.dumps(independent(args)))


if __name__ == "__main__":
    main()
