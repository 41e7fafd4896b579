"""What an active defence costs an honest user, and what it leaves a thief: the defence trade-off experiment.

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
- **Adaptive attackers** (optional, same budget): ``filter`` pays like the attacker but trains only on the
  answers whose norm is at most 1.5 x the median norm of its first request (noise lengthens answers, so this
  drops the noisiest, e.g. those a coverage defence noised once the key's coverage grew); ``average`` spends
  the budget on ``budget / repeats`` inputs asked ``repeats`` times each and trains on the mean answer;
  ``average-jitter`` does the same with each repeat moved by +-1 grey level per pixel (new input bytes, the
  same picture), which defeats noise seeded by the input; ``sybil`` splits its inputs over ``sybils`` keys by
  k-means on pixels (each key sees a narrower region), asks ``anchors`` shared inputs on every key and maps
  every key's answers into the first key's space by orthogonal Procrustes on the anchors; ``sybil-naive``
  splits the same way without anchors or alignment.

Reference: Dziedzic et al., "On the Difficulty of Defending Self-Supervised Learning against Model Extraction",
ICML 2022 (answer perturbation); Dubinski et al., "Bucks for Buckets (B4B)", NeurIPS 2023 (coverage, sybils).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from encoderguard.api.local_api import LocalAPI
from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.attacks.evaluate import gain_recovery, mean_cosine
from encoderguard.attacks.losses import create_loss
from encoderguard.attacks.queries import query_order
from encoderguard.attacks.stealing import DEFAULT_ARCH_KWARGS, StealingAttack, train_copy
from encoderguard.data.splits import SplitSpec, load_split
from encoderguard.defences.base import Postprocessor, prepare_chain
from encoderguard.defences.coverage_noise import CoverageNoise
from encoderguard.defences.registry import parse_defences
from encoderguard.models import load_checkpoint
from encoderguard.models.encoder import Encoder
from encoderguard.models.registry import create_encoder
from encoderguard.train.evaluate import probe_sets, random_init_like
from encoderguard.train.probe import encode, probe_features
from encoderguard.train.progress import log

UNDEFENDED = "none"
ADAPTIVE_ATTACKS = ("filter", "average", "average-jitter", "sybil", "sybil-naive")
FILTER_FACTOR = 1.5  # the filter attacker drops answers longer than this x the median of its first request
TRANSPORTS = ("http", "local")
_ROW_FORMAT = 1  # bump when a change makes cached rows incomparable
_CHAIN_SPLIT = re.compile(r"\+(?=[A-Za-z])")  # "coverage+orthogonal", but not the "+" of "1e+2"


def split_chain(setting: str) -> list[str]:
    """The specs of one setting: ``"coverage:beta=0.3+orthogonal"`` -> ``["coverage:beta=0.3", "orthogonal"]``;
    ``"none"`` -> ``[]``."""
    if setting.strip() == UNDEFENDED:
        return []
    return [part.strip() for part in _CHAIN_SPLIT.split(setting) if part.strip()]


def check_settings(settings: Sequence[str], *, dim: int | None = None) -> None:
    """Build every setting's chain (and check it against answers of size ``dim`` when given).

    Raises:
        ValueError: naming the bad setting and what is wrong with it.
    """
    for setting in settings:
        try:
            chain = parse_defences(split_chain(setting))
            if dim is not None:
                prepare_chain(chain, dim=dim)
        except ValueError as exc:
            raise ValueError(f"defence setting {setting!r}: {exc}") from None


@dataclass(frozen=True)
class HonestPattern:
    """How a typical honest user queries: a few classes' worth of labelled inputs (see the module docstring).

    Attributes:
        users: honest users (keys); utility is their mean.
        classes: classes in each user's task.
        train_per_class: probe-train images per class the user embeds to fit its probe.
        test_per_class: probe-test images per class the user embeds to use it.
        batch: images per request.
    """

    users: int = 4
    classes: int = 3
    train_per_class: int = 100
    test_per_class: int = 100
    batch: int = 50

    def __post_init__(self) -> None:
        for name, low in (("users", 1), ("classes", 2), ("train_per_class", 2), ("test_per_class", 1),
                          ("batch", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"honest {name} must be an integer >= {low}, got {value!r}")

    @property
    def queries(self) -> int:
        """Queries one honest user sends."""
        return self.classes * (self.train_per_class + self.test_per_class)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AttackOutcome:
    """A stolen copy's scores.

    Attributes:
        attack: ``"steal"`` or an adaptive attack's name.
        queries: queries it paid for (all keys together).
        linear_acc: the copy's linear-probe accuracy.
        gain_recovery: ``(copy - random init) / (victim - random init)`` of that accuracy.
        fidelity: mean cosine between the copy and the clean victim as the (first) attacker key sees it.
        details: attack-specific numbers (coverage reached, keys, distinct inputs...).
    """

    attack: str
    queries: int
    linear_acc: float
    gain_recovery: float
    fidelity: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DefenceRow:
    """One defence setting's results.

    Attributes:
        defence: the setting (``"none"`` for the undefended API).
        honest_utility: mean linear-probe accuracy of the honest users on their defended answers.
        attacker_gain_recovery: gain recovery of the copy stolen through the defended API.
        attacker_fidelity: its fidelity.
        attacker_linear_acc: its linear-probe accuracy.
        honest_utilities: each honest user's accuracy.
        broad_user_utility: accuracy of the all-classes honest user (``None`` when not measured).
        adaptive: the adaptive attackers' outcomes.
        details: coverage reached by each kind of client (when the chain has a coverage defence), timings.
    """

    defence: str
    honest_utility: float
    attacker_gain_recovery: float
    attacker_fidelity: float
    attacker_linear_acc: float
    honest_utilities: list[float]
    broad_user_utility: float | None
    adaptive: list[AttackOutcome]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["adaptive"] = {a.attack: a.to_dict() for a in self.adaptive}
        return out

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> DefenceRow:
        values = dict(raw)
        values["adaptive"] = [AttackOutcome(**a) for a in raw.get("adaptive", {}).values()]
        return DefenceRow(**values)

    def best_attack(self) -> AttackOutcome | None:
        """The adaptive attack with the highest gain recovery, if any ran."""
        finite = [a for a in self.adaptive if math.isfinite(a.gain_recovery)]
        return max(finite, key=lambda a: a.gain_recovery) if finite else None


@dataclass(frozen=True)
class DefendEvalResult:
    """All rows of a run, the undefended baseline, the victim's reference numbers and the settings."""

    rows: list[DefenceRow]
    undefended: DefenceRow
    victim_linear_acc: float
    random_init_linear_acc: float
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows], "undefended": self.undefended.to_dict(),
                "victim_linear_acc": self.victim_linear_acc, "random_init_linear_acc": self.random_init_linear_acc,
                "settings": self.settings}

    def table_rows(self) -> list[dict[str, Any]]:
        """Flat rows (undefended first) for the markdown and CSV tables."""
        out = []
        for row in [self.undefended, *self.rows]:
            best = row.best_attack()
            out.append({
                "defence": row.defence,
                "honest_utility": row.honest_utility,
                "utility_change_points": 100 * (row.honest_utility - self.undefended.honest_utility),
                "broad_user_utility": row.broad_user_utility,
                "attacker_gain_recovery": row.attacker_gain_recovery,
                "attacker_fidelity": row.attacker_fidelity,
                "gain_recovery_vs_undefended": _ratio(row.attacker_gain_recovery,
                                                      self.undefended.attacker_gain_recovery),
                "best_adaptive": best.attack if best else "",
                "best_adaptive_gain_recovery": best.gain_recovery if best else None,
                "best_adaptive_fidelity": best.fidelity if best else None,
            })
        return out

    def to_csv(self) -> str:
        rows = self.table_rows()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        return buffer.getvalue()

    def to_markdown(self) -> str:
        head = ("| defence | honest utility | change (points) | broad user | attacker gain recovery | "
                "attacker fidelity | gain rec. / undefended | best adaptive attack (gain rec., fidelity) |")
        lines = [head, "|" + "---|" * 8]
        for r in self.table_rows():
            best = (f"{r['best_adaptive']} ({_fmt(r['best_adaptive_gain_recovery'])}, "
                    f"{_fmt(r['best_adaptive_fidelity'])})" if r["best_adaptive"] else "")
            lines.append(f"| `{r['defence']}` | {_fmt(r['honest_utility'])} | {r['utility_change_points']:+.2f} | "
                         f"{_fmt(r['broad_user_utility'])} | {_fmt(r['attacker_gain_recovery'])} | "
                         f"{_fmt(r['attacker_fidelity'])} | {_fmt(r['gain_recovery_vs_undefended'])} | {best} |")
        adaptive = [(row.defence, a) for row in [self.undefended, *self.rows] for a in row.adaptive]
        if adaptive:
            lines += ["", "| defence | adaptive attack | queries | gain recovery | fidelity | details |",
                      "|---|---|---|---|---|---|"]
            for defence, a in adaptive:
                detail = ", ".join(f"{k}={_fmt(v)}" for k, v in a.details.items() if not isinstance(v, (list, dict)))
                lines.append(f"| `{defence}` | {a.attack} | {a.queries} | {_fmt(a.gain_recovery)} | "
                             f"{_fmt(a.fidelity)} | {detail} |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """Honest utility (x) against the attacker's gain recovery (y), one point per setting; adaptive attacks
        as crosses above their setting. Needs matplotlib (``pip install 'encoderguard[plots]'``)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError(f"the plot needs matplotlib: pip install 'encoderguard[plots]' ({exc})") from exc
        fig, ax = plt.subplots(figsize=(7.5, 5.5))
        families: dict[str, Any] = {}
        colours = plt.get_cmap("tab10")
        for row in [self.undefended, *self.rows]:
            family = row.defence.split(":")[0].split("+")[0]
            colour = families.setdefault(family, colours(len(families) % 10))
            marker = "*" if row is self.undefended else "o"
            ax.scatter(row.honest_utility, row.attacker_gain_recovery, color=colour, marker=marker,
                       s=160 if marker == "*" else 50, zorder=3)
            ax.annotate(short_label(row.defence), (row.honest_utility, row.attacker_gain_recovery), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
            for attack in row.adaptive:
                ax.scatter(row.honest_utility, attack.gain_recovery, color=colour, marker="x", s=35, zorder=2)
                ax.plot([row.honest_utility] * 2, [row.attacker_gain_recovery, attack.gain_recovery],
                        color=colour, linewidth=0.6, linestyle=":")
        ax.axvline(self.undefended.honest_utility - 0.01, color="grey", linewidth=0.8, linestyle="--")
        ax.axhline(self.undefended.attacker_gain_recovery / 2, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel("honest utility (mean linear-probe accuracy of few-class users)")
        ax.set_ylabel(f"attacker gain recovery ({self.settings.get('budget')} queries)")
        ax.set_title("Active defences: utility vs stealing success (x: adaptive attacks)\n"
                     "dashed: 1 point below undefended utility / half the undefended gain recovery", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130)
        plt.close(fig)
        return path


def short_label(setting: str) -> str:
    """A setting for a plot label: coverage and rotation specs by name only (their parameters are long)."""
    parts = []
    for spec in split_chain(setting) or [UNDEFENDED]:
        name, _, params = spec.partition(":")
        parts.append(name if name in ("coverage", "orthogonal") or not params else f"{name}:{params}")
    return "+".join(parts)


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

    Raises:
        ValueError: for a bad setting or an unknown adaptive attack (listing the choices).
    """

    def __init__(self, victim: str | Path, *, budget: int = 2000, loss: str = "mse",
                 loss_kwargs: dict[str, Any] | None = None, epochs: int = 30, transport: str = "http",
                 honest: HonestPattern | None = None, broad_user: bool = True, adaptive: Sequence[str] = (),
                 repeats: int = 4, sybils: int = 4, anchors: int = 128, seed: int = 0,
                 copy_arch_kwargs: dict[str, Any] | None = None, out_dir: str | Path | None = None,
                 data_dir: str | None = None, progress: bool = True) -> None:
        for name, value, low in (("budget", budget, 2), ("epochs", epochs, 1), ("repeats", repeats, 2),
                                 ("sybils", sybils, 2), ("anchors", anchors, 0), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        unknown = [a for a in adaptive if a not in ADAPTIVE_ATTACKS]
        if unknown:
            raise ValueError(f"unknown adaptive attack {unknown[0]!r}; choose from: {', '.join(ADAPTIVE_ATTACKS)}")
        if "sybil" in adaptive and sybils * anchors >= budget:
            raise ValueError(f"sybils x anchors = {sybils * anchors} leaves no budget of {budget} for the sybils' "
                             "own inputs; lower --anchors or --sybils")
        create_loss(loss, **(loss_kwargs or {}))  # fail now on a bad loss
        self.victim_dir = Path(victim)
        self.budget, self.loss, self.loss_kwargs, self.epochs = budget, loss, dict(loss_kwargs or {}), epochs
        self.transport, self.honest, self.broad_user = transport, honest or HonestPattern(), broad_user
        self.adaptive, self.repeats, self.sybils, self.anchors = tuple(adaptive), repeats, sybils, anchors
        self.seed, self.data_dir, self.progress = seed, data_dir, progress
        self.copy_arch_kwargs = dict(DEFAULT_ARCH_KWARGS if copy_arch_kwargs is None else copy_arch_kwargs)
        self.out_dir = Path(out_dir) if out_dir is not None else None

        checkpoint = load_checkpoint(self.victim_dir)
        self.encoder, self.card = checkpoint.encoder.eval(), checkpoint.card
        data = self.card.data or {}
        if not data.get("dataset"):
            raise ValueError(f"{self.victim_dir}: the victim's card names no dataset")
        self.dataset, self.split_seed = str(data["dataset"]), int(data.get("split_seed", 0))
        self.dim = int(self.encoder.embed_dim)
        c, h, w = (int(v) for v in self.encoder.input_shape)
        self.input_shape = (c, h, w)
        self.query_data = load_split(SplitSpec(self.dataset, "query", self.split_seed,
                                               int(data.get("train_size", 10000))), data_dir=data_dir)
        self.probe_train, self.probe_test = probe_sets(self.dataset, split_seed=self.split_seed, data_dir=data_dir)
        self.victim_train = encode(self.encoder, self.probe_train)
        self.victim_test = encode(self.encoder, self.probe_test)
        self.victim_linear_acc = probe_features(self.victim_train, self.probe_train.labels, self.victim_test,
                                                self.probe_test.labels).linear_acc
        twin = random_init_like(self._new_copy(), seed=0)
        self.random_init_linear_acc = probe_features(encode(twin, self.probe_train), self.probe_train.labels,
                                                     encode(twin, self.probe_test), self.probe_test.labels).linear_acc
        log(f"defend-eval: victim {self.victim_dir} linear probe {self.victim_linear_acc:.4f}, random init "
            f"{self.random_init_linear_acc:.4f}")

    # -- public ------------------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The experiment's settings (JSON), recorded in every row's cache fingerprint and in the result."""
        return {"victim": str(self.victim_dir), "victim_weights_sha256": self.card.weights_sha256,
                "dataset": self.dataset, "split_seed": self.split_seed, "budget": self.budget, "loss": self.loss,
                "loss_kwargs": self.loss_kwargs, "epochs": self.epochs, "transport": self.transport,
                "honest": self.honest.to_dict(), "broad_user": self.broad_user, "repeats": self.repeats,
                "sybils": self.sybils, "anchors": self.anchors, "seed": self.seed,
                "copy_arch_kwargs": self.copy_arch_kwargs}

    def validate(self, settings: Sequence[str]) -> None:
        """Build every setting's chain and check it against the victim, so a typo fails before any work.

        Raises:
            ValueError: naming the bad spec.
        """
        check_settings(settings, dim=self.dim)

    def run(self, settings: Sequence[str], *, adaptive: dict[str, Sequence[str]] | None = None) -> DefendEvalResult:
        """Evaluate the undefended API and every setting.

        Args:
            settings: defence settings, each a chain ``spec+spec`` (see :func:`split_chain`).
            adaptive: per-setting adaptive attacks replacing the evaluation's default list (key ``"none"`` for
                the undefended API).

        Returns:
            The result (rows in the order of ``settings``).
        """
        self.validate(settings)
        adaptive = adaptive or {}
        undefended = self.evaluate(UNDEFENDED, adaptive=adaptive.get(UNDEFENDED))
        rows = [self.evaluate(s, adaptive=adaptive.get(s)) for s in settings if s != UNDEFENDED]
        return DefendEvalResult(rows=rows, undefended=undefended, victim_linear_acc=self.victim_linear_acc,
                                random_init_linear_acc=self.random_init_linear_acc, settings=self.settings())

    def evaluate(self, setting: str, *, adaptive: Sequence[str] | None = None) -> DefenceRow:
        """Evaluate one setting (``"none"``: undefended); reuses a cached row with identical settings."""
        attacks = tuple(self.adaptive if adaptive is None else adaptive)
        fingerprint = {"format": _ROW_FORMAT, "setting": setting, "adaptive": list(attacks), **self.settings()}
        fingerprint.pop("victim")
        cached = self._cached_row(setting, fingerprint)
        if cached is not None:
            log(f"defend-eval: {setting}: reusing {self._row_path(setting)}")
            return cached
        started = time.perf_counter()
        log(f"defend-eval: {setting}: serving over {self.transport}")
        with self._serve(setting) as (connect, chain):
            utilities, honest_keys = self._honest_users(connect)
            broad, broad_key = self._broad_user(connect) if self.broad_user else (None, None)
            steal = self._steal(connect, chain)
            outcomes = [self._adaptive(name, connect, chain) for name in attacks]
            details: dict[str, Any] = {"honest_queries_per_user": self.honest.queries}
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
                         broad_user_utility=broad, adaptive=outcomes, details=details)
        log(f"defend-eval: {setting}: honest {row.honest_utility:.4f}, broad {broad}, gain recovery "
            f"{row.attacker_gain_recovery:.3f}, fidelity {row.attacker_fidelity:.3f}"
            + "".join(f"; {a.attack} {a.gain_recovery:.3f}" for a in outcomes))
        self._store_row(setting, fingerprint, row)
        return row

    # -- serving -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _serve(self, setting: str) -> Iterator[tuple[Callable[[str], tuple[EmbeddingAPI, str]],
                                                      list[Postprocessor]]]:
        """Serve the victim with a fresh chain (fresh state); yield ``connect(name) -> (api, key id)``."""
        chain = parse_defences(split_chain(setting))
        with tempfile.TemporaryDirectory(prefix="eg-defend-") as tmp:
            if self.transport == "local":
                prepare_chain(chain, dim=self.dim)
                api = LocalAPI(self.encoder, defences=chain)
                yield (lambda name: (_KeyedAPI(api, name), name)), chain
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
    def _ask(self, api: EmbeddingAPI, images: torch.Tensor, batch: int) -> torch.Tensor:
        """Embed uint8 ``[N, C, H, W]`` images in requests of ``batch``."""
        return torch.cat([api.embed(images[i:i + batch].float().div_(255.0)).float()
                          for i in range(0, images.shape[0], batch)])

    def _user_task(self, classes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        def draw(labels: torch.Tensor, per_class: int) -> np.ndarray:
            picks = [rng.choice(np.flatnonzero(labels.numpy() == c), per_class, replace=False) for c in classes]
            return rng.permutation(np.concatenate(picks))

        return draw(self.probe_train.labels, self.honest.train_per_class), draw(self.probe_test.labels,
                                                                                  self.honest.test_per_class)

    def _use(self, api: EmbeddingAPI, train_idx: np.ndarray, test_idx: np.ndarray) -> float:
        train = self._ask(api, self.probe_train.images[train_idx], self.honest.batch)
        test = self._ask(api, self.probe_test.images[test_idx], self.honest.batch)
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

    def _steal(self, connect: Callable[[str], tuple[EmbeddingAPI, str]], chain: list[Postprocessor]) -> AttackOutcome:
        api, key_id = connect("attacker")
        with tempfile.TemporaryDirectory(prefix="eg-steal-") as cache:
            attack = StealingAttack(api, loss=self.loss, loss_kwargs=self.loss_kwargs, budget=self.budget,
                                    cache_dir=cache, epochs=self.epochs, seed=self.seed, progress=self.progress,
                                    arch_kwargs=self.copy_arch_kwargs)
            result = attack.extract(self.query_data)
        details = {"coverage": self._coverage_of(chain, key_id), "train_seconds": round(result.train_seconds, 1)}
        return self._score("steal", result.encoder, result.projector, self._reference(chain, key_id), self.budget,
                           details)

    def _train(self, images: torch.Tensor, targets: torch.Tensor) -> Encoder:
        copy = self._new_copy()
        train_copy(copy, images, targets, loss=create_loss(self.loss, **self.loss_kwargs), epochs=self.epochs,
                   seed=self.seed, progress=self.progress)
        return copy

    def _adaptive(self, name: str, connect: Callable[[str], tuple[EmbeddingAPI, str]],
                  chain: list[Postprocessor]) -> AttackOutcome:
        log(f"defend-eval: adaptive attack {name}")
        if name == "filter":
            return self._filter(connect, chain)
        if name.startswith("average"):
            return self._average(connect, chain, jitter=name == "average-jitter")
        return self._sybil(connect, chain, align=name == "sybil")

    def _filter(self, connect: Callable[[str], tuple[EmbeddingAPI, str]],
                chain: list[Postprocessor]) -> AttackOutcome:
        api, key_id = connect("filter")
        images = self.query_data.images[query_order(len(self.query_data), seed=self.seed)[:self.budget]]
        answers = self._ask(api, images, 256)
        norms = answers.norm(dim=1)
        keep = norms <= FILTER_FACTOR * norms[: min(256, len(norms))].median()
        if int(keep.sum()) < 2:
            keep[:2] = True
        copy = self._train(images[keep], answers[keep])
        details = {"kept": int(keep.sum()), "coverage": self._coverage_of(chain, key_id)}
        return self._score("filter", copy, None, self._reference(chain, key_id), self.budget, details)

    def _average(self, connect: Callable[[str], tuple[EmbeddingAPI, str]], chain: list[Postprocessor], *,
                 jitter: bool) -> AttackOutcome:
        attack = "average-jitter" if jitter else "average"
        api, key_id = connect(attack)
        distinct = self.budget // self.repeats
        images = self.query_data.images[query_order(len(self.query_data), seed=self.seed)[:distinct]]
        generator = torch.Generator().manual_seed(self.seed)
        total = torch.zeros(distinct, self.dim, dtype=torch.float64)
        step = max(1, 256 // self.repeats)
        for start in range(0, distinct, step):
            chunk = images[start:start + step]
            for repeat in range(self.repeats):
                sent = chunk
                if jitter and repeat > 0:  # +-1 grey level per pixel: new input bytes, the same picture
                    delta = torch.randint(-1, 2, chunk.shape, generator=generator, dtype=torch.int16)
                    sent = (chunk.to(torch.int16) + delta).clamp_(0, 255).to(torch.uint8)
                total[start:start + step] += self._ask(api, sent, sent.shape[0]).double()
        copy = self._train(images, (total / self.repeats).float())
        details = {"distinct_inputs": distinct, "repeats": self.repeats, "coverage": self._coverage_of(chain, key_id)}
        return self._score(attack, copy, None, self._reference(chain, key_id), distinct * self.repeats, details)

    def _sybil(self, connect: Callable[[str], tuple[EmbeddingAPI, str]], chain: list[Postprocessor], *,
               align: bool) -> AttackOutcome:
        from sklearn.cluster import KMeans

        attack = "sybil" if align else "sybil-naive"
        anchors = self.anchors if align else 0
        order = query_order(len(self.query_data), seed=self.seed)
        anchor_images = self.query_data.images[order[:anchors]]
        own = self.query_data.images[order[anchors:anchors + self.budget - self.sybils * anchors]]
        # The attacker splits its inputs by region without the victim: k-means on pixels.
        groups = KMeans(self.sybils, n_init=3, random_state=self.seed).fit_predict(
            own.reshape(own.shape[0], -1).float().numpy() / 255.0)
        images: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        anchor_answers: list[torch.Tensor] = []
        keys: list[str] = []
        for sybil in range(self.sybils):
            api, key_id = connect(f"{attack}-{sybil}")
            keys.append(key_id)
            mine = own[torch.from_numpy(np.flatnonzero(groups == sybil))]
            answers_anchor = self._ask(api, anchor_images, 256) if anchors else None
            answers = self._ask(api, mine, 256) if len(mine) else torch.empty(0, self.dim)
            if align and sybil > 0 and answers_anchor is not None:
                rotation = orthogonal_procrustes(answers_anchor, anchor_answers[0])
                answers, answers_anchor = answers @ rotation, answers_anchor @ rotation
            if answers_anchor is not None:
                anchor_answers.append(answers_anchor)
            images.append(mine)
            targets.append(answers)
        if anchors:
            images.insert(0, anchor_images)
            targets.insert(0, torch.stack(anchor_answers).mean(dim=0))
        copy = self._train(torch.cat(images), torch.cat(targets).float())
        coverages = [self._coverage_of(chain, k) for k in keys]
        details = {"keys": self.sybils, "anchors_per_key": anchors, "distinct_inputs": anchors + len(own),
                   "max_coverage": max((c for c in coverages if c is not None), default=None),
                   "coverage": coverages}
        return self._score(attack, copy, None, self._reference(chain, keys[0]), anchors * self.sybils + len(own),
                           details)

    # -- row cache ---------------------------------------------------------------------------------------------
    def _row_path(self, setting: str) -> Path | None:
        if self.out_dir is None:
            return None
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", setting)[:80]
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


def orthogonal_procrustes(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The orthogonal ``R`` minimising ``||source R - target||_F``: ``U V^T`` from the SVD of ``source^T target``
    (Schonemann, 1966). A pure function; ``source``, ``target``: ``[N, D]``; returns ``[D, D]``."""
    if source.shape != target.shape or source.ndim != 2:
        raise ValueError(f"procrustes needs two equal [N, D] tensors, got {list(source.shape)} and "
                         f"{list(target.shape)}")
    u, _, vh = torch.linalg.svd(source.double().T @ target.double())
    return (u @ vh).to(source.dtype)


class _KeyedAPI:
    """One key's view of an in-process :class:`LocalAPI` (the :class:`EmbeddingAPI` protocol)."""

    def __init__(self, api: LocalAPI, key: str) -> None:
        self.api, self.key, self._used = api, key, 0

    @property
    def dim(self) -> int:
        return self.api.dim

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.api.input_shape

    @property
    def queries_used(self) -> int:
        return self._used

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        out = self.api.embed(inputs, key=self.key)
        self._used += int(out.shape[0])
        return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if math.isfinite(a) and math.isfinite(b) and b != 0 else None


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def _json(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
