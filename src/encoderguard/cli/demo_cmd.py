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
                                   "run). --modality text: the same story for a text API (all-MiniLM-L6-v2 served "
                                   "over HTTP in OpenAI format with the serving-time watermark, stolen by a small "
                                   "text student on BBC News sentences). Exit code 1 if a decision is wrong.")
    p.add_argument("--modality", choices=("image", "text"), default="image",
                   help="image (default: Fashion-MNIST, a victim the owner trains) or text (a pretrained MiniLM the "
                        "owner serves)")
    p.add_argument("--out", default=None, help="run directory (default runs/demo, text: runs/demo-text); finished "
                   "models in it are reused")
    p.add_argument("--quick", action="store_true", help="a smaller, faster smoke run (verdicts may be inconclusive)")
    p.add_argument("--loss", default=None, help="the attacker's stealing loss: mse (default), cosine, infonce, softnn, "
                   "wasserstein or barlow")
    p.add_argument("--budget", type=int, default=None, help="attacker queries (default max(train size / 5, 2000); "
                   "text: 2000 sentences)")
    p.add_argument("--references", type=int, default=None,
                   help="reference models the owner trains to calibrate the tests (default 10, quick 4; text 6, "
                        "quick 3; >= 3)")
    p.add_argument("--student", choices=("transformer", "ngram"), default=None,
                   help="text: the thief's student (default ngram)")
    add_data_dir(p)
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace

    from encoderguard.attacks.losses import LOSSES
    from encoderguard.scenarios.demo import DemoSettings, run_demo

    if args.loss is not None and args.loss not in LOSSES:  # before any of the run's minutes are spent
        raise ValueError(f"unknown loss {args.loss!r}; choose one of: {', '.join(LOSSES)}")
    if args.budget is not None and args.budget < 1:
        raise ValueError(f"--budget must be >= 1, got {args.budget}")
    if args.modality == "text":
        return _run_text(args)
    if args.out is None:
        args.out = "runs/demo"
    if args.student is not None:
        raise ValueError("--student is for --modality text (the image thief's copy is a ConvNet)")
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


def _run_text(args: argparse.Namespace) -> dict[str, Any]:
    """``demo --modality text`` (see ``encoderguard.scenarios.text_demo``)."""
    from dataclasses import replace

    from encoderguard.scenarios.text_demo import TextDemoSettings, run_text_demo

    if args.loss not in (None, "mse"):
        raise ValueError("--loss is for the image demo; the text thief's student trains with mse")
    settings = TextDemoSettings.quick() if args.quick else TextDemoSettings()
    if args.budget is not None:
        settings = replace(settings, budget=args.budget)
    if args.references is not None:
        settings = replace(settings, references=args.references)
    if args.student is not None:
        settings = replace(settings, student=args.student)
    summary = run_text_demo(args.out or "runs/demo-text", settings=settings, data_dir=args.data_dir)
    summary["_exit_code"] = 1 if summary.get("wrong_decisions") else 0
    return summary


def render(result: dict[str, Any]) -> str:
    from encoderguard.scenarios.demo import summary_table
    from encoderguard.scenarios.text_demo import text_summary_table

    text = (result.get("settings") or {}).get("modality") == "text"
    lines = [text_summary_table(result) if text else summary_table(result), ""]
    if result.get("all_decisions_right"):
        lines.append("every decision right (victim and stolen copy: stolen; independent: not stolen), "
                     "family-wise error <= alpha per suspect")
        if text:
            lines.append(f"test relied on: {result.get('test_relied_on')}")
    else:
        lines.append("WRONG decisions: " + ", ".join(f"{c['suspect']} -> {c['verdict']}"
                                                    for c in result.get("wrong_decisions", [])))
    said: set[tuple[str, str]] = set()
    for v in result.get("verdicts", []):
        if v.get("verdict") in ("inconclusive", "not applicable"):
            reason = v.get("reason") or "see summary.json"
            if text and v["verdict"] == "not applicable":  # the same for every suspect of a text run: say it once
                if (v["method"], reason) not in said:
                    lines.append(f"  {v['method']}: not applicable: {reason}")
                said.add((v["method"], reason))
                continue
            lines.append(f"  {v['suspect']}/{v['method']}: {v['verdict']}: {reason}")
    if result.get("report"):
        lines.append(f"report: {result['report']}")
    lines.append(f"total {result.get('seconds', 0):.0f} s")
    return "\n".join(lines)
