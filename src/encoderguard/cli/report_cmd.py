"""``encoderguard report RUN_DIR``: write a self-contained ``report.html`` for a demo run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from encoderguard.cli.main import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("report", help="write RUN_DIR/report.html from a demo run's summary.json",
                       description="Write a self-contained RUN_DIR/report.html (tables and figures, needs "
                                   "matplotlib) from the summary.json that 'encoderguard demo --out RUN_DIR' "
                                   "writes, with the stealing curve when RUN_DIR/sweep/sweep.csv exists.")
    p.add_argument("run_dir", help="a directory written by 'encoderguard demo' (holding summary.json)")
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from encoderguard.scenarios.report import render_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir} is not a directory; report expects a demo run directory (written by "
                                 "'encoderguard demo --out DIR')")
    if not (run_dir / "summary.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a demo run directory: report expects {run_dir / 'summary.json'}, "
                                "written by 'encoderguard demo --out DIR'")
    return {"report": str(render_report(run_dir))}


def render(result: dict[str, Any]) -> str:
    return f"wrote {result['report']}"
