"""``encoderguard ledger``: per-key usage recorded by ``encoderguard serve``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from encoderguard.cli.main import add_common


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ledger",
        help="per-key usage of a served API",
        description="Summarise the query ledger: images answered, requests and rejections per API key.",
    )
    p.add_argument("--ledger", default="ledger.sqlite", help="ledger file (default: ledger.sqlite)")
    p.add_argument("--check", action="store_true", help="also run SQLite's integrity check")
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from encoderguard.api.ledger import Ledger

    with Ledger(args.ledger, create=False) as ledger:
        result = ledger.summary()
        if args.check:
            result["integrity_check"] = ledger.integrity_check()
    return result


def render(result: dict[str, Any]) -> str:
    lines = [f"{'key id':10}  {'name':20}  {'images':>10}  {'requests':>9}  {'rejected':>9}"]
    for key_id, k in result["keys"].items():
        lines.append(
            f"{key_id:10}  {str(k['name'])[:20]:20}  {k['queries']:>10}  {k['requests']:>9}  "
            f"{k['rejected']:>9}"
        )
    lines.append(f"total images answered: {result['total_queries']}")
    if "integrity_check" in result:
        lines.append(f"integrity check: {result['integrity_check']}")
    return "\n".join(lines)
