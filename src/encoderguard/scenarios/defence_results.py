"""Results of the defence evaluation (:class:`~encoderguard.scenarios.DefenceEvaluation`): the honest users'
pattern, each attack's outcome, one row per defence setting, and the whole run with its CSV, markdown and plot."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from encoderguard.defences.registry import UNDEFENDED, split_chain


@dataclass(frozen=True)
class HonestPattern:
    """How a typical honest user queries: a few classes' worth of labelled inputs (see :class:`DefenceEvaluation`).

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
        sybils: keys the attacker split its budget over (``1``: a single key).
        attack: how it used them: ``"plain"``, ``"average"`` or ``"procrustes"``.
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
    sybils: int = 1
    attack: str = "plain"

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
class DefenceEvaluationResult:
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
        from encoderguard.optional import pyplot

        plt = pyplot("the defence plot")
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


def _ratio(a: float, b: float) -> float | None:
    return a / b if math.isfinite(a) and math.isfinite(b) and b != 0 else None


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)

