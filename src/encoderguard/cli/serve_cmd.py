"""``encoderguard serve``: expose an encoder as an authenticated, metered embedding API over HTTP."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from encoderguard.cli.common import input_shape
from encoderguard.cli.dashboard_flags import add_dashboard_arguments, dashboard_options
from encoderguard.cli.main import add_common

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve an encoder as an embedding API",
        description="Serve an encoder over HTTP (POST /v1/embeddings, GET /v1/model, "
        "GET /health, docs at /docs). Keys come from 'encoderguard keys add'; "
        "every request is recorded in the ledger.",
    )
    p.add_argument("--encoder", required=True,
                   help="encoder checkpoint directory (safetensors + card.json), onnx:PATH for an ONNX model, or "
                        "st:NAME_OR_PATH for a sentence-transformers text model (served in OpenAI's embeddings "
                        "format)")
    p.add_argument("--input-shape", type=input_shape, default=None, metavar="C,H,W",
                   help="image shape of an ONNX model with dynamic dimensions, e.g. 3,32,32")
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, loopback only)"
    )
    p.add_argument("--port", type=int, required=True, help="TCP port; 0 picks a free one (printed on stderr)")
    p.add_argument("--keys", required=True, help="keys file written by 'encoderguard keys add'")
    p.add_argument("--ledger", default="ledger.sqlite",
                   help="ledger: a SQLite file (default: ledger.sqlite) or postgresql://USER@HOST:PORT/DB, which "
                        "several serve processes (other ports, other hosts) share as one service with exact quotas "
                        "(pip install 'encoderguard[postgres]')")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes on this host sharing the port and the ledger (default 1); quotas hold "
                        "across them, the per-key rate limit is per process")
    p.add_argument("--listen-fd", type=int, default=None, metavar="FD",
                   help="serve on this inherited, already listening socket (set by --workers for its processes)")
    p.add_argument("--max-batch", type=int, default=1024,
                   help="most inputs (images or texts) per request (default: 1024)")
    p.add_argument("--max-input-tokens", type=int, default=8192, metavar="T",
                   help="a text encoder's longest text, in its tokenizer's tokens (longer: 400; default: 8192)")
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
    p.add_argument("--watermark-key", default=None, metavar="FILE",
                   help="mark every answer with the serving-time watermark of this key file (encoderguard watermark "
                        "keygen), before the defences (the mark is computed on clean answers)")
    p.add_argument("--pow-bits", type=int, default=None, metavar="B",
                   help="ask every embeddings request for proof of work: about 2**B SHA-256 hashes per image for a "
                        "key of risk 0 (default: off). encoderguard's client solves it transparently")
    p.add_argument("--pow-extra-bits", type=int, default=8, metavar="E",
                   help="bits added at risk 1, round(E x risk) in between; the risk comes from defences with a "
                        "risk(key) method (default 8)")
    p.add_argument("--pow-ttl", type=float, default=300.0, metavar="S",
                   help="seconds a proof-of-work challenge stays valid (default 300)")
    p.add_argument("--pow-secret", default=None, metavar="FILE",
                   help="the proof-of-work signing secret (hex; created 0600 if missing); needed with --workers > 1 "
                        "(default: a random secret per process)")
    add_dashboard_arguments(p)
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server log level (default: warning)",
    )
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_input_tokens < 1:
        raise ValueError(f"--max-input-tokens must be >= 1, got {args.max_input_tokens}")
    if not args.max_body_mb > 0:
        raise ValueError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    dashboard = dashboard_options(args)  # a missing or empty admin token file fails here, in one line
    proof_of_work = _proof_of_work(args)
    from encoderguard.optional import require

    for module in ("fastapi", "uvicorn"):
        require(module, extra="server", purpose="encoderguard serve")
    from encoderguard.api.server import run_server
    from encoderguard.defences import parse_defences
    from encoderguard.models import load_any

    defences = list(parse_defences(args.defence)) if args.defence else []
    if args.watermark_key:
        from encoderguard.defences.output_watermark import OutputWatermark

        defences.insert(0, OutputWatermark(key=args.watermark_key))  # a missing or corrupt key fails here
    from encoderguard.api.keys import KeyStore

    KeyStore(args.keys).load()  # a malformed keys file fails now, in one line, before the encoder is loaded
    from encoderguard.api.ledger import is_postgres_url

    shown_ledger = str(args.ledger)
    if is_postgres_url(shown_ledger):
        from encoderguard.api.postgres_ledger import redact_url

        shown_ledger = redact_url(shown_ledger)
    if args.workers > 1 and args.listen_fd is None:
        from encoderguard.api.worker_pool import run_workers

        def announce_pool(url: str) -> None:
            print(f"encoderguard serve: listening on {url} with {args.workers} worker processes (docs at "
                  f"{url}/docs)", file=sys.stderr, flush=True)

        url = run_workers(argv=args.argv, workers=args.workers, host=args.host, port=args.port,
                          on_bind=announce_pool)
        return {"url": url, "stopped": True, "ledger": shown_ledger, "workers": args.workers}
    encoder = load_any(args.encoder, input_shape=args.input_shape)
    if args.host not in _LOOPBACK:
        print(
            f"encoderguard serve: warning: binding {args.host} serves API keys over plain HTTP; "
            "put a TLS proxy in front",
            file=sys.stderr,
        )

    def announce(url: str) -> None:
        print(f"encoderguard serve: listening on {url} (docs at {url}/docs)", file=sys.stderr, flush=True)

    sock = None
    if args.listen_fd is not None:  # a worker: serve on the parent's socket, let the parent announce
        import socket

        sock = socket.socket(fileno=args.listen_fd)
        announce = None  # type: ignore[assignment]
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
        sock=sock,
        **dashboard,
        proof_of_work=proof_of_work,
        max_input_tokens=args.max_input_tokens,
        model_name=_model_name(args.encoder),
    )
    if args.listen_fd is not None:
        return None  # a worker: the pool's parent reports
    return {"url": url, "stopped": True, "ledger": shown_ledger}


def _proof_of_work(args: argparse.Namespace) -> Any:
    """The server's :class:`~encoderguard.api.proof_of_work.ProofOfWork` from the --pow-* flags (``None``: off)."""
    if args.pow_bits is None:
        return None
    if args.workers > 1 and args.pow_secret is None:
        raise ValueError("--workers > 1 with --pow-bits needs --pow-secret FILE (one signing secret for all workers)")
    from encoderguard.api.proof_of_work import ProofOfWork, load_secret

    secret = load_secret(args.pow_secret) if args.pow_secret else None  # created before the workers start
    try:
        return ProofOfWork(base_bits=args.pow_bits, extra_bits=args.pow_extra_bits, ttl=args.pow_ttl, secret=secret,
                           max_images=args.max_batch)
    except ValueError as exc:
        raise ValueError(f"--pow-bits/--pow-extra-bits/--pow-ttl: {exc}") from None


def _model_name(spec: str) -> str | None:
    """The model name a text server answers with: NAME of ``st:NAME`` (a path's last part); ``None`` otherwise (the
    encoder's own name)."""
    if not spec.startswith("st:"):
        return None
    return spec[len("st:"):].rstrip("/").rsplit("/", 1)[-1] or None
