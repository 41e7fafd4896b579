"""The owner's dashboard flags shared by ``encoderguard serve`` and ``encoderguard proxy``."""

from __future__ import annotations

import argparse
from typing import Any


def add_dashboard_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--dashboard``, ``--admin-token-file`` and ``--verification-results`` to a server command's parser."""
    p.add_argument("--dashboard", action="store_true",
                   help="serve the owner's live dashboard at /dashboard (needs --admin-token-file); /metrics "
                        "(Prometheus) is served either way")
    p.add_argument("--admin-token-file", default=None, metavar="FILE",
                   help="file holding the dashboard's admin token (sent as 'Authorization: Bearer TOKEN'); keep it "
                        "0600")
    p.add_argument("--verification-results", default=None, metavar="FILE",
                   help="JSON file of verification results (encoderguard verify ... --json) shown on the dashboard; "
                        "it may be written later")


def dashboard_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``create_app`` keyword arguments of the dashboard flags (``{}`` without ``--dashboard``).

    Raises:
        ValueError: ``--dashboard`` without ``--admin-token-file``, a dashboard flag without ``--dashboard``, or a
            token file that is missing or empty.
    """
    if not args.dashboard:
        if args.admin_token_file is not None or args.verification_results is not None:
            raise ValueError("--admin-token-file and --verification-results need --dashboard")
        return {}
    if args.admin_token_file is None:
        raise ValueError("--dashboard needs --admin-token-file FILE (the admin token the page asks for)")
    from encoderguard.api.dashboard import read_admin_token

    return {"dashboard": True, "admin_token": read_admin_token(args.admin_token_file),
            "verification_results": args.verification_results}
