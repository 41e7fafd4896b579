"""Wall time and queries: cached stealing against the seed's approach (re-query the victim every batch, every epoch).

Both steal the same victim over HTTP with the same copy (same architecture and initialisation), the same query
images, loss, augmentation, optimiser and number of epochs, one after the other in this process:

- **cached** (``StealingAttack``, this project's default): each query image is paid for once (``budget`` queries),
  answers are cached on disk, the copy trains ``epochs`` epochs on augmented views that reuse the paid answers;
- **seed**: the siamese loop of the seed implementation: every batch of every epoch sends a fresh augmented view
  of each image to the victim (``epochs x budget`` queries) and trains the copy on another view.

    .venv/bin/python benchmarks/steal_vs_seed.py --victim runs/victim --budget 2000 --loss mse

Writes ``benchmarks/out/steal_vs_seed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from steal_server import add_key, ledger_queries, served  # noqa: E402

from encoderguard.api import HTTPEmbeddingAPI  # noqa: E402
from encoderguard.attacks import StealingAttack, evaluate_copy, victim_reference  # noqa: E402
from encoderguard.data import create_augmentation, owner_spec, owner_split  # noqa: E402
from encoderguard.models import load_checkpoint  # noqa: E402
from encoderguard.models.checkpoint_probe import probe_sets  # noqa: E402
from encoderguard.progress import progress_bar  # noqa: E402


def seed_steal(api: HTTPEmbeddingAPI, attack: StealingAttack, images: torch.Tensor) -> tuple[nn.Module, float]:
    """The seed's loop: query the victim on a fresh view of every batch of every epoch."""
    copy, projector = attack.build_copy(tuple(images.shape[1:]), api.dim)  # type: ignore[arg-type]
    modules = nn.ModuleList([copy] if projector is None else [copy, projector])
    optimiser = torch.optim.Adam(modules.parameters(), lr=attack.lr, weight_decay=attack.weight_decay)
    n = images.shape[0]
    steps = max(1, math.ceil(n / attack.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=attack.lr, total_steps=attack.epochs * steps,
                                                    pct_start=0.05, anneal_strategy="cos", cycle_momentum=False)
    c, h, w = images.shape[1:]
    aug_name = "simclr" if attack.augmentation == "none" else attack.augmentation
    augment = create_augmentation(aug_name, int(c), (int(h), int(w)))
    started = time.perf_counter()
    with progress_bar(True) as bar:
        task = bar.add_task("seed", total=attack.epochs, info="")
        for epoch in range(attack.epochs):
            modules.train()
            generator = torch.Generator().manual_seed(attack.seed * 100_003 + epoch)
            torch.manual_seed(attack.seed * 100_003 + epoch)
            for index in torch.tensor_split(torch.randperm(n, generator=generator), steps):
                x = images[index].float().div_(255.0)
                victim_answers = api.embed(augment(x))  # paid: one query per image per epoch
                z = copy(augment(x))
                if projector is not None:
                    z = projector(z)
                loss = attack.loss_fn(z, victim_answers)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                scheduler.step()
            bar.update(task, advance=1)
    modules.eval()
    return copy, time.perf_counter() - started


def _warm_up(shape: tuple[int, int, int]) -> None:
    """Pay one-off costs (optimiser and augmentation first use) before either approach is timed."""
    param = nn.Parameter(torch.zeros(1))
    optimiser = torch.optim.Adam([param])
    param.sum().backward()
    optimiser.step()
    create_augmentation("weak", shape[0], shape[1:])(torch.rand(2, *shape))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", default="runs/victim")
    p.add_argument("--budget", type=int, default=2000)
    p.add_argument("--loss", default="mse")
    p.add_argument("--epochs", type=int, default=None, help="default: StealingAttack's default")
    p.add_argument("--augmentation", default="weak")
    p.add_argument("--query-data", default="query", help="split of the victim's dataset")
    args = p.parse_args()
    ckpt = load_checkpoint(args.victim)
    spec = owner_spec(ckpt.card)
    query = owner_split(ckpt.card, args.query_data)
    probe_train, probe_test = probe_sets(spec.dataset, split_seed=spec.split_seed)
    reference = victim_reference(ckpt.encoder, probe_train, probe_test)
    work = Path(tempfile.mkdtemp(prefix="steal_vs_seed_"))
    keys, ledger = work / "keys.json", work / "ledger.sqlite"
    key_cached, key_seed = add_key(keys, "cached"), add_key(keys, "seed")
    _warm_up(query.input_shape)
    rows = {}
    with served(args.victim, keys, ledger) as url:
        extra = {"epochs": args.epochs} if args.epochs else {}
        with HTTPEmbeddingAPI(url, key_cached) as api:
            attack = StealingAttack(api, loss=args.loss, budget=args.budget, cache_dir=work / "cache",
                                    augmentation=args.augmentation, victim_id=url, **extra)
            result = attack.extract(query)
            ev = evaluate_copy(result.encoder, reference, probe_train, probe_test, projector=result.projector)
            rows["cached"] = {"seconds": result.seconds, "query_seconds": result.query_seconds,
                              "train_seconds": result.train_seconds, **ev.to_dict()}
        with HTTPEmbeddingAPI(url, key_seed) as api:
            attack = StealingAttack(api, loss=args.loss, budget=args.budget, cache_dir=work / "unused",
                                    augmentation=args.augmentation, victim_id=url, **extra)
            order = attack.plan(query).sources(0, args.budget)[0]
            copy, seconds = seed_steal(api, attack, query.images[torch.from_numpy(order)])
            ev = evaluate_copy(copy, reference, probe_train, probe_test)
            rows["seed"] = {"seconds": seconds, **ev.to_dict()}
        paid = ledger_queries(ledger)
    rows["cached"]["ledger_queries"], rows["seed"]["ledger_queries"] = paid["cached"], paid["seed"]
    report = {"budget": args.budget, "loss": args.loss, "epochs": attack.epochs, "augmentation": args.augmentation,
              "threads": torch.get_num_threads(), "rows": rows}
    md = ["| approach | wall time (s) | queries paid (ledger) | copy acc | gain recovery | fidelity |",
          "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        md.append(f"| {name} | {r['seconds']:.0f} | {r['ledger_queries']} | {r['linear_acc']:.4f} | "
                  f"{r['gain_recovery']:.3f} | {r['fidelity_cosine']:.4f} |")
    text = (f"{args.budget} query images, loss {args.loss}, {attack.epochs} epochs, augmentation "
            f"{args.augmentation}, {torch.get_num_threads()} threads\n\n" + "\n".join(md) + "\n")
    out = Path("benchmarks/out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "steal_vs_seed.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "steal_vs_seed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
