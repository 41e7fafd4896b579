"""Losses x budgets: how much of a victim each stealing loss recovers for each number of paid queries.

One query cache serves the whole grid. Budgets are prefixes of one query plan (see
:mod:`encoderguard.attacks.queries`), so the sweep pays once for the largest budget and every smaller run trains on
the first ``b`` answers of that cache: a sweep over budgets ``b_1 < ... < b_k`` and ``L`` losses costs ``b_k``
queries instead of ``L * (b_1 + ... + b_k)``. Each row is still exactly what an attacker with budget ``b`` would get,
since its copy never sees an answer beyond position ``b``.

Each cell of the grid (one loss, one budget) is an independent job (:func:`run_cell`): it trains a copy on the
first ``b`` cached answers and scores it, without the API or the cache directory. The cells run one after another
in this process, or spread over a Ray cluster (:mod:`encoderguard.scenarios.job_runner`); the rows are the same.

Outputs in ``out_dir``: ``sweep.csv``, ``sweep.md`` (one row per loss and budget) and, with matplotlib installed,
``gain_recovery.png`` and ``fidelity.png`` (one line per loss against queries paid, with reference lines).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from encoderguard.api.protocol import EmbeddingAPI
from encoderguard.attacks.copy_evaluation import VictimReference, evaluate_copy, mean_cosine
from encoderguard.attacks.query_cache import CachedAnswers
from encoderguard.attacks.stealing import StealingAttack, check_answers, fill_cache
from encoderguard.data.image_set import ImageSet
from encoderguard.models.probe import encode
from encoderguard.optional import MissingDependencyError, pyplot
from encoderguard.scenarios.job_runner import InProcessRunner, JobRunner

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
_COLUMNS = ("loss", "budget", "fraction", "queries_paid", "linear_acc", "knn_acc", "victim_linear_acc",
            "random_init_linear_acc", "gain_recovery", "fidelity_cosine", "final_loss", "train_seconds")


@dataclass(frozen=True)
class SweepRow:
    """One stolen copy of the grid (accuracies on the victim's probe sets)."""

    loss: str
    budget: int
    fraction: float
    queries_paid: int
    linear_acc: float
    knn_acc: float
    victim_linear_acc: float
    random_init_linear_acc: float
    gain_recovery: float
    fidelity_cosine: float
    final_loss: float
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SweepResult:
    """The grid, the reference fidelities and where the files went.

    Attributes:
        rows: one per (loss, budget).
        references: fidelity of reference encoders to the victim (e.g. an independently trained one), by name.
        queries_paid_total: queries the whole sweep paid (the largest budget, minus what the cache already held).
        victim_train_size: the victim's training-set size that ``fraction`` refers to.
        files: paths of the CSV, markdown and plot files written.
        seconds: wall time.
    """

    rows: list[SweepRow]
    references: dict[str, float] = field(default_factory=dict)
    queries_paid_total: int = 0
    victim_train_size: int = 0
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows], "references": dict(self.references),
                "queries_paid_total": self.queries_paid_total, "victim_train_size": self.victim_train_size,
                "files": list(self.files), "seconds": self.seconds}


@dataclass(frozen=True)
class SweepCell:
    """One job of the grid: a loss (with its settings) at a budget."""

    loss: str
    budget: int
    loss_kwargs: dict[str, Any] | None = None


@dataclass(frozen=True)
class SweepContext:
    """What every cell needs, sent once to wherever the cells run.

    Attributes:
        query_data: the attacker's images.
        answers: the paid answers of the largest budget (a budget ``b`` uses the first ``b``).
        victim: the victim's representations of the probe sets.
        probe_train: probe training images.
        probe_test: probe test images.
        input_shape: the victim's image shape.
        dim: the victim's answer size.
        victim_train_size: the denominator of ``fraction``.
        attack_kwargs: further :class:`~encoderguard.attacks.StealingAttack` settings.
    """

    query_data: ImageSet
    answers: CachedAnswers
    victim: VictimReference
    probe_train: ImageSet
    probe_test: ImageSet
    input_shape: tuple[int, int, int]
    dim: int
    victim_train_size: int
    attack_kwargs: dict[str, Any]


class _PaidAnswers:
    """Stands in for the API inside a cell: shape and size only; a cell never queries."""

    def __init__(self, input_shape: tuple[int, int, int], dim: int) -> None:
        self.input_shape, self.dim, self.queries_used = input_shape, dim, 0

    def embed(self, inputs: Any) -> Any:
        raise RuntimeError("a sweep cell trains on paid answers only; it must not query the victim")


def run_cell(context: SweepContext, cell: SweepCell) -> SweepRow:
    """Train one copy on the first ``cell.budget`` paid answers and score it (a pure job: no API, no files)."""
    started = time.perf_counter()
    a = context.answers
    answers = CachedAnswers(sources=a.sources[: cell.budget], views=a.views[: cell.budget],
                            input_sha256=a.input_sha256[: cell.budget], answers=a.answers[: cell.budget])
    attack = StealingAttack(_PaidAnswers(context.input_shape, context.dim), loss=cell.loss, budget=cell.budget,
                            loss_kwargs=cell.loss_kwargs, **context.attack_kwargs)
    copy, projector, losses = attack.train(context.query_data, answers, context.dim)
    train_seconds = time.perf_counter() - started
    ev = evaluate_copy(copy, context.victim, context.probe_train, context.probe_test, projector=projector)
    return SweepRow(loss=cell.loss, budget=cell.budget, fraction=cell.budget / context.victim_train_size,
                    queries_paid=cell.budget, linear_acc=ev.linear_acc, knn_acc=ev.knn_acc,
                    victim_linear_acc=ev.victim_linear_acc, random_init_linear_acc=ev.random_init_linear_acc,
                    gain_recovery=ev.gain_recovery, fidelity_cosine=ev.fidelity_cosine, final_loss=losses[-1],
                    train_seconds=train_seconds)


def budgets_from_fractions(fractions: Sequence[float], train_size: int) -> list[int]:
    """Budgets ``round(f * train_size)`` (at least 2), sorted and without duplicates.

    Raises:
        ValueError: for a fraction that is not a finite number > 0, or ``train_size < 1``.
    """
    if train_size < 1:
        raise ValueError(f"train_size must be >= 1, got {train_size}")
    for f in fractions:
        if not (isinstance(f, (int, float)) and math.isfinite(f) and f > 0):
            raise ValueError(f"budget fractions must be finite numbers > 0, got {f!r}")
    return sorted({max(2, int(round(f * train_size))) for f in fractions})


def run_sweep(api: EmbeddingAPI, *, victim: VictimReference, probe_train: ImageSet, probe_test: ImageSet,
              query_data: ImageSet, losses: Sequence[str], budgets: Sequence[int], out_dir: str | Path,
              victim_train_size: int, loss_kwargs: dict[str, dict[str, Any]] | None = None,
              references: Mapping[str, nn.Module] | None = None, attack_kwargs: dict[str, Any] | None = None,
              progress: bool = True, runner: JobRunner | None = None) -> SweepResult:
    """Steal with every loss at every budget from one shared query cache; write a table and plots.

    Args:
        api: the victim's API (pays for the largest budget, once).
        victim: the victim's representations of the probe sets (see
            :func:`~encoderguard.attacks.copy_evaluation.victim_reference`).
        probe_train: probe training images.
        probe_test: probe test images (fidelity is measured here).
        query_data: the attacker's images.
        losses: loss names.
        budgets: query budgets (each ``>= 1``).
        out_dir: where ``query_cache/``, the table and the plots go.
        victim_train_size: size of the victim's training set (``fraction = budget / victim_train_size``).
        loss_kwargs: settings per loss name, e.g. ``{"infonce": {"temperature": 0.1}}``.
        references: encoders whose fidelity to the victim is the yardstick (e.g. ``{"independent": enc}``);
            each must answer in the victim's dimension.
        attack_kwargs: further :class:`~encoderguard.attacks.StealingAttack` settings (epochs, augmentation...).
        progress: progress bars on stderr (of the cells too when they run in this process).
        runner: where the cells run (:mod:`encoderguard.scenarios.job_runner`; default: one after another in this
            process). Paying always happens here, once, before any cell starts.

    Returns:
        The grid, in the order losses x budgets whatever the runner.

    Raises:
        ValueError: for empty ``losses``/``budgets`` or a budget below 1.
    """
    started = time.perf_counter()
    if not losses or not budgets:
        raise ValueError("a sweep needs at least one loss and one budget")
    if min(budgets) < 1:
        raise ValueError(f"budgets must be >= 1, got {sorted(budgets)}")
    budgets = sorted(set(int(b) for b in budgets))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {"progress": progress, **(attack_kwargs or {})}
    kwargs.setdefault("cache_dir", out / "query_cache")
    largest = StealingAttack(api, loss=losses[0], budget=budgets[-1], **kwargs)
    plan = largest.plan(query_data)
    with largest.open_cache(query_data) as cache:
        paid = fill_cache(api, cache, plan, query_data, budgets[-1], batch_size=largest.query_batch,
                          progress=progress)
        answers = cache.read(budgets[-1])
    check_answers(answers, plan, query_data, cache.path)
    runner = runner or InProcessRunner()
    # The cells of another process show no progress bars: many bars from many workers would only interleave.
    cell_kwargs = {**kwargs, "cache_dir": str(kwargs["cache_dir"]),
                   "progress": progress and isinstance(runner, InProcessRunner)}
    context = SweepContext(query_data=query_data, answers=answers, victim=victim, probe_train=probe_train,
                           probe_test=probe_test, input_shape=tuple(int(v) for v in api.input_shape or ()),  # type: ignore[arg-type]
                           dim=int(api.dim), victim_train_size=victim_train_size, attack_kwargs=cell_kwargs)
    cells = [SweepCell(loss, budget, (loss_kwargs or {}).get(loss)) for loss in losses for budget in budgets]
    logger.info("%d sweep cells (%d losses x %d budgets), %s", len(cells), len(losses), len(budgets), runner.name)
    rows = runner.map(run_cell, cells, shared=context)
    for row in rows:
        logger.info(f"{row.loss:>12} {row.budget:>6} queries: gain recovery {row.gain_recovery:.3f}, fidelity "
                    f"{row.fidelity_cosine:.4f} ({row.train_seconds:.0f} s)")
    refs = {name: mean_cosine(encode(model, probe_test), victim.test) for name, model in (references or {}).items()}
    files = write_table(rows, out, references=refs)
    files += plot_sweep(rows, out, references=refs)
    return SweepResult(rows=rows, references=refs, queries_paid_total=paid, victim_train_size=victim_train_size,
                       files=[str(f) for f in files], seconds=time.perf_counter() - started)


def write_table(rows: Sequence[SweepRow], out_dir: Path, *, references: dict[str, float] | None = None
                ) -> list[Path]:
    """Write ``sweep.csv`` and ``sweep.md``; returns their paths."""
    csv_path, md_path = out_dir / "sweep.csv", out_dir / "sweep.md"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow(row.to_dict())
    lines = ["| loss | queries | % of victim's training set | copy acc | victim acc | random-init acc | "
             "gain recovery | fidelity |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.loss} | {r.queries_paid} | {100 * r.fraction:.0f}% | {r.linear_acc:.4f} | "
                     f"{r.victim_linear_acc:.4f} | {r.random_init_linear_acc:.4f} | {r.gain_recovery:.3f} | "
                     f"{r.fidelity_cosine:.4f} |")
    for name, value in (references or {}).items():
        lines.append(f"\nReference: fidelity of the {name} encoder to the victim: {value:.4f}")
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def plot_sweep(rows: Sequence[SweepRow], out_dir: Path, *, references: dict[str, float] | None = None
               ) -> list[Path]:
    """Plot gain recovery and fidelity against queries paid, one line per loss (needs matplotlib).

    Returns:
        The PNG paths written (none, with a note on stderr, when matplotlib is missing).
    """
    try:
        plt = pyplot("the sweep plots")
    except MissingDependencyError as exc:
        logger.warning("plots skipped: %s", exc)
        return []
    paths = []
    for metric, label, refs in (("gain_recovery", "gain recovery (copy - random) / (victim - random)", {}),
                                ("fidelity_cosine", "fidelity: mean cosine to the victim (probe-test)",
                                 references or {})):
        fig, ax = plt.subplots(figsize=(6, 4))
        for loss in dict.fromkeys(r.loss for r in rows):
            points = sorted((r.queries_paid, getattr(r, metric)) for r in rows if r.loss == loss)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=loss)
        for (name, value), style in zip(refs.items(), ("--", ":", "-."), strict=False):
            ax.axhline(value, linestyle=style, color="grey", linewidth=1, label=f"{name} ({value:.3f})")
        ax.set_xscale("log")
        ax.set_xlabel("queries paid")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{metric.replace('_cosine', '')}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
