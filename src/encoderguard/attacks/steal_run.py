"""Steal into a directory: what ``encoderguard steal`` runs, callable from Python.

:func:`resolve_victim` turns "a checkpoint" or "a URL and a key" into an :class:`~encoderguard.api.EmbeddingAPI`
(plus, when the owner has it, the victim's encoder for an evaluation that costs no queries);
:func:`steal_to_dir` pays for the answers, trains the copy, evaluates it and saves it as a checkpoint.

Spending is bounded by ``budget``: the evaluation queries the API only when asked (``eval_queries > 0``), and
then says before it spends how many queries it will pay beyond the budget.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.models.card import ModelCard

logger = logging.getLogger(__name__)

DEFAULT_PRICE_PER_1K = 0.10
#: Dollars per million tokens assumed for a text API (OpenAI's text-embedding-3-small list price in 2025).
DEFAULT_PRICE_PER_MILLION_TOKENS = 0.02
EVALUATION_KEYS = ("linear_acc", "knn_acc", "victim_linear_acc", "victim_knn_acc", "random_init_linear_acc",
                   "random_init_knn_acc", "gain_recovery", "knn_gain_recovery", "fidelity_cosine", "knn_agreement",
                   "retrieval_agreement")
#: ``--student`` names of the text copies, and the architecture each one is.
STUDENTS = {"transformer": "text-transformer", "ngram": "text-ngram"}
#: The text student when none is named: the one that learned MiniLM on CPU budgets (benchmarks/results_steal.md
#: section 7: gain recovery 1.00 at 2,000 sentences, where the small transformer reached 0.20).
DEFAULT_STUDENT = "ngram"
#: Training settings of a text copy where the caller gives none: chosen on seed 1 of the text benchmark (learning
#: rate from 2e-3..2e-1; the steps the CPU time allows), never on the reported seed. Images keep the image defaults.
TEXT_TRAINING = {"epochs": 1, "batch_size": 256, "lr": 1e-2, "min_steps": 2000}


@dataclass(frozen=True)
class Victim:
    """The model under attack, as the thief reaches it.

    Attributes:
        api: how the attack queries it (paid answers).
        victim_id: identifies it in cache fingerprints (``checkpoint:<sha256>`` or ``api:<url>``).
        encoder: the victim's encoder when the owner has it (an evaluation that costs no queries), else ``None``.
        card: the victim's model card when known (its dataset and split seed), else ``None``.
        in_process: ``True`` when ``api`` wraps a local checkpoint rather than a remote API.
        key_id: the public id of the API key (``eg_<key_id>_<secret>``), to find its rows in the server's ledger.
    """

    api: EmbeddingAPI
    victim_id: str
    encoder: nn.Module | None = None
    card: ModelCard | None = None
    in_process: bool = False
    key_id: str | None = None

    @property
    def card_data(self) -> dict[str, Any]:
        return dict(self.card.data or {}) if self.card is not None else {}


def resolve_victim(*, checkpoint: str | Path | None = None, url: str | None = None, key: str | None = None,
                   eval_checkpoint: str | Path | None = None, api_format: str = "encoderguard",
                   input_shape: tuple[int, int, int] | None = None) -> Victim:
    """The victim from exactly one of ``checkpoint`` (attacked in-process) or ``url`` + ``key``.

    Args:
        checkpoint: the victim's checkpoint directory, or a model spec that
            :func:`~encoderguard.models.model_spec.load_any` reads (``onnx:PATH``, ``st:NAME_OR_PATH``).
        url: the victim's embedding API.
        key: the API key for ``url``.
        eval_checkpoint: with ``url``, the owner's copy of the victim for an owner-side evaluation.
        api_format: the wire format of ``url`` (``encoderguard``, ``openai``, ``kserve``).
        input_shape: ``(C, H, W)`` of an endpoint that does not describe its model (``openai``).

    Raises:
        ValueError: neither or both of ``checkpoint`` and ``url``, or ``url`` without ``key``.
    """
    from encoderguard.models.checkpoint import load_checkpoint

    if (checkpoint is None) == (url is None):
        raise ValueError("give exactly one victim: a checkpoint directory or an API URL")
    if checkpoint is not None:
        from encoderguard.api.local_api import LocalAPI

        if str(checkpoint).startswith("st:"):
            from encoderguard.models.model_spec import load_any

            encoder = load_any(str(checkpoint))
            return Victim(LocalAPI(encoder, key="attacker"), f"model:{checkpoint}", encoder, None, in_process=True)
        ckpt = load_checkpoint(checkpoint)
        return Victim(LocalAPI(ckpt.encoder, key="attacker"), f"checkpoint:{ckpt.card.weights_sha256}",
                      ckpt.encoder, ckpt.card, in_process=True)
    if not key:
        raise ValueError("an API victim needs an API key (--key)")
    from encoderguard.api.client import HTTPEmbeddingAPI

    parts = key.split("_")
    key_id = parts[1] if len(parts) >= 3 and parts[0] == "eg" else None  # eg_<key_id>_<secret>
    api = HTTPEmbeddingAPI(str(url), key, api_format=api_format, input_shape=input_shape)
    if eval_checkpoint is None:
        return Victim(api, f"api:{api.url}", key_id=key_id)
    if str(eval_checkpoint).startswith("st:"):  # the owner's pretrained text model (no card)
        from encoderguard.models.model_spec import load_any

        return Victim(api, f"api:{api.url}", load_any(str(eval_checkpoint)), None, key_id=key_id)
    owner = load_checkpoint(eval_checkpoint)
    return Victim(api, f"api:{api.url}", owner.encoder, owner.card, key_id=key_id)


def steal_to_dir(out: str | Path, victim: Victim, *, budget: int, loss: str = "mse",
                 loss_kwargs: dict[str, Any] | None = None, query_data: str | None = None, mode: str = "clean",
                 views: int = 1, order: str = "random", query_batch: int = 256, epochs: int | None = None,
                 batch_size: int | None = None, lr: float | None = None, augmentation: str | None = None,
                 arch: str | None = None,
                 arch_kwargs: dict[str, Any] | None = None, embed_dim: int | None = None, seed: int = 0,
                 split_seed: int | None = None, cache_dir: str | Path | None = None, eval_queries: int = 0,
                 eval_size: int | None = None, probe_data: str | None = None, ledger: str | Path | None = None,
                 price_per_1k: float = DEFAULT_PRICE_PER_1K,
                 price_per_million_tokens: float = DEFAULT_PRICE_PER_MILLION_TOKENS, student: str | None = None,
                 device: str = "cpu", data_dir: str | None = None,
                 progress: bool = True, attack_kwargs: dict[str, Any] | None = None, selection: str = "random",
                 rounds: int = 4, mixup: float = 0.0, thief: str | None = None) -> dict[str, Any]:
    """Pay for up to ``budget`` answers, train a copy on them, evaluate it and save it as a checkpoint in ``out``.

    Args:
        out: output directory of the copy (created; refused if it holds a model that is not a stolen copy).
        victim: from :func:`resolve_victim`.
        budget: answers to pay for (>= 1); the attack never pays more.
        loss, loss_kwargs, mode, views, order, query_batch, epochs, batch_size, lr, augmentation, arch,
            embed_dim, seed, device: as :class:`~encoderguard.attacks.StealingAttack`.
        epochs, batch_size, lr: the copy's training (default for images 60 epochs of batches of 128 at 2e-3; for
            text :data:`TEXT_TRAINING`, including its ``min_steps`` unless ``attack_kwargs`` sets them).
        arch: the copy's architecture (default ``convnet`` for images, the ``student``'s for text).
        arch_kwargs: the copy's architecture settings (default for convnet: width 32, depth 4, avg pooling).
        student: a text copy's kind, ``ngram`` (default, :data:`DEFAULT_STUDENT`) or ``transformer`` (see
            :data:`STUDENTS`).
        augmentation: the copy's training views (default ``weak`` for images; text has none).
        query_data: the attacker's data, ``dataset[:split]`` (default: the victim card's dataset, query split).
        split_seed: seed of the data split (default: the victim card's, else 0).
        cache_dir: query cache directory (default ``out/query_cache``).
        eval_queries: with an API victim and no owner-side encoder: probe images per probe set to buy for the
            evaluation (``2 * eval_queries`` queries beyond ``budget``, announced before they are spent;
            default 0: no evaluation, the evaluation keys are ``None``).
        eval_size: probe images per probe set for the evaluation (default: all of probe-train and probe-test;
            smaller is faster and noisier).
        probe_data: the probe's dataset (default: the victim card's, else the query data's).
        ledger: the server's ledger file, to report what it charged this key.
        price_per_1k: assumed price in dollars per 1000 queries (images).
        price_per_million_tokens: assumed price in dollars per million tokens (text: what text APIs bill).
        data_dir: folder holding named datasets.
        progress: progress bars on stderr.
        attack_kwargs: further keyword settings of :class:`~encoderguard.attacks.StealingAttack`.
        selection, rounds, mixup: as :class:`~encoderguard.attacks.StealingAttack` (which inputs to pay for; mixup
            between paid inputs).
        thief: a recipe of :data:`~encoderguard.attacks.thieves.THIEVES`: its settings replace the arguments above,
            and ``attack_kwargs`` override them in turn.

    Under ``torchrun`` every process calls this function: rank 0 pays, the ranks train the copy together
    (:func:`~encoderguard.attacks.stealing.train_copy`), and rank 0 alone evaluates and saves it; the other ranks
    return ``{"rank": r, "world_size": N}``.

    Returns:
        The ``steal --json`` summary (``queries_paid``, the evaluation keys, costs, timings, ``warnings``).

    Raises:
        ValueError: a bad setting; FileExistsError: ``out`` holds another kind of model.
    """
    from encoderguard.attacks.copy_evaluation import evaluate_copy, victim_reference
    from encoderguard.attacks.stealing import StealingAttack
    from encoderguard.data.splits import SplitSpec, load_split, parse_data_spec
    from encoderguard.models.checkpoint import read_card, save_checkpoint
    from encoderguard.models.checkpoint_probe import probe_sets
    from encoderguard.train.distributed import init_from_env

    started = time.perf_counter()
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if not price_per_1k >= 0:
        raise ValueError(f"price per 1k queries must be >= 0, got {price_per_1k}")
    if not price_per_million_tokens >= 0:
        raise ValueError(f"price per million tokens must be >= 0, got {price_per_million_tokens}")
    if student is not None and student not in STUDENTS:
        raise ValueError(f"unknown student {student!r}; choose one of: {', '.join(STUDENTS)}")
    if student is not None and arch is not None:
        raise ValueError("give the copy's architecture once: --student (text) or --arch")
    if eval_queries < 0:
        raise ValueError(f"eval_queries must be >= 0, got {eval_queries}")
    if eval_size is not None and eval_size < 1:
        raise ValueError(f"eval_size must be >= 1, got {eval_size}")
    out = Path(out)
    if (out / "card.json").exists() and read_card(out).training.get("method") != "stealing":
        raise FileExistsError(f"{out} holds a model that is not a stolen copy; choose another output directory")
    warnings: list[str] = []
    api = victim.api
    card_data = victim.card_data
    split_seed = split_seed if split_seed is not None else int(card_data.get("split_seed", 0))
    # The query split depends only on the split seed; without the victim's card its owner's training-set size is
    # unknown and any value that the dataset admits names the same query images.
    train_size = int(card_data.get("train_size", 1))

    # -- the attacker's data -----------------------------------------------------------------------------------
    query_spec = query_data or (f"{card_data['dataset']}:query" if card_data.get("dataset") else None)
    if query_spec is None:
        raise ValueError("the query data is required when the victim's card is not available (give --query-data, "
                         "--victim or --victim-for-eval)")
    dataset, split = parse_data_spec(query_spec, default_split="query")
    query_split = SplitSpec(dataset, split, split_seed, train_size)
    probe_dataset = probe_data or card_data.get("dataset") or dataset
    evaluate_via_api = victim.encoder is None and eval_queries > 0
    if evaluate_via_api:
        # Announce the extra spending before any of it happens.
        logger.warning("the evaluation will pay up to %d queries beyond the budget of %d (%d images of each probe "
                       "set; --eval-queries 0 skips it)", 2 * eval_queries, budget, eval_queries)
    loaded = load_split(query_split, data_dir=data_dir)
    text = loaded.modality == "text"
    if student is not None and not text:
        raise ValueError(f"--student is for text victims; {loaded.name} holds images (use --arch)")
    if text:
        arch = arch or STUDENTS[student or DEFAULT_STUDENT]
        augmentation = augmentation or "none"
        epochs = int(TEXT_TRAINING["epochs"]) if epochs is None else epochs
        batch_size = int(TEXT_TRAINING["batch_size"]) if batch_size is None else batch_size
        lr = float(TEXT_TRAINING["lr"]) if lr is None else lr
        attack_kwargs = {"min_steps": int(TEXT_TRAINING["min_steps"]), **(attack_kwargs or {})}
    epochs = 60 if epochs is None else epochs
    batch_size = 128 if batch_size is None else batch_size
    lr = 2e-3 if lr is None else lr
    arch = arch or "convnet"
    augmentation = augmentation or "weak"

    arch_kwargs = dict(arch_kwargs or ({"width": 32, "depth": 4, "pool": "avg"} if arch == "convnet" else {}))
    settings: dict[str, Any] = dict(
        loss=loss, loss_kwargs=loss_kwargs or {}, budget=budget, cache_dir=cache_dir or out / "query_cache",
        mode=mode, views=views, order=order, query_batch=query_batch, epochs=epochs, batch_size=batch_size, lr=lr,
        augmentation=augmentation, arch=arch, arch_kwargs=arch_kwargs, embed_dim=embed_dim, seed=seed,
        victim_id=victim.victim_id, progress=progress, device=device, selection=selection, rounds=rounds,
        mixup=mixup)
    if thief is not None:
        from encoderguard.attacks.thieves import thief_settings

        settings.update(thief_settings(thief))
    settings.update(attack_kwargs or {})
    place = init_from_env(str(settings["device"]))
    settings["device"] = place.device(str(settings["device"]))
    settings["progress"] = bool(settings["progress"]) and place.is_main
    attack = StealingAttack(api, **settings)
    result = attack.extract(loaded)
    if not place.is_main:
        return {"rank": place.rank, "world_size": place.world_size}
    tokens = _tokens_paid(api, loaded, result) if text else None

    # -- evaluation --------------------------------------------------------------------------------------------
    evaluation: dict[str, Any] = dict.fromkeys(EVALUATION_KEYS)
    eval_started = time.perf_counter()
    if victim.encoder is not None or evaluate_via_api:
        probe_train, probe_test = probe_sets(probe_dataset, split_seed=split_seed, data_dir=data_dir)
        size = eval_queries if victim.encoder is None else eval_size
        if eval_size is not None:
            size = min(size or eval_size, eval_size)
        if size is not None:
            probe_train, probe_test = probe_train.head(size), probe_test.head(size)
        if probe_dataset == dataset and split in ("test", "all"):
            warnings.append(f"query data {query_spec} overlaps probe-test: fidelity is measured on inputs the "
                            "attacker sent")
        reference = victim_reference(victim.encoder if victim.encoder is not None else api, probe_train, probe_test,
                                     cache_dir=out / "eval_cache", victim_id=victim.victim_id,
                                     batch_size=query_batch, progress=progress)
        evaluation = evaluate_copy(result.encoder, reference, probe_train, probe_test,
                                   projector=result.projector, random_seed=seed, progress=progress).to_dict()
        evaluation["probe_dataset"] = probe_dataset
        evaluation["retrieval_agreement"] = evaluation.get("knn_agreement")
        if not math.isfinite(evaluation["gain_recovery"]):
            warnings.append("gain recovery is undefined: the victim's linear probe is no better than its "
                            "architecture at random init on these probe sets")
    else:
        warnings.append("no evaluation: an API victim is evaluated only with --victim-for-eval DIR (owner-side, "
                        "free) or --eval-queries N (pays 2N queries beyond the budget)")
    eval_seconds = time.perf_counter() - eval_started

    # -- accounting --------------------------------------------------------------------------------------------
    ledger_queries = None
    if ledger is not None:
        if victim.in_process:
            warnings.append("--ledger ignored: an in-process victim keeps no ledger")
        else:
            ledger_queries = _ledger_count(ledger, api, victim.key_id)
    summary: dict[str, Any] = {
        "queries_paid": result.queries_paid,
        "queries_new": result.queries_new,
        "queries_cached": result.queries_cached,
        "client_queries": int(api.queries_used),
        "ledger_queries": ledger_queries,
        "eval_queries_paid": int(evaluation.get("eval_queries_paid") or 0),
        **{k: v for k, v in evaluation.items() if k != "eval_queries_paid"},
        "estimated_cost_usd": (tokens["tokens_paid"] / 1e6 * price_per_million_tokens if tokens is not None
                               else result.queries_paid / 1000 * price_per_1k),
        "price_per_1k": None if text else price_per_1k,
        **(tokens if tokens is not None else {}),
        **({"price_per_million_tokens": price_per_million_tokens, "student": arch} if text else {}),
        "loss": attack.loss_name,
        "budget": budget,
        "mode": attack.mode,
        "epochs": len(result.epoch_losses),
        "final_loss": result.epoch_losses[-1],
        "query_data": loaded.name,
        "query_seconds": result.query_seconds,
        "train_seconds": result.train_seconds,
        "eval_seconds": eval_seconds,
        "seconds": 0.0,
        "out": str(out),
        "cache": result.cache_dir,
        "warnings": warnings,
    }
    for warning in warnings:
        logger.warning(warning)

    # -- the copy as a checkpoint ------------------------------------------------------------------------------
    heads = ({"projector": {"hidden_dim": attack.projection_hidden, "out_dim": int(api.dim)}}
             if result.projector is not None else {})
    training = {**result.settings, "victim": victim.victim_id, "epoch_losses": result.epoch_losses,
                "arch_kwargs": arch_kwargs, "queries_paid": result.queries_paid}
    data = {**query_split.to_dict(), "queries": result.queries_paid, "probe_dataset": probe_dataset}
    metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()
               if k not in ("out", "cache", "warnings", "seconds")}
    card = ModelCard(arch=attack.arch_for(loaded), arch_kwargs={}, input_shape=result.encoder.input_shape,
                     embed_dim=result.encoder.embed_dim, data=data, training=training, metrics=metrics, heads=heads)
    save_checkpoint(out, encoder=result.encoder, card=card, projector=result.projector)
    summary["seconds"] = time.perf_counter() - started
    return summary


def parse_loss_kwargs(items: list[str]) -> dict[str, Any]:
    """``["temperature=0.1", "normalize=true"]`` -> ``{"temperature": 0.1, "normalize": True}``.

    Raises:
        ValueError: an item that is not ``NAME=VALUE``.
    """
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


def _tokens_paid(api: EmbeddingAPI, loaded: Any, result: Any) -> dict[str, Any]:
    """Tokens of the texts the budget paid for, and how they were counted.

    In order of preference: the victim's own tokenizer (an in-process victim; exactly what the owner bills), the
    server's ``usage`` reported to this client (when this run paid every query itself), else about four characters
    per token (:func:`~encoderguard.modality.approximate_tokens`) for answers paid by an earlier run.
    """
    from encoderguard.modality import approximate_tokens

    paid_texts = loaded.inputs(result.paid_sources) if getattr(result, "paid_sources", None) is not None else []
    counter = getattr(api, "count_tokens", None)
    if callable(counter) and paid_texts:
        return {"tokens_paid": int(sum(counter(paid_texts))), "tokens_counted_by": "victim_tokenizer"}
    used = getattr(api, "tokens_used", None)
    if isinstance(used, int) and used > 0 and result.queries_new == result.queries_paid:
        return {"tokens_paid": used, "tokens_counted_by": "server_usage"}
    return {"tokens_paid": int(sum(approximate_tokens(t) for t in paid_texts)), "tokens_counted_by": "approximate"}


def _ledger_count(path: str | Path, api: EmbeddingAPI, key_id: str | None = None) -> int:
    """Inputs the server's ledger has charged to this client's key (all runs, evaluation included)."""
    from encoderguard.api.ledger import Ledger

    if not key_id:  # the server says which key it saw (the encoderguard format's GET /v1/model)
        info = getattr(api, "model_info", None)
        key_id = str(info().get("key_id", "")) if callable(info) else ""
    with Ledger(path, create=False) as ledger:
        return int(ledger.summary()["keys"].get(key_id, {}).get("queries", 0))
