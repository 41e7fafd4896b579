"""What an active defence costs an honest user, and what it leaves a thief: the defence evaluation.

For every defence setting (a chain of postprocessors, written ``spec+spec``, e.g. ``coverage+orthogonal``) the
victim is served with that chain, over HTTP by default (the real server in a background thread, one API key per
user, per-key defence state in the server's ledger) or in process, and three kinds of client use it:

- **Honest users** (:class:`HonestPattern`): each has a downstream task over a few classes. User ``u`` draws
  ``classes`` distinct classes (seeded by ``(seed, u)``), sends ``train_per_class`` labelled ``probe-train``
  images per class, then ``test_per_class`` ``probe-test`` images per class, in requests of ``batch`` images,
  under its own key; it fits the project's linear probe (standardised logistic regression) on the defended
  train answers and scores it on the defended test answers. **Honest utility** is the mean accuracy over the
  users. A **broad user** (all classes, same per-class counts) is reported beside it: a legitimate user whose
  task spans the whole space, the case a coverage-based defence cannot tell from a thief.
- **The attacker**: :class:`~encoderguard.attacks.StealingAttack` with ``budget`` queries of the ``query`` split
  (random order) under its own key, then the copy's **gain recovery** (linear probe on ``probe-train`` ->
  ``probe-test``, ``(copy - random init) / (victim - random init)``) and **fidelity** (mean cosine between the
  copy and the clean victim as that key sees it, i.e. with the key's secret rotation if the chain has one,
  on ``probe-test``).
- **The attacker over several keys** (``attacker_keys > 1``, or ``attack`` other than ``plain``): the same total
  budget split equally over ``attacker_keys`` keys by region (:mod:`encoderguard.attacks.sybil_split`):
  ``plain`` (the stealing attack routed over the keys, answers used as they come), ``average`` (jittered repeats
  averaged per input) or ``procrustes`` (shared anchors on every key, answers aligned by orthogonal Procrustes).
  Optionally, **mixed traffic** after the attacker (``mixed``: honest users of 1..10 classes on fresh keys), to see
  whether the attacker's presence spills over onto honest keys.
- **Adaptive attackers** (optional, same budget, each under its own key or keys): ``filter``, ``average``,
  ``average-jitter``, ``sybil`` and ``sybil-naive`` from :mod:`encoderguard.attacks.adaptive`; each copy is trained
  like the attacker's and scored the same way.

The results (:class:`~encoderguard.scenarios.defence_results.DefenceEvaluationResult`, one
:class:`~encoderguard.scenarios.defence_results.DefenceRow` per setting) render as CSV, markdown and a plot.

Reference: Dziedzic et al., "On the Difficulty of Defending Self-Supervised Learning against Model Extraction",
ICML 2022 (answer perturbation); Dubinski et al., "Bucks for Buckets (B4B)", NeurIPS 2023 (coverage, sybils).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from encoderguard.api.delegating_api import DelegatingAPI
from encoderguard.api.local_api import LocalAPI
from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.attacks.adaptive import (
    ADAPTIVE_ATTACKS,
    AdaptiveData,
    ask,
    average_attack,
    filter_attack,
    sybil_attack,
)
from encoderguard.attacks.copy_evaluation import gain_recovery, mean_cosine
from encoderguard.attacks.copy_training import train_copy
from encoderguard.attacks.losses import create_loss
from encoderguard.attacks.queries import query_order
from encoderguard.attacks.stealing import DEFAULT_ARCH_KWARGS, StealingAttack
from encoderguard.attacks.sybil_split import (
    SPLIT_ATTACKS,
    SybilSplitAPI,
    balanced_split,
    procrustes_split_attack,
    split_average_attack,
)
from encoderguard.attacks.thieves import thief_settings
from encoderguard.data.data_set import images_only
from encoderguard.data.splits import owner_spec, owner_split
from encoderguard.defences.base import Postprocessor, prepare_chain
from encoderguard.defences.coverage_noise import CoverageNoise
from encoderguard.defences.registry import UNDEFENDED, check_settings, parse_chain
from encoderguard.defences.sybil_guard import SybilGuard
from encoderguard.models import load_checkpoint
from encoderguard.models.checkpoint_probe import probe_sets
from encoderguard.models.encoder import Encoder
from encoderguard.models.probe import encode, probe_features
from encoderguard.models.random_init import random_init_like
from encoderguard.models.registry import create_encoder
from encoderguard.scenarios.defence_results import AttackOutcome, DefenceEvaluationResult, DefenceRow, HonestPattern

logger = logging.getLogger(__name__)

TRANSPORTS = ("http", "local")
_ROW_FORMAT = 1  # bump when a change makes cached rows incomparable


class DefenceEvaluation:
    """Run the trade-off experiment on one victim (see the module docstring).

    Args:
        victim: victim checkpoint directory (its card names the dataset and split seed).
        budget: the attacker's queries (per attacker, all its keys together).
        loss: stealing loss (registry name).
        loss_kwargs: its settings.
        epochs: training epochs of every copy.
        transport: ``"http"`` (default: the real server, ledger and client) or ``"local"`` (in process).
        honest: the honest users' query pattern.
        broad_user: also measure an honest user of all classes.
        adaptive: adaptive attacks run on every setting (names from :data:`ADAPTIVE_ATTACKS`).
        repeats: repeats per input of the averaging attacks.
        sybils: keys of the sybil attacks.
        anchors: inputs every sybil key asks, to align the keys' answers.
        seed: seeds the users' class draws, the attackers' query order and the copies (the defences' secrets are
            their own ``seed`` parameters).
        copy_arch_kwargs: the copies' ConvNet settings (default: the stealing attack's, width 32, depth 4).
        out_dir: where finished rows are kept (``rows/*.json``), so that a rerun with the same settings reuses
            them; ``None`` keeps nothing.
        data_dir: dataset folder (default: the registry's).
        progress: progress on stderr.
        thief: a named recipe of :mod:`encoderguard.attacks.thieves` (e.g. ``"strong"``) for the plain attacker:
            its loss replaces ``loss`` and its settings (mixup, longer training, query selection) apply; the
            adaptive attackers train with its loss.
        attacker_keys: keys the attacker splits its ``budget`` over, equally (``1``: the single-key attacker).
        attack: how the attacker uses them: ``"plain"``, ``"average"`` or ``"procrustes"`` (``attacker_keys >= 2``;
            ``min(anchors, budget // (2 x keys))`` anchors per key).
        mixed: class counts of honest users measured after the attacker (e.g. ``(3, 3, 5, 10)``).

    Raises:
        ValueError: for a bad setting or an unknown adaptive attack (listing the choices).
    """

    def __init__(self, victim: str | Path, *, budget: int = 2000, loss: str = "mse",
                 loss_kwargs: dict[str, Any] | None = None, epochs: int = 30, transport: str = "http",
                 honest: HonestPattern | None = None, broad_user: bool = True, adaptive: Sequence[str] = (),
                 repeats: int = 4, sybils: int = 4, anchors: int = 128, seed: int = 0,
                 copy_arch_kwargs: dict[str, Any] | None = None, out_dir: str | Path | None = None,
                 data_dir: str | None = None, progress: bool = True, thief: str | None = None,
                 attacker_keys: int = 1, attack: str = "plain", mixed: Sequence[int] = ()) -> None:
        for name, value, low in (("budget", budget, 2), ("epochs", epochs, 1), ("repeats", repeats, 2),
                                 ("sybils", sybils, 2), ("anchors", anchors, 0), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(attacker_keys, bool) or not isinstance(attacker_keys, int) or not 1 <= attacker_keys <= budget:
            raise ValueError(f"attacker keys must be an integer in 1..{budget} (the budget), got {attacker_keys!r}")
        if attack not in SPLIT_ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; choose one of: {', '.join(SPLIT_ATTACKS)}")
        if attack == "procrustes" and attacker_keys < 2:
            raise ValueError("the procrustes attack aligns several keys' answers: it needs --sybils >= 2")
        if attack == "average" and budget // repeats < attacker_keys:
            raise ValueError(f"budget {budget} / repeats {repeats} leaves fewer distinct inputs than keys "
                             f"({attacker_keys})")
        for classes in mixed:
            if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
                raise ValueError(f"mixed users' class counts must be integers >= 1, got {classes!r}")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        unknown = [a for a in adaptive if a not in ADAPTIVE_ATTACKS]
        if unknown:
            raise ValueError(f"unknown adaptive attack {unknown[0]!r}; choose from: {', '.join(ADAPTIVE_ATTACKS)}")
        if "sybil" in adaptive and sybils * anchors >= budget:
            raise ValueError(f"sybils x anchors = {sybils * anchors} leaves no budget of {budget} for the sybils' "
                             "own inputs; lower --anchors or --sybils")
        # A named thief (encoderguard.attacks.thieves) brings its own loss and training settings.
        self.thief = thief
        self.thief_settings = thief_settings(thief) if thief is not None else {}
        loss = str(self.thief_settings.pop("loss", loss))
        create_loss(loss, **(loss_kwargs or {}))  # fail now on a bad loss
        self.victim_dir = Path(victim)
        self.budget, self.loss, self.loss_kwargs, self.epochs = budget, loss, dict(loss_kwargs or {}), epochs
        self.transport, self.honest, self.broad_user = transport, honest or HonestPattern(), broad_user
        self.adaptive, self.repeats, self.sybils, self.anchors = tuple(adaptive), repeats, sybils, anchors
        self.seed, self.data_dir, self.progress = seed, data_dir, progress
        self.copy_arch_kwargs = dict(DEFAULT_ARCH_KWARGS if copy_arch_kwargs is None else copy_arch_kwargs)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.attacker_keys, self.attack, self.mixed = attacker_keys, attack, tuple(mixed)

        checkpoint = load_checkpoint(self.victim_dir)
        self.encoder, self.card = checkpoint.encoder.eval(), checkpoint.card
        self.query_data = images_only(owner_split(self.card, "query", data_dir=data_dir), purpose="defend-eval")
        spec = owner_spec(self.card)
        self.dataset, self.split_seed = spec.dataset, spec.split_seed
        self.dim = int(self.encoder.embed_dim)
        c, h, w = (int(v) for v in self.encoder.input_shape)
        self.input_shape = (c, h, w)
        probe_train, probe_test = probe_sets(self.dataset, split_seed=self.split_seed, data_dir=data_dir)
        self.probe_train = images_only(probe_train, purpose="defend-eval")
        self.probe_test = images_only(probe_test, purpose="defend-eval")
        self.victim_train = encode(self.encoder, self.probe_train)
        self.victim_test = encode(self.encoder, self.probe_test)
        self.victim_linear_acc = probe_features(self.victim_train, self.probe_train.labels, self.victim_test,
                                                self.probe_test.labels).linear_acc
        twin = random_init_like(self._new_copy(), seed=0)
        self.random_init_linear_acc = probe_features(encode(twin, self.probe_train), self.probe_train.labels,
                                                     encode(twin, self.probe_test), self.probe_test.labels).linear_acc
        logger.info(f"defend-eval: victim {self.victim_dir} linear probe {self.victim_linear_acc:.4f}, random init "
            f"{self.random_init_linear_acc:.4f}")

    # -- public ------------------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The experiment's settings (JSON), recorded in every row's cache fingerprint and in the result."""
        return {"victim": str(self.victim_dir), "victim_weights_sha256": self.card.weights_sha256,
                "dataset": self.dataset, "split_seed": self.split_seed, "budget": self.budget, "loss": self.loss,
                "loss_kwargs": self.loss_kwargs, "epochs": self.epochs, "transport": self.transport,
                "honest": self.honest.to_dict(), "broad_user": self.broad_user, "repeats": self.repeats,
                "sybils": self.sybils, "anchors": self.anchors, "seed": self.seed,
                "copy_arch_kwargs": self.copy_arch_kwargs,
                **({"thief": self.thief, "thief_settings": self.thief_settings} if self.thief else {}),
                **({"attacker_keys": self.attacker_keys, "attack": self.attack} if self._split else {}),
                **({"mixed": list(self.mixed)} if self.mixed else {})}

    @property
    def _split(self) -> bool:
        """Whether the attacker is not the single-key plain one."""
        return self.attacker_keys > 1 or self.attack != "plain"

    def validate(self, settings: Sequence[str]) -> None:
        """Build every setting's chain and check it against the victim, so a typo fails before any work.

        Raises:
            ValueError: naming the bad spec.
        """
        check_settings(settings, dim=self.dim)

    def run(self, settings: Sequence[str], *,
            adaptive: dict[str, Sequence[str]] | None = None) -> DefenceEvaluationResult:
        """Evaluate the undefended API and every setting.

        Args:
            settings: defence settings, each a chain ``spec+spec`` (see :func:`~encoderguard.defences.split_chain`).
            adaptive: per-setting adaptive attacks replacing the evaluation's default list (key ``"none"`` for
                the undefended API).

        Returns:
            The result (rows in the order of ``settings``).
        """
        self.validate(settings)
        adaptive = adaptive or {}
        undefended = self.evaluate(UNDEFENDED, adaptive=adaptive.get(UNDEFENDED))
        rows = [self.evaluate(s, adaptive=adaptive.get(s)) for s in settings if s != UNDEFENDED]
        return DefenceEvaluationResult(rows=rows, undefended=undefended, victim_linear_acc=self.victim_linear_acc,
                                random_init_linear_acc=self.random_init_linear_acc, settings=self.settings())

    def evaluate(self, setting: str, *, adaptive: Sequence[str] | None = None) -> DefenceRow:
        """Evaluate one setting (``"none"``: undefended); reuses a cached row with identical settings."""
        attacks = tuple(self.adaptive if adaptive is None else adaptive)
        fingerprint = {"format": _ROW_FORMAT, "setting": setting, "adaptive": list(attacks), **self.settings()}
        fingerprint.pop("victim")
        cached = self._cached_row(setting, fingerprint)
        if cached is not None:
            logger.info(f"defend-eval: {setting}: reusing {self._row_path(setting)}")
            return cached
        started = time.perf_counter()
        logger.info(f"defend-eval: {setting}: serving over {self.transport}")
        with self._serve(setting) as (connect, chain):
            utilities, honest_keys = self._honest_users(connect)
            broad, broad_key = self._broad_user(connect) if self.broad_user else (None, None)
            steal, attacker_keys = self._split_steal(connect, chain) if self._split else self._steal(connect, chain)
            mixed = self._mixed_users(connect) if self.mixed else []
            outcomes = [self._adaptive(name, connect, chain) for name in attacks]
            details: dict[str, Any] = {"honest_queries_per_user": self.honest.queries}
            if mixed:
                details["mixed_after_attack"] = mixed
            if self._split:
                details["attack_details"] = steal.details
            guard = next((d for d in chain if isinstance(d, SybilGuard)), None)
            if guard is not None:
                details["guard"] = _guard_summary(guard, self.dim, honest_keys, attacker_keys, broad_key)
            coverage = next((d for d in chain if isinstance(d, CoverageNoise)), None)
            if coverage is not None:
                details["honest_coverage"] = [round(coverage.coverage(k, self.dim), 4) for k in honest_keys]
                if broad_key is not None:
                    details["broad_user_coverage"] = round(coverage.coverage(broad_key, self.dim), 4)
                details["attacker_coverage"] = steal.details.get("coverage")
        details["seconds"] = round(time.perf_counter() - started, 1)
        row = DefenceRow(defence=setting, honest_utility=float(np.mean(utilities)),
                         attacker_gain_recovery=steal.gain_recovery, attacker_fidelity=steal.fidelity,
                         attacker_linear_acc=steal.linear_acc, honest_utilities=utilities,
                         broad_user_utility=broad, adaptive=outcomes, details=details,
                         sybils=self.attacker_keys, attack=self.attack)
        logger.info(f"defend-eval: {setting}: honest {row.honest_utility:.4f}, broad {broad}, gain recovery "
            f"{row.attacker_gain_recovery:.3f}, fidelity {row.attacker_fidelity:.3f}"
            + "".join(f"; {a.attack} {a.gain_recovery:.3f}" for a in outcomes))
        self._store_row(setting, fingerprint, row)
        return row

    # -- serving -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _serve(self, setting: str) -> Iterator[tuple[Callable[[str], tuple[EmbeddingAPI, str]],
                                                      list[Postprocessor]]]:
        """Serve the victim with a fresh chain (fresh state); yield ``connect(name) -> (api, key id)``."""
        chain = parse_chain(setting)
        with tempfile.TemporaryDirectory(prefix="eg-defend-") as tmp:
            if self.transport == "local":
                prepare_chain(chain, dim=self.dim)
                api = LocalAPI(self.encoder, defences=chain)
                yield (lambda name: (DelegatingAPI(api, key=name), name)), chain
                return
            from encoderguard.api.client import HTTPEmbeddingAPI
            from encoderguard.api.keys import KeyStore
            from encoderguard.api.server import background_server, create_app

            keys = KeyStore(Path(tmp) / "keys.json")
            keys.add(name="owner")  # the server refuses to start without a keys file
            app = create_app(self.encoder, keys_path=keys.path, ledger_path=Path(tmp) / "ledger.sqlite",
                             defences=chain)
            clients: list[HTTPEmbeddingAPI] = []
            with background_server(app) as url:
                def connect(name: str) -> tuple[EmbeddingAPI, str]:
                    record, key = keys.add(name=name)
                    client = HTTPEmbeddingAPI(url, key)
                    clients.append(client)
                    return client, record.key_id

                try:
                    yield connect, chain
                finally:
                    for client in clients:
                        client.close()

    # -- clients -----------------------------------------------------------------------------------------------
    def _user_task(self, classes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        def draw(labels: torch.Tensor, per_class: int) -> np.ndarray:
            picks = [rng.choice(np.flatnonzero(labels.numpy() == c), per_class, replace=False) for c in classes]
            return rng.permutation(np.concatenate(picks))

        return draw(self.probe_train.labels, self.honest.train_per_class), draw(self.probe_test.labels,
                                                                                  self.honest.test_per_class)

    def _use(self, api: EmbeddingAPI, train_idx: np.ndarray, test_idx: np.ndarray) -> float:
        train = ask(api, self.probe_train.images[train_idx], self.honest.batch)
        test = ask(api, self.probe_test.images[test_idx], self.honest.batch)
        return probe_features(train, self.probe_train.labels[train_idx], test,
                              self.probe_test.labels[test_idx]).linear_acc

    def _honest_users(self, connect: Callable[[str], tuple[EmbeddingAPI, str]]) -> tuple[list[float], list[str]]:
        all_classes = np.unique(self.probe_train.labels.numpy())
        if self.honest.classes > len(all_classes):
            raise ValueError(f"honest classes={self.honest.classes} but {self.dataset} has {len(all_classes)}")
        utilities, keys = [], []
        for user in range(self.honest.users):
            rng = np.random.default_rng([self.seed, user])
            classes = np.sort(rng.choice(all_classes, self.honest.classes, replace=False))
            api, key_id = connect(f"honest-{user}")
            utilities.append(self._use(api, *self._user_task(classes, rng)))
            keys.append(key_id)
        return utilities, keys

    def _broad_user(self, connect: Callable[[str], tuple[EmbeddingAPI, str]]) -> tuple[float, str]:
        rng = np.random.default_rng([self.seed, 10_000])
        api, key_id = connect("broad-user")
        return self._use(api, *self._user_task(np.unique(self.probe_train.labels.numpy()), rng)), key_id

    # -- attackers ---------------------------------------------------------------------------------------------
    def _new_copy(self) -> Encoder:
        torch.manual_seed(self.seed)
        return create_encoder("convnet", input_shape=self.input_shape, embed_dim=self.dim, **self.copy_arch_kwargs)

    def _reference(self, chain: Sequence[Postprocessor], key_id: str) -> torch.Tensor:
        """The clean victim on probe-test as ``key_id`` sees it: only the chain's key-wise rotations applied."""
        reference = self.victim_test
        for defence in chain:
            if getattr(defence, "name", "") == "orthogonal":
                reference = defence(reference, inputs=torch.empty(0), key=key_id)
            elif isinstance(defence, SybilGuard):
                reference = defence.rotate_answers(reference, key=key_id)
        return reference

    def _score(self, attack: str, copy: nn.Module, projector: nn.Module | None, reference: torch.Tensor,
               queries: int, details: dict[str, Any]) -> AttackOutcome:
        train, test = encode(copy, self.probe_train), encode(copy, self.probe_test)
        acc = probe_features(train, self.probe_train.labels, test, self.probe_test.labels).linear_acc
        answers = test
        if projector is not None:
            with torch.no_grad():
                answers = projector.eval()(test)
        return AttackOutcome(attack=attack, queries=queries, linear_acc=acc,
                             gain_recovery=gain_recovery(acc, self.victim_linear_acc, self.random_init_linear_acc),
                             fidelity=mean_cosine(answers, reference), details=details)

    def _coverage_of(self, chain: Sequence[Postprocessor], key_id: str) -> float | None:
        coverage = next((d for d in chain if isinstance(d, CoverageNoise)), None)
        return None if coverage is None else round(coverage.coverage(key_id, self.dim), 4)

    def _steal(self, connect: Callable[[str], tuple[EmbeddingAPI, str]],
               chain: list[Postprocessor]) -> tuple[AttackOutcome, list[str]]:
        api, key_id = connect("attacker")
        with tempfile.TemporaryDirectory(prefix="eg-steal-") as cache:
            attack = StealingAttack(api, loss=self.loss, loss_kwargs=self.loss_kwargs, budget=self.budget,
                                    cache_dir=cache, epochs=self.epochs, seed=self.seed, progress=self.progress,
                                    arch_kwargs=self.copy_arch_kwargs, **self.thief_settings)
            result = attack.extract(self.query_data)
        details = {"coverage": self._coverage_of(chain, key_id), "train_seconds": round(result.train_seconds, 1)}
        return self._score("steal", result.encoder, result.projector, self._reference(chain, key_id), self.budget,
                           details), [key_id]

    def _split_steal(self, connect: Callable[[str], tuple[EmbeddingAPI, str]],
                     chain: list[Postprocessor]) -> tuple[AttackOutcome, list[str]]:
        """The attacker over ``attacker_keys`` keys with ``attack`` (see the module docstring)."""
        n = self.attacker_keys
        connected = [connect("attacker" if n == 1 else f"attacker-{i}") for i in range(n)]
        apis, keys = [api for api, _ in connected], [key_id for _, key_id in connected]
        pool: torch.Tensor | None = getattr(self.query_data, "images", None)
        if pool is None:
            raise ValueError("the attacker over several keys needs image query data")
        logger.info(f"defend-eval: attacker over {n} keys, attack {self.attack}")
        if self.attack == "plain":
            planned = pool[query_order(len(pool), seed=self.seed)[: self.budget]]
            router = SybilSplitAPI(apis, planned, balanced_split(planned, n, seed=self.seed))
            with tempfile.TemporaryDirectory(prefix="eg-steal-") as cache:
                attack = StealingAttack(router, loss=self.loss, loss_kwargs=self.loss_kwargs, budget=self.budget,
                                        cache_dir=cache, epochs=self.epochs, seed=self.seed, progress=self.progress,
                                        arch_kwargs=self.copy_arch_kwargs, **self.thief_settings)
                result = attack.extract(self.query_data)
            if router.unassigned:
                logger.warning(f"defend-eval: {router.unassigned} queries had no planned key (routed by hash)")
            details: dict[str, Any] = {"keys": n, "per_key": self.budget // n, "unassigned": router.unassigned,
                                       "train_seconds": round(result.train_seconds, 1)}
            outcome = self._score("steal", result.encoder, result.projector, self._reference(chain, keys[0]),
                                  self.budget, details)
            return outcome, keys
        if self.attack == "average":
            data = split_average_attack(apis, pool, budget=self.budget, repeats=self.repeats, seed=self.seed)
        else:
            anchors = max(1, min(self.anchors, self.budget // (2 * n)))
            data = procrustes_split_attack(apis, pool, budget=self.budget, anchors=anchors, seed=self.seed)
        outcome = self._score_data("steal", data, dict(data.details), self._reference(chain, keys[0]))
        return outcome, keys

    def _mixed_users(self, connect: Callable[[str], tuple[EmbeddingAPI, str]]) -> list[dict[str, Any]]:
        """Honest users of ``mixed`` class counts on fresh keys, after the attacker."""
        all_classes = np.unique(self.probe_train.labels.numpy())
        out = []
        for i, count in enumerate(self.mixed):
            rng = np.random.default_rng([self.seed, 20_000 + i])
            classes = np.sort(rng.choice(all_classes, min(count, len(all_classes)), replace=False))
            api, _ = connect(f"mixed-{i}")
            out.append({"classes": int(len(classes)), "utility": self._use(api, *self._user_task(classes, rng))})
        return out

    def _train(self, images: torch.Tensor, targets: torch.Tensor) -> Encoder:
        copy = self._new_copy()
        train_copy(copy, images, targets, loss=create_loss(self.loss, **self.loss_kwargs), epochs=self.epochs,
                   seed=self.seed, progress=self.progress)
        return copy

    def _adaptive(self, name: str, connect: Callable[[str], tuple[EmbeddingAPI, str]],
                  chain: list[Postprocessor]) -> AttackOutcome:
        """Run one adaptive attack of :mod:`encoderguard.attacks.adaptive` and score its copy."""
        logger.info(f"defend-eval: adaptive attack {name}")
        pool = self.query_data.images
        if name.startswith("sybil"):
            connected = [connect(f"{name}-{i}") for i in range(self.sybils)]
            keys = [key_id for _, key_id in connected]
            data = sybil_attack([api for api, _ in connected], pool, budget=self.budget,
                                anchors=self.anchors if name == "sybil" else 0, seed=self.seed)
            coverages = [self._coverage_of(chain, k) for k in keys]
            details = {**data.details, "max_coverage": max((c for c in coverages if c is not None), default=None),
                       "coverage": coverages}
            return self._score_data(name, data, details, self._reference(chain, keys[0]))
        api, key_id = connect(name)
        if name == "filter":
            data = filter_attack(api, pool, budget=self.budget, seed=self.seed)
        else:
            data = average_attack(api, pool, budget=self.budget, repeats=self.repeats,
                                  jitter=name == "average-jitter", seed=self.seed)
        details = {**data.details, "coverage": self._coverage_of(chain, key_id)}
        return self._score_data(name, data, details, self._reference(chain, key_id))

    def _score_data(self, attack: str, data: AdaptiveData, details: dict[str, Any],
                    reference: torch.Tensor) -> AttackOutcome:
        copy = self._train(data.images, data.targets)
        return self._score(attack, copy, None, reference, data.queries, details)

    # -- row cache ---------------------------------------------------------------------------------------------
    def _row_path(self, setting: str) -> Path | None:
        if self.out_dir is None:
            return None
        if self._split:
            setting = f"{setting}@{self.attacker_keys}x{self.attack}"
        slug = re.sub(r"[^A-Za-z0-9_.=@-]+", "_", setting)[:80]
        digest = hashlib.sha256(setting.encode()).hexdigest()[:8]
        return self.out_dir / "rows" / f"{slug}-{digest}.json"

    def _cached_row(self, setting: str, fingerprint: dict[str, Any]) -> DefenceRow | None:
        path = self._row_path(setting)
        if path is None or not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            if raw.get("fingerprint") != fingerprint:
                return None
            return DefenceRow.from_dict(raw["row"])
        except (ValueError, KeyError, TypeError):
            return None

    def _store_row(self, setting: str, fingerprint: dict[str, Any], row: DefenceRow) -> None:
        path = self._row_path(setting)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"fingerprint": fingerprint, "row": row.to_dict()}, indent=1, default=_json))


def _guard_summary(guard: SybilGuard, dim: int, honest: Sequence[str], attacker: Sequence[str],
                   broad: str | None) -> dict[str, Any]:
    """The guard's view of the evaluation's keys: risks, groups (for the row's details)."""
    state = guard.dashboard_state(dim=dim)
    keys = state["keys"]

    def risks(ids: Sequence[str]) -> list[float | None]:
        return [keys[k]["risk"] if k in keys else None for k in ids]

    attacker_groups = {keys[k]["group"] for k in attacker if k in keys and keys[k]["group"]}
    honest_linked = sum(1 for k in honest if k in keys and keys[k]["group"])
    return {"honest_risk": risks(honest), "attacker_risk": risks(attacker),
            "broad_user_risk": risks([broad])[0] if broad else None,
            "attacker_groups": len(attacker_groups),
            "attacker_keys_linked": sum(1 for k in attacker if k in keys and keys[k]["group"]),
            "honest_keys_linked": honest_linked, "groups": len(state["groups"])}


def _json(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
