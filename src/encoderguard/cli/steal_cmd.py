"""``encoderguard steal``: extract a copy of an encoder through its embedding API, evaluate it, save it."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from encoderguard.cli.common import add_data_dir, add_progress, non_negative_int, positive_int
from encoderguard.cli.main import add_common

DEFAULT_PRICE_PER_1K = 0.10
DEFAULT_EVAL_QUERIES = 1000


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "steal", help="steal an encoder through its embedding API (red team)",
        description="Pay for up to --budget answers of the victim (each input at most once, cached on disk under "
                    "OUT/query_cache so a rerun resumes without paying twice), train a copy on the cached answers, "
                    "evaluate it against the victim and save it as a checkpoint in OUT.")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--api", default=None, help="URL of the victim's embedding API")
    who.add_argument("--victim", default=None, help="victim checkpoint directory, attacked in-process")
    p.add_argument("--key", default=None, help="API key for --api")
    p.add_argument("--budget", type=int, required=True, help="queries to pay for (>= 1)")
    p.add_argument("--loss", default="mse", help="stealing loss: mse (default), cosine, infonce, softnn, "
                   "wasserstein, barlow")
    p.add_argument("--loss-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="a loss setting, e.g. temperature=0.1 (repeatable)")
    p.add_argument("--query-data", default=None,
                   help="the attacker's images, dataset[:split] (split default: query); default: the victim's "
                        "dataset, query split (needs --victim or --victim-for-eval)")
    p.add_argument("--mode", choices=("clean", "siamese"), default="clean",
                   help="clean (default): each input queried once, augmented views reuse its answer; siamese: the "
                        "victim answers augmented views, each a paid query")
    p.add_argument("--views", type=positive_int, default=1, help="victim views per input in siamese mode")
    p.add_argument("--order", choices=("random", "sequential"), default="random",
                   help="order in which query inputs are spent (default random)")
    p.add_argument("--query-batch", type=positive_int, default=256, help="images per API request")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs of the copy (default 60)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--augmentation", choices=("weak", "simclr", "none"), default="weak",
                   help="the copy's training views (default weak: crop 0.8-1 + flip)")
    p.add_argument("--arch", default="convnet", help="copy architecture (default convnet)")
    p.add_argument("--width", type=positive_int, default=None, help="convnet width (default 32)")
    p.add_argument("--depth", type=positive_int, default=None, help="convnet depth (default 4)")
    p.add_argument("--pool", choices=("avg", "flatten"), default=None, help="convnet pooling (default avg)")
    p.add_argument("--embed-dim", type=positive_int, default=None,
                   help="copy's representation size (default: the victim's); if it differs, a projection head to "
                        "the victim's space is learned")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seeds the query order, the copy's initial weights (offset so that they never equal those of "
                   "an encoder trained with train --seed of the same number) and its training")
    p.add_argument("--split-seed", type=non_negative_int, default=None,
                   help="seed of the data split (default: the victim card's, else 0)")
    p.add_argument("--cache", default=None, help="query cache directory (default OUT/query_cache)")
    p.add_argument("--victim-for-eval", default=None,
                   help="with --api: the victim's checkpoint, for an owner-side evaluation that costs no queries")
    p.add_argument("--eval-queries", type=non_negative_int, default=DEFAULT_EVAL_QUERIES,
                   help="with --api and no --victim-for-eval: probe images per probe set to query for the "
                        f"evaluation (2 x N queries, counted apart from the budget; default {DEFAULT_EVAL_QUERIES};"
                        " 0 skips the evaluation)")
    p.add_argument("--probe-data", default=None,
                   help="dataset of the probe (default: the victim card's dataset, else the query data's)")
    p.add_argument("--ledger", default=None, help="the server's ledger file: report its count for this key")
    p.add_argument("--price-per-1k", type=float, default=DEFAULT_PRICE_PER_1K,
                   help=f"assumed price in dollars per 1000 queries (default {DEFAULT_PRICE_PER_1K})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output directory of the copy (checkpoint)")
    add_data_dir(p)
    add_progress(p)
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from encoderguard.attacks import StealingAttack, evaluate_copy, victim_reference
    from encoderguard.data.splits import SplitSpec, load_split, parse_data_spec
    from encoderguard.models import ModelCard, load_checkpoint, read_card, save_checkpoint
    from encoderguard.train.evaluate import probe_sets

    started = time.perf_counter()
    if args.budget < 1:
        raise ValueError(f"--budget must be >= 1, got {args.budget}")
    if not args.price_per_1k >= 0:
        raise ValueError(f"--price-per-1k must be >= 0, got {args.price_per_1k}")
    out = Path(args.out)
    if (out / "card.json").exists() and read_card(out).training.get("method") != "stealing":
        raise FileExistsError(f"{out} holds a model that is not a stolen copy; choose another --out")
    progress = not args.no_progress
    warnings: list[str] = []

    # -- the victim --------------------------------------------------------------------------------------------
    owner_encoder = None
    victim_card = None
    if args.victim:
        from encoderguard.api import LocalAPI

        ckpt = load_checkpoint(args.victim)
        owner_encoder, victim_card = ckpt.encoder, ckpt.card
        api: Any = LocalAPI(owner_encoder, key="attacker")
        victim_id = f"checkpoint:{ckpt.card.weights_sha256}"
        if args.victim_for_eval:
            warnings.append("--victim-for-eval ignored: --victim already evaluates owner-side")
    else:
        if not args.key:
            raise ValueError("--api needs --key")
        from encoderguard.api import HTTPEmbeddingAPI

        api = HTTPEmbeddingAPI(args.api, args.key)
        victim_id = f"api:{api.url}"
        if args.victim_for_eval:
            eval_ckpt = load_checkpoint(args.victim_for_eval)
            owner_encoder, victim_card = eval_ckpt.encoder, eval_ckpt.card
    card_data = (victim_card.data or {}) if victim_card is not None else {}
    split_seed = args.split_seed if args.split_seed is not None else int(card_data.get("split_seed", 0))
    train_size = int(card_data.get("train_size", 10000))

    # -- the attacker's data -----------------------------------------------------------------------------------
    query_spec = args.query_data or (f"{card_data['dataset']}:query" if card_data.get("dataset") else None)
    if query_spec is None:
        raise ValueError("--query-data is required when the victim's card is not available (give --query-data, "
                         "--victim or --victim-for-eval)")
    dataset, split = parse_data_spec(query_spec, default_split="query")
    query_split = SplitSpec(dataset, split, split_seed, train_size)
    query_data = load_split(query_split, data_dir=args.data_dir)

    arch_kwargs: dict[str, Any] = {"width": 32, "depth": 4, "pool": "avg"} if args.arch == "convnet" else {}
    for flag in ("width", "depth", "pool"):
        if getattr(args, flag) is not None:
            arch_kwargs[flag] = getattr(args, flag)
    attack = StealingAttack(
        api, loss=args.loss, loss_kwargs=_loss_kwargs(args.loss_arg), budget=args.budget,
        cache_dir=args.cache or out / "query_cache", mode=args.mode, views=args.views, order=args.order,
        query_batch=args.query_batch, epochs=args.epochs or 60, batch_size=args.batch_size, lr=args.lr,
        augmentation=args.augmentation, arch=args.arch, arch_kwargs=arch_kwargs, embed_dim=args.embed_dim,
        seed=args.seed, victim_id=victim_id, progress=progress, device=args.device)
    result = attack.extract(query_data)

    # -- evaluation --------------------------------------------------------------------------------------------
    probe_dataset = args.probe_data or card_data.get("dataset") or dataset
    evaluation: dict[str, Any] = {}
    eval_started = time.perf_counter()
    if owner_encoder is not None or args.eval_queries > 0:
        probe_train, probe_test = probe_sets(probe_dataset, split_seed=split_seed, data_dir=args.data_dir)
        if owner_encoder is None:
            probe_train = probe_train.head(args.eval_queries)
            probe_test = probe_test.head(args.eval_queries)
        if probe_dataset == dataset and split in ("test", "all"):
            warnings.append(f"query data {query_spec} overlaps probe-test: fidelity is measured on inputs the "
                            "attacker sent")
        reference = victim_reference(owner_encoder if owner_encoder is not None else api, probe_train, probe_test,
                                     cache_dir=out / "eval_cache", victim_id=victim_id,
                                     batch_size=args.query_batch, progress=progress)
        evaluation = evaluate_copy(result.encoder, reference, probe_train, probe_test,
                                   projector=result.projector, random_seed=args.seed).to_dict()
        evaluation["probe_dataset"] = probe_dataset
    else:
        warnings.append("no evaluation: --eval-queries 0 and no --victim-for-eval")
    eval_seconds = time.perf_counter() - eval_started

    # -- accounting --------------------------------------------------------------------------------------------
    ledger_queries = None
    if args.ledger:
        if args.victim:
            warnings.append("--ledger ignored: an in-process victim keeps no ledger")
        else:
            ledger_queries = _ledger_count(args.ledger, api)
    summary: dict[str, Any] = {
        "queries_paid": result.queries_paid,
        "queries_new": result.queries_new,
        "queries_cached": result.queries_cached,
        "client_queries": int(api.queries_used),
        "ledger_queries": ledger_queries,
        "eval_queries_paid": int(evaluation.get("eval_queries_paid", 0)),
        **{k: v for k, v in evaluation.items() if k != "eval_queries_paid"},
        "estimated_cost_usd": result.queries_paid / 1000 * args.price_per_1k,
        "price_per_1k": args.price_per_1k,
        "loss": args.loss,
        "budget": args.budget,
        "mode": args.mode,
        "epochs": len(result.epoch_losses),
        "final_loss": result.epoch_losses[-1],
        "query_data": query_data.name,
        "query_seconds": result.query_seconds,
        "train_seconds": result.train_seconds,
        "eval_seconds": eval_seconds,
        "seconds": 0.0,
        "out": str(out),
        "cache": result.cache_dir,
        "warnings": warnings,
    }

    # -- the copy as a checkpoint ------------------------------------------------------------------------------
    heads = ({"projector": {"hidden_dim": attack.projection_hidden, "out_dim": int(api.dim)}}
             if result.projector is not None else {})
    training = {**result.settings, "victim": victim_id, "epoch_losses": result.epoch_losses,
                "arch_kwargs": arch_kwargs, "queries_paid": result.queries_paid}
    data = {**query_split.to_dict(), "queries": result.queries_paid, "probe_dataset": probe_dataset}
    metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()
               if k not in ("out", "cache", "warnings", "seconds")}
    card = ModelCard(arch=args.arch, arch_kwargs={}, input_shape=result.encoder.input_shape,
                     embed_dim=result.encoder.embed_dim, data=data, training=training, metrics=metrics, heads=heads)
    save_checkpoint(out, encoder=result.encoder, card=card, projector=result.projector)
    summary["seconds"] = time.perf_counter() - started
    return summary


def _loss_kwargs(items: list[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--loss-arg expects NAME=VALUE, got {item!r}")
        value: Any
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
        kwargs[name.strip().replace("-", "_")] = value
    return kwargs


def _ledger_count(path: str, api: Any) -> int:
    """Images the server's ledger has charged to this client's key (all runs, evaluation included)."""
    from encoderguard.api import Ledger

    key_id = str(api.model_info().get("key_id", ""))
    with Ledger(path, create=False) as ledger:
        return int(ledger.summary()["keys"].get(key_id, {}).get("queries", 0))


def render(result: dict[str, Any]) -> str:
    lines = [f"stole a copy into {result['out']} with {result['queries_paid']} paid queries "
             f"({result['queries_new']} new, {result['queries_cached']} from the cache), {result['loss']} loss, "
             f"{result['epochs']} epochs, {result['seconds']:.0f} s, est. ${result['estimated_cost_usd']:.2f}"]
    if "linear_acc" in result:
        lines.append(f"linear probe: copy {result['linear_acc']:.4f}  victim {result['victim_linear_acc']:.4f}  "
                     f"random init {result['random_init_linear_acc']:.4f}  gain recovery "
                     f"{result['gain_recovery']:.3f}")
        lines.append(f"fidelity (mean cosine to the victim on probe-test): {result['fidelity_cosine']:.4f}")
    if result.get("ledger_queries") is not None:
        lines.append(f"server ledger: {result['ledger_queries']} queries charged to this key")
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)
