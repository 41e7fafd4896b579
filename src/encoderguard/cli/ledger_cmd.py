"""``encoderguard ledger``: per-key usage recorded by ``encoderguard serve``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from encoderguard.cli.main import add_common
from encoderguard.errors import EncoderGuardError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ledger",
        help="per-key usage of a served API",
        description="Summarise the query ledger: inputs answered (images or texts), tokens (texts), requests and "
        "rejections per API key.",
    )
    p.add_argument("--ledger", default="ledger.sqlite",
                   help="ledger file (default: ledger.sqlite) or postgresql://USER@HOST:PORT/DB (read-only access)")
    p.add_argument(
        "--check",
        action="store_true",
        help="also run SQLite's integrity check and report damage (exit status 1 if the file is damaged)",
    )
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    import sqlite3

    from encoderguard.api.ledger import Ledger

    # Read-only: a mode=ro connection, no schema changes and no write lock on a ledger a server may be using.
    with Ledger(args.ledger, read_only=True) as ledger:
        result: dict[str, Any] = {}
        if args.check:
            result["integrity_check"] = ledger.integrity_check()
        try:
            result.update(ledger.summary())
        except sqlite3.DatabaseError as exc:
            if not args.check:
                raise EncoderGuardError(
                    f"ledger {ledger.path} cannot be read ({exc}); 'encoderguard ledger --check' reports the damage"
                ) from None
            result["error"] = f"cannot summarise the ledger: {exc}"
    if args.check and result["integrity_check"] != "ok":
        result["_exit_code"] = 1
    return result


def render(result: dict[str, Any]) -> str:
    lines = [f"{'key id':10}  {'name':20}  {'inputs':>10}  {'tokens':>12}  {'requests':>9}  {'rejected':>9}"]
    if "error" in result:
        return f"integrity check: {result['integrity_check']}\n{result['error']}"
    for key_id, k in result["keys"].items():
        lines.append(
            f"{key_id:10}  {str(k['name'])[:20]:20}  {k['queries']:>10}  {k.get('tokens', 0):>12}  {k['requests']:>9}  "
            f"{k['rejected']:>9}"
        )
    lines.append(f"total inputs answered: {result['total_queries']} (tokens: {result.get('total_tokens', 0)})")
    if "integrity_check" in result:
        lines.append(f"integrity check: {result['integrity_check']}")
    return "\n".join(lines)
