"""``encoderguard serve``: expose an encoder as an authenticated, metered embedding API over HTTP."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from encoderguard.cli.main import add_common
from encoderguard.errors import EncoderGuardError

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve an encoder as an embedding API",
        description="Serve an encoder over HTTP (POST /v1/embeddings, GET /v1/model, "
        "GET /health, docs at /docs). Keys come from 'encoderguard keys add'; "
        "every request is recorded in the ledger.",
    )
    p.add_argument("--encoder", required=True, help="encoder checkpoint directory (safetensors + card.json)")
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, loopback only)"
    )
    p.add_argument("--port", type=int, required=True, help="TCP port; 0 picks a free one (printed on stderr)")
    p.add_argument("--keys", required=True, help="keys file written by 'encoderguard keys add'")
    p.add_argument("--ledger", default="ledger.sqlite", help="ledger file (default: ledger.sqlite)")
    p.add_argument("--max-batch", type=int, default=1024, help="most images per request (default: 1024)")
    p.add_argument(
        "--max-body-mb", type=float, default=32.0, help="largest request body in MiB (default: 32)"
    )
    p.add_argument(
        "--defence",
        action="append",
        default=[],
        metavar="SPEC",
        help="defence applied to every answer, in order (repeatable)",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server log level (default: warning)",
    )
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {args.max_batch}")
    if not args.max_body_mb > 0:
        raise ValueError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    try:
        from encoderguard.api.server import run_server
    except ImportError as exc:
        raise EncoderGuardError(
            f"serving needs the server extra: pip install 'encoderguard[server]' ({exc})"
        ) from None
    defences = _parse_defences(args.defence)
    try:
        from encoderguard.models import load_encoder  # type: ignore[attr-defined]
    except ImportError:
        raise EncoderGuardError(
            "loading encoders is not available in this build (encoderguard.models)"
        ) from None
    encoder = load_encoder(args.encoder)
    if args.host not in _LOOPBACK:
        print(
            f"encoderguard serve: warning: binding {args.host} serves API keys over plain HTTP; "
            "put a TLS proxy in front",
            file=sys.stderr,
        )

    def announce(url: str) -> None:
        print(f"encoderguard serve: listening on {url} (docs at {url}/docs)", file=sys.stderr, flush=True)

    url = run_server(
        encoder,
        keys_path=args.keys,
        ledger_path=args.ledger,
        host=args.host,
        port=args.port,
        defences=defences,
        max_batch=args.max_batch,
        max_body_bytes=max(1024, int(args.max_body_mb * 2**20)),
        log_level=args.log_level,
        on_bind=announce,
    )
    return {"url": url, "stopped": True, "ledger": str(args.ledger)}


def _parse_defences(specs: list[str]) -> list[Any]:
    if not specs:
        return []
    try:
        from encoderguard.defences import parse_defences  # type: ignore[attr-defined]
    except ImportError:
        raise EncoderGuardError("defences are not available in this build") from None
    return list(parse_defences(specs))
