"""``encoderguard steal``: extract a copy of an encoder through its embedding API, evaluate it, save it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from encoderguard.attacks.steal_run import DEFAULT_PRICE_PER_1K, DEFAULT_PRICE_PER_MILLION_TOKENS, STUDENTS
from encoderguard.cli.common import add_data_dir, add_progress, device, input_shape, non_negative_int, positive_int
from encoderguard.cli.distributed_launch import add_nproc, run_distributed
from encoderguard.cli.main import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "steal", help="steal an encoder through its embedding API (red team)",
        description="Pay for up to --budget answers of the victim (each input at most once, cached on disk under "
                    "OUT/query_cache so a rerun resumes without paying twice), train a copy on the cached answers, "
                    "evaluate it against the victim and save it as a checkpoint in OUT.")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--api", default=None, help="URL of the victim's embedding API")
    who.add_argument("--victim", default=None,
                     help="victim checkpoint directory, onnx:PATH for an ONNX model or st:NAME_OR_PATH for a "
                          "sentence-transformers text encoder, attacked in-process")
    p.add_argument("--input-shape", type=input_shape, default=None, metavar="C,H,W",
                   help="image shape of an ONNX victim with dynamic dimensions, or of an --api that does not say "
                        "it (--api-format openai), e.g. 3,32,32")
    p.add_argument("--key", default=None, help="API key for --api")
    p.add_argument("--api-format", default="encoderguard", choices=("encoderguard", "openai", "kserve"),
                   help="wire format of --api (default encoderguard; openai: OpenAI's /v1/embeddings, the format "
                        "of text APIs; for images it needs --input-shape)")
    p.add_argument("--budget", type=int, required=True, help="queries to pay for (>= 1)")
    p.add_argument("--loss", default=None, help="stealing loss: mse (default), cosine, infonce, softnn, "
                   "wasserstein, barlow, rda (RDA's multi-relational loss on per-input prototypes)")
    p.add_argument("--loss-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="a loss setting, e.g. temperature=0.1 (repeatable)")
    p.add_argument("--query-data", default=None,
                   help="the attacker's inputs, dataset[:split] (split default: query): images (fashion-mnist, "
                        "idx:DIR, folder:DIR, ...) or text (bbc-news, text:DIR, jsonl:FILE); default: the victim's "
                        "dataset, query split (needs --victim or --victim-for-eval)")
    p.add_argument("--mode", choices=("clean", "siamese"), default="clean",
                   help="clean (default): each input queried once, augmented views reuse its answer; siamese: the "
                        "victim answers augmented views, each a paid query")
    p.add_argument("--views", type=positive_int, default=None,
                   help="siamese mode: victim views per input, each a paid query; clean mode: augmented views of "
                        "each paid input per training step, all trained towards its one answer (no extra queries; "
                        "default 1)")
    p.add_argument("--selection", choices=("random", "kcenter", "rounds"), default=None,
                   help="which inputs to pay for: random (default), kcenter (greedy k-center on a pixel-PCA proxy, "
                        "no extra queries) or rounds (pay budget/R per round, then the inputs where the copy's "
                        "answers spread most); kcenter and rounds change the query distribution a monitor sees")
    p.add_argument("--rounds", type=positive_int, default=None, help="rounds of --selection rounds (default 4)")
    p.add_argument("--mixup", type=float, default=None,
                   help="mixup between paid inputs with mixed answers as targets, Beta concentration (default 0: "
                        "off; offline, invisible to the victim)")
    p.add_argument("--min-steps", type=non_negative_int, default=None,
                   help="least optimiser steps of the copy: small budgets train more epochs (default 0: off)")
    p.add_argument("--thief", default=None,
                   help="a named recipe (baseline, kcenter, rounds, views, mixup, rda, long, strong): its settings "
                        "replace the defaults; --loss, --views, --selection, --rounds, --mixup, --min-steps given "
                        "explicitly override it")
    p.add_argument("--order", choices=("random", "sequential"), default="random",
                   help="order in which query inputs are spent (default random)")
    p.add_argument("--query-batch", type=positive_int, default=256, help="images per API request")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="training epochs of the copy (default 60; text: 1, with at least 2000 optimiser steps)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="inputs per training batch of the copy (default 128; text: 256)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate of the copy (default 0.002; text: 0.01)")
    p.add_argument("--augmentation", choices=("weak", "simclr", "none"), default=None,
                   help="the copy's training views of images (default weak: crop 0.8-1 + flip; text has none)")
    p.add_argument("--arch", default=None, help="copy architecture (default convnet for images)")
    p.add_argument("--student", choices=tuple(STUDENTS), default=None,
                   help="text copies: ngram (default; bag of hashed word and character n-grams) or transformer (a "
                        "small transformer, weaker on CPU budgets)")
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
    p.add_argument("--eval-queries", type=non_negative_int, default=0,
                   help="with --api and no --victim-for-eval: buy the victim's answers to the first N images of "
                        "each probe set to evaluate the copy (2 x N queries beyond --budget, announced before they "
                        "are spent; default 0: no evaluation)")
    p.add_argument("--eval-size", type=positive_int, default=None,
                   help="probe images per probe set for the evaluation (default: all of probe-train and "
                        "probe-test, 5000 each on Fashion-MNIST; smaller is faster and noisier)")
    p.add_argument("--probe-data", default=None,
                   help="dataset of the probe (default: the victim card's dataset, else the query data's)")
    p.add_argument("--ledger", default=None, help="the server's ledger file: report its count for this key")
    p.add_argument("--price-per-1k", type=float, default=DEFAULT_PRICE_PER_1K,
                   help=f"images: assumed price in dollars per 1000 queries (default {DEFAULT_PRICE_PER_1K})")
    p.add_argument("--price-per-million-tokens", type=float, default=DEFAULT_PRICE_PER_MILLION_TOKENS,
                   help="text: assumed price in dollars per million tokens (default "
                        f"{DEFAULT_PRICE_PER_MILLION_TOKENS})")
    p.add_argument("--device", type=device, default="cpu",
                   help="torch device of the copy's training: cpu, cuda, cuda:N or mps (default cpu)")
    add_nproc(p, "the copy (after rank 0 has paid for the answers)")
    p.add_argument("--out", required=True, help="output directory of the copy (checkpoint)")
    add_data_dir(p)
    add_progress(p)
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    return run_distributed(args, lambda: _steal(args))


def _steal(args: argparse.Namespace) -> dict[str, Any]:
    from encoderguard.attacks.steal_run import parse_loss_kwargs, resolve_victim, steal_to_dir

    if args.budget < 1:
        raise ValueError(f"--budget must be >= 1, got {args.budget}")
    if args.victim and args.victim_for_eval:
        raise ValueError("--victim-for-eval is for --api: --victim already evaluates owner-side")
    if args.victim and args.ledger:
        raise ValueError("--ledger is for --api: an in-process victim keeps no ledger")
    victim = (_onnx_victim(args.victim, args.input_shape) if args.victim and args.victim.startswith("onnx:")
              else resolve_victim(checkpoint=args.victim, url=args.api, key=args.key,
                                  eval_checkpoint=args.victim_for_eval, api_format=args.api_format,
                                  input_shape=args.input_shape))
    given = {flag: getattr(args, flag) for flag in ("width", "depth", "pool") if getattr(args, flag) is not None}
    arch_kwargs: dict[str, Any] = {}  # empty: the architecture's defaults (steal_to_dir fills convnet's)
    if given:
        arch_kwargs = {"width": 32, "depth": 4, "pool": "avg", **given} if args.arch in (None, "convnet") else given
    explicit = {name: getattr(args, name) for name in ("loss", "views", "selection", "rounds", "mixup", "min_steps")
                if getattr(args, name) is not None}
    return steal_to_dir(
        args.out, victim, budget=args.budget, loss=args.loss or "mse", loss_kwargs=parse_loss_kwargs(args.loss_arg),
        query_data=args.query_data, mode=args.mode, views=args.views or 1, order=args.order,
        selection=args.selection or "random", rounds=args.rounds or 4,
        mixup=args.mixup if args.mixup is not None else 0.0, thief=args.thief,
        attack_kwargs=explicit if args.thief else {k: v for k, v in explicit.items() if k == "min_steps"},
        query_batch=args.query_batch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        augmentation=args.augmentation, arch=args.arch, arch_kwargs=arch_kwargs, embed_dim=args.embed_dim,
        seed=args.seed, split_seed=args.split_seed, cache_dir=args.cache, eval_queries=args.eval_queries,
        eval_size=args.eval_size, probe_data=args.probe_data, ledger=args.ledger, price_per_1k=args.price_per_1k,
        price_per_million_tokens=args.price_per_million_tokens, student=args.student,
        device=args.device, data_dir=args.data_dir, progress=not args.no_progress)


def _onnx_victim(spec: str, shape: tuple[int, int, int] | None) -> Any:
    """An ONNX victim attacked in-process (no card: --query-data names the attacker's images)."""
    from encoderguard.api.local_api import LocalAPI
    from encoderguard.attacks.steal_run import Victim
    from encoderguard.models.model_spec import load_any

    encoder = load_any(spec, input_shape=shape)
    return Victim(LocalAPI(encoder, key="attacker"), f"onnx:{encoder.sha256}", encoder, None,  # type: ignore[arg-type]
                  in_process=True)


def render(result: dict[str, Any]) -> str:
    lines = [f"stole a copy into {result['out']} with {result['queries_paid']} paid queries "
             f"({result['queries_new']} new, {result['queries_cached']} from the cache), {result['loss']} loss, "
             f"{result['epochs']} epochs, {result['seconds']:.0f} s, est. ${result['estimated_cost_usd']:.2f}"]
    if result.get("linear_acc") is not None:
        lines.append(f"linear probe: copy {result['linear_acc']:.4f}  victim {result['victim_linear_acc']:.4f}  "
                     f"random init {result['random_init_linear_acc']:.4f}  gain recovery "
                     f"{result['gain_recovery']:.3f}")
        lines.append(f"fidelity (mean cosine to the victim on probe-test): {result['fidelity_cosine']:.4f}")
    if result.get("ledger_queries") is not None:
        lines.append(f"server ledger: {result['ledger_queries']} queries charged to this key")
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)
