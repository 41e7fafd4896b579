"""``encoderguard proxy``: a gateway with encoderguard's keys, quotas, ledger and defences in front of any embedding
endpoint (encoderguard, OpenAI-style or KServe v2)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from encoderguard.cli.common import input_shape, positive_int
from encoderguard.cli.dashboard_flags import add_dashboard_arguments, dashboard_options
from encoderguard.cli.main import add_common

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "proxy",
        help="guard an embedding endpoint you already run (keys, quotas, ledger, defences)",
        description="Serve the same API as 'encoderguard serve' (POST /v1/embeddings, GET /v1/model, GET /health), "
        "with answers from another endpoint: each batch is forwarded upstream, the defence chain (and the "
        "watermark) applied to the answers, and only answers delivered are charged. Upstream failures are 502/504 "
        "with a code naming the problem, never charged.",
    )
    p.add_argument("--upstream", required=True, help="the endpoint's URL (kserve: http://HOST:PORT/v2/models/NAME)")
    p.add_argument("--upstream-format", required=True, metavar="FORMAT",
                   help="its wire format: encoderguard, openai or kserve")
    p.add_argument("--upstream-key-env", default=None, metavar="VAR",
                   help="environment variable holding the upstream's API key (sent as a bearer token, never logged)")
    p.add_argument("--upstream-model", default=None, help="model name sent to an openai upstream (default 'encoder')")
    p.add_argument("--upstream-modality", choices=["image", "text"], default=None,
                   help="what the upstream embeds; text (openai format only) is served in OpenAI's embeddings "
                        "format (default: images when --input-shape is given, else what the upstream's "
                        "/v1/model says)")
    p.add_argument("--input-shape", type=input_shape, default=None, metavar="C,H,W",
                   help="image shape, for an upstream that does not describe it (openai)")
    p.add_argument("--dim", type=positive_int, default=None,
                   help="answer size; with --input-shape, lets the proxy start before the upstream answers "
                        "(/health is 503 until it does)")
    p.add_argument("--upstream-timeout", type=float, default=30.0,
                   help="seconds to wait for an upstream answer (default 30; then 504)")
    p.add_argument("--upstream-retries", type=int, default=2,
                   help="retries of connection errors, 5xx and 429 with Retry-After (default 2)")
    p.add_argument("--upstream-batch", type=positive_int, default=256,
                   help="most images per upstream request (default 256)")
    p.add_argument("--keys", required=True, help="keys file written by 'encoderguard keys add'")
    p.add_argument("--ledger", default="ledger.sqlite", help="ledger file (default: ledger.sqlite)")
    p.add_argument("--defence", action="append", default=[], metavar="SPEC",
                   help="defence applied to every answer, in order (repeatable)")
    p.add_argument("--watermark-key", default=None, metavar="FILE",
                   help="mark every answer with the serving-time watermark of this key file "
                        "(encoderguard watermark keygen), before the defences (the mark is computed on clean answers)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, required=True, help="TCP port; 0 picks a free one (printed on stderr)")
    p.add_argument("--max-batch", type=int, default=1024, help="most images per request (default: 1024)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB (default: 32)")
    add_dashboard_arguments(p)
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level (default: warning)")
    add_common(p)
    p.set_defaults(handler=sys.modules[__name__])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from encoderguard.api.adapter_registry import create_adapter

    create_adapter(args.upstream_format)  # an unknown format fails first, listing the formats
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {args.max_batch}")
    if not args.max_body_mb > 0:
        raise ValueError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    if args.upstream_retries < 0:
        raise ValueError(f"--upstream-retries must be >= 0, got {args.upstream_retries}")
    dashboard = dashboard_options(args)  # a missing or empty admin token file fails here, in one line
    key = None
    if args.upstream_key_env is not None:
        key = os.environ.get(args.upstream_key_env)
        if not key:
            raise ValueError(f"--upstream-key-env: the environment variable {args.upstream_key_env} is not set "
                             "(or empty); export the upstream's key in it")
    from encoderguard.optional import require

    for module in ("fastapi", "uvicorn", "httpx"):
        require(module, extra="server", purpose="encoderguard proxy")
    from encoderguard.api.keys import KeyStore
    from encoderguard.api.server import run_server
    from encoderguard.api.upstream_api import UpstreamAPI, UpstreamError
    from encoderguard.defences import parse_defences

    KeyStore(args.keys).load()  # a malformed keys file fails now, in one line
    defences = list(parse_defences(args.defence)) if args.defence else []
    if args.watermark_key is not None:
        from encoderguard.defences.output_watermark import OutputWatermark

        defences.insert(0, OutputWatermark(key=args.watermark_key))  # a missing or corrupt key fails here
    upstream = UpstreamAPI(args.upstream, api_format=args.upstream_format, key=key, input_shape=args.input_shape,
                           dim=args.dim, model=args.upstream_model, modality=args.upstream_modality,
                           batch_size=args.upstream_batch,
                           timeout=args.upstream_timeout, max_retries=args.upstream_retries)
    try:
        try:
            upstream.describe()
        except UpstreamError as exc:
            if (args.input_shape is None and args.upstream_modality != "text") or args.dim is None:
                raise UpstreamError(f"the upstream {upstream.url} did not answer ({exc}); start it first, or give "
                                    "--input-shape and --dim to start anyway", status=502, code=exc.code) from None
            print(f"encoderguard proxy: warning: the upstream does not answer yet ({exc}); /health answers 503 "
                  "until it does", file=sys.stderr, flush=True)
        if args.host not in _LOOPBACK:
            print(f"encoderguard proxy: warning: binding {args.host} serves API keys over plain HTTP; put a TLS "
                  "proxy in front", file=sys.stderr)

        def announce(url: str) -> None:
            print(f"encoderguard proxy: listening on {url}, answers from {upstream.url} ({args.upstream_format}, "
                  f"{upstream.input_shape or 'texts'} -> {upstream.dim}-d)", file=sys.stderr, flush=True)

        url = run_server(upstream, keys_path=args.keys, ledger_path=args.ledger, host=args.host, port=args.port,
                         defences=defences, max_batch=args.max_batch,
                         max_body_bytes=max(1024, int(args.max_body_mb * 2**20)), log_level=args.log_level,
                         on_bind=announce, **dashboard)
    finally:
        upstream.close()
    return {"url": url, "upstream": upstream.url, "upstream_format": args.upstream_format,
            "upstream_queries": upstream.queries_used, "stopped": True, "ledger": str(args.ledger)}
