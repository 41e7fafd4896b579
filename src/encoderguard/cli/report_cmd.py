"""``encoderguard report RUN_DIR``: write a self-contained ``report.html`` for a demo run."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from encoderguard.cli.main import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("report", help="write RUN_DIR/report.html from a demo run's summary.json")
    p.add_argument("run_dir", help="a directory written by 'encoderguard demo'")
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from encoderguard.experiments.report import render_report

    return {"report": str(render_report(args.run_dir))}


def render(result: dict[str, Any]) -> str:
    return f"wrote {result['report']}"
