"""``encoderguard demo``: the main job end to end on built-in real data (see ``encoderguard.scenarios.demo``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from encoderguard.cli.common import add_data_dir
from encoderguard.cli.main import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="train, serve, steal and verify end to end; writes summary.json and report.html",
                       description="The whole story on Fashion-MNIST, each stage a real command: the owner trains a "
                                   "watermarked victim and serves it, a thief steals a copy over HTTP, an independent "
                                   "model is trained on other data, the owner builds reference models and verifies "
                                   "all three suspects. About 10 minutes on 2 CPU cores (--quick: a smaller smoke "
                                   "run). Exit code 1 if a decision is wrong.")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo); finished models in it "
                   "are reused")
    p.add_argument("--quick", action="store_true", help="a smaller, faster smoke run (verdicts may be inconclusive)")
    p.add_argument("--loss", default=None, help="the attacker's stealing loss: mse (default), cosine, infonce, softnn, "
                   "wasserstein or barlow")
    p.add_argument("--budget", type=int, default=None, help="attacker queries (default max(train size / 5, 2000))")
    p.add_argument("--references", type=int, default=None,
                   help="reference models the owner trains to calibrate the tests (default 10, quick 4; >= 3)")
    add_data_dir(p)
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace

    from encoderguard.attacks.losses import LOSSES
    from encoderguard.scenarios.demo import DemoSettings, run_demo

    if args.loss is not None and args.loss not in LOSSES:  # before any of the run's minutes are spent
        raise ValueError(f"unknown loss {args.loss!r}; choose one of: {', '.join(LOSSES)}")
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    if args.loss:
        settings = replace(settings, loss=args.loss)
    if args.budget is not None:
        if args.budget < 1:
            raise ValueError(f"--budget must be >= 1, got {args.budget}")
        settings = replace(settings, budget=args.budget)
    if args.references is not None:
        settings = replace(settings, references=args.references)
    summary = run_demo(args.out, settings=settings, data_dir=args.data_dir)
    # Non-zero unless the owner would act rightly: victim and copy "stolen", the independent model not.
    summary["_exit_code"] = 1 if summary.get("wrong_decisions") else 0
    return summary


def render(result: dict[str, Any]) -> str:
    from encoderguard.scenarios.demo import summary_table

    lines = [summary_table(result), ""]
    if result.get("all_decisions_right"):
        lines.append("every decision right (victim and stolen copy: stolen; independent: not stolen), "
                     "family-wise error <= alpha per suspect")
    else:
        lines.append("WRONG decisions: " + ", ".join(f"{c['suspect']} -> {c['verdict']}"
                                                    for c in result.get("wrong_decisions", [])))
    for v in result.get("verdicts", []):
        if v.get("verdict") in ("inconclusive", "not applicable"):
            reason = v.get("reason") or "see summary.json"
            lines.append(f"  {v['suspect']}/{v['method']}: {v['verdict']}: {reason}")
    if result.get("report"):
        lines.append(f"report: {result['report']}")
    lines.append(f"total {result.get('seconds', 0):.0f} s")
    return "\n".join(lines)
