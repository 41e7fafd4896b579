"""``encoderguard keys add|revoke|list|reset-state``: manage the API keys of ``encoderguard serve``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from encoderguard.cli.main import add_common

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keys",
        help="issue, revoke and list API keys",
        description="Manage the API keys file of 'encoderguard serve'. The file stores only keyed "
        "hashes (their pepper lives in <keys>.pepper, 0600); a new key is printed once.",
    )
    p.set_defaults(handler=sys.modules[__name__])
    actions = p.add_subparsers(dest="keys_action", metavar="ACTION")

    add = actions.add_parser("add", help="issue a new key (printed once)")
    add.add_argument("--keys", required=True, help="keys file (created if missing)")
    add.add_argument("--name", required=True, help="label of the key, unique among active keys")
    add.add_argument(
        "--quota", type=int, default=None, help="total images the key may have answered (default: unlimited)"
    )
    add.add_argument(
        "--rate", type=float, default=None, help="sustained images per second (default: unlimited)"
    )
    add_common(add)

    revoke = actions.add_parser("revoke", help="revoke a key (takes effect on a running server at once)")
    revoke.add_argument("--keys", required=True, help="keys file")
    who = revoke.add_mutually_exclusive_group(required=True)
    who.add_argument("--name", help="name of the active key to revoke")
    who.add_argument("--key-id", help="id of the key to revoke (the 8 characters after 'eg_')")
    add_common(revoke)

    listing = actions.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--keys", required=True, help="keys file")
    add_common(listing)

    reset = actions.add_parser(
        "reset-state", help="forget what the defences remember about a key (coverage, spread, guard links)",
        description="Delete every defence state the ledger holds for one key: the stateful defences (coverage, "
                    "spread, guard) treat it as a new key from its next request. Takes effect on a running server "
                    "at once (the state is read per request).")
    reset.add_argument("--keys", required=True, help="keys file (the key must be in it)")
    reset.add_argument("--ledger", required=True, help="the server's ledger (SQLite file or postgresql:// URL)")
    reset.add_argument("key_id", metavar="KEY_ID", help="id of the key (the 8 characters after 'eg_')")
    add_common(reset)

    for sub in (add, revoke, listing, reset):
        sub.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from encoderguard.api.keys import KeyStore

    action = getattr(args, "keys_action", None)
    if action is None:
        raise ValueError("choose an action: encoderguard keys add|revoke|list|reset-state --keys KEYS.json ...")
    store = KeyStore(args.keys)
    if action == "reset-state":
        return _reset_state(store, args.ledger, args.key_id)
    if action == "add":
        record, key = store.add(name=args.name, quota=args.quota, rate=args.rate)
        return {
            "name": record.name,
            "key": key,
            "key_id": record.key_id,
            "quota": record.quota,
            "rate": record.rate,
        }
    if action == "revoke":
        record = store.revoke(name=args.name, key_id=args.key_id)
        return {"name": record.name, "key_id": record.key_id, "revoked": record.revoked}
    if not store.path.is_file():
        raise ValueError(f"keys file {store.path} does not exist")
    return {"keys": [r.to_dict() for r in store.records()]}


def _reset_state(store: Any, ledger_path: str, key_id: str) -> dict[str, Any]:
    """Delete ``key_id``'s defence state in the ledger; the key must be in the keys file."""
    from encoderguard.api.ledger import Ledger, is_postgres_url

    if not store.path.is_file():
        raise ValueError(f"keys file {store.path} does not exist")
    record = next((r for r in store.records() if r.key_id == key_id), None)
    if record is None:
        raise ValueError(f"unknown key id {key_id!r} in {store.path} (see 'encoderguard keys list --keys "
                         f"{store.path}')")
    if not is_postgres_url(ledger_path) and not Path(ledger_path).is_file():
        raise ValueError(f"ledger {ledger_path} does not exist")
    with Ledger(ledger_path, create=False) as ledger:
        removed = ledger.reset_state(key_id)
    logger.info(f"keys reset-state: removed {removed} defence states of key {key_id}")
    return {"key_id": key_id, "name": record.name, "states_removed": removed}


def render(result: dict[str, Any]) -> str:
    if "states_removed" in result:
        return f"reset key {result['key_id']} ({result['name']!r}): {result['states_removed']} defence states removed"
    if "key" in result:
        return f"key for {result['name']!r} (id {result['key_id']}); it is shown only once:\n{result['key']}"
    if "revoked" in result:
        return f"revoked key {result['key_id']} ({result['name']!r}) at {result['revoked']}"
    lines = [f"{'id':8}  {'name':20}  {'quota':>10}  {'rate/s':>8}  status"]
    for k in result["keys"]:
        status = "active" if k["revoked"] is None else f"revoked {k['revoked']}"
        quota = "-" if k["quota"] is None else str(k["quota"])
        rate = "-" if k["rate"] is None else f"{k['rate']:g}"
        lines.append(f"{k['key_id']:8}  {k['name'][:20]:20}  {quota:>10}  {rate:>8}  {status}")
    return "\n".join(lines)
