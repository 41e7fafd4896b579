"""``encoderguard defend-eval``: what each active defence costs honest users and leaves a thief."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from encoderguard.cli.common import add_data_dir, add_progress, non_negative_int, positive_int
from encoderguard.cli.main import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "defend-eval", help="measure active defences: honest-user utility vs stealing success",
        description="Serve the victim with each defence setting (over HTTP by default), measure the accuracy of "
                    "honest few-class users on their defended answers and the gain recovery and fidelity of a "
                    "copy stolen through the defended API, against the undefended API. Each --defence is one "
                    "setting; join specs with '+' to chain them, e.g. --defence coverage+orthogonal.")
    p.add_argument("--victim", required=True, help="victim checkpoint directory")
    p.add_argument("--defence", action="append", required=True, metavar="SPEC",
                   help="a defence setting, name[:k=v,...][+name...] (repeatable: one row each)")
    p.add_argument("--budget", type=positive_int, default=2000, help="the attacker's queries (default 2000)")
    p.add_argument("--loss", default="mse", help="stealing loss (default mse)")
    p.add_argument("--thief", default=None,
                   help="the attacker as a named recipe of encoderguard.attacks.thieves (e.g. strong: the best "
                        "measured thief); its loss replaces --loss")
    p.add_argument("--epochs", type=positive_int, default=30, help="training epochs of each copy (default 30)")
    p.add_argument("--transport", choices=("http", "local"), default="http",
                   help="http (default: the real server and client) or local (in process, faster)")
    p.add_argument("--honest-users", type=positive_int, default=4, help="honest users (default 4)")
    p.add_argument("--honest-classes", type=positive_int, default=3, help="classes per honest user (default 3)")
    p.add_argument("--honest-per-class", type=positive_int, default=100,
                   help="train and test images per class each honest user embeds (default 100 + 100)")
    p.add_argument("--no-broad-user", action="store_true", help="skip the all-classes honest user")
    p.add_argument("--adaptive", default="", metavar="LIST",
                   help="adaptive attacks on every setting, comma-separated: filter, average, average-jitter, "
                        "sybil, sybil-naive (default none)")
    p.add_argument("--repeats", type=positive_int, default=4, help="repeats per input of the averaging attacks")
    p.add_argument("--sybils", type=positive_int, default=None, metavar="K",
                   help="keys the attacker splits its --budget over, equally, each a separate identity to the "
                        "defence (default 1); also the keys of the adaptive sybil attacks (default 4 there)")
    p.add_argument("--attack", choices=("plain", "average", "procrustes"), default="plain",
                   help="how the attacker uses its keys: plain (train on the answers as they come, default), "
                        "average (jittered repeats averaged) or procrustes (shared anchors on every key, answers "
                        "aligned by orthogonal Procrustes; needs --sybils >= 2)")
    p.add_argument("--mixed-users", default="", metavar="LIST",
                   help="class counts of honest users measured after the attacker, e.g. 3,3,5,10 (default none)")
    p.add_argument("--anchors", type=non_negative_int, default=128,
                   help="shared inputs per sybil key for aligning keys (default 128)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seeds the honest users' class draws, the attackers' query order and the copies (default 0; "
                        "the defences' secrets are their own seed settings)")
    p.add_argument("--out", default=None,
                   help="directory for the table (defences.md, defences.csv), the plot (defences.png), the JSON "
                        "and finished rows, reused by a rerun with the same settings")
    add_data_dir(p)
    add_progress(p)
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from encoderguard.defences.registry import check_settings
    from encoderguard.scenarios import DefenceEvaluation, HonestPattern

    check_settings(args.defence)  # a typo fails before the victim is loaded and probed
    adaptive = [name.strip() for name in args.adaptive.split(",") if name.strip()]
    try:
        mixed = [int(c) for c in args.mixed_users.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--mixed-users must be comma-separated integers, got {args.mixed_users!r}") from None
    attacker_keys = args.sybils or 1
    per_class = args.honest_per_class
    evaluation = DefenceEvaluation(
        args.victim, budget=args.budget, loss=args.loss, thief=args.thief, epochs=args.epochs, transport=args.transport,
        honest=HonestPattern(users=args.honest_users, classes=args.honest_classes, train_per_class=per_class,
                             test_per_class=per_class),
        broad_user=not args.no_broad_user, adaptive=adaptive, repeats=args.repeats,
        sybils=attacker_keys if attacker_keys >= 2 else 4, anchors=args.anchors, seed=args.seed, out_dir=args.out,
        data_dir=args.data_dir, progress=not args.no_progress, attacker_keys=attacker_keys, attack=args.attack,
        mixed=mixed)
    result = evaluation.run(args.defence)
    out: dict[str, Any] = result.to_dict()
    if args.out:
        import json

        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "defences.md").write_text(result.to_markdown())
        (folder / "defences.csv").write_text(result.to_csv())
        (folder / "defences.json").write_text(json.dumps(out, indent=1, default=str))
        files = {"table": str(folder / "defences.md"), "csv": str(folder / "defences.csv"),
                 "json": str(folder / "defences.json")}
        try:
            files["plot"] = str(result.plot(folder / "defences.png"))
        except ImportError as exc:
            print(f"encoderguard defend-eval: warning: no plot ({exc})", file=sys.stderr)
        out["files"] = files
    out["table_markdown"] = result.to_markdown()
    return out


def render(result: dict[str, Any]) -> str:
    files = result.get("files", {})
    tail = "".join(f"\n{name}: {path}" for name, path in files.items())
    return str(result["table_markdown"]) + tail
