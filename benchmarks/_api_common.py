"""Shared helpers of the API benchmarks (api_throughput.py, api_load.py, api_durability.py).

Also runnable: ``python benchmarks/_api_common.py serve --port 0 --keys K --ledger L`` serves the default random-init
ConvNet (1x28x28 -> 128) when no checkpoint directory is at hand; with a checkpoint use ``encoderguard serve``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encoderguard.api.launcher import ServerProcess, launch_server
from encoderguard.models import ConvNet, ModelCard, save_checkpoint

INPUT_SHAPE = (1, 28, 28)
EMBED_DIM = 128
HERE = Path(__file__).resolve().parent


def default_encoder(seed: int = 0) -> nn.Module:
    """A random-init ConvNet of realistic size for Fashion-MNIST: 1x28x28 -> 128 (the project's default arch)."""
    torch.manual_seed(seed)
    return ConvNet(input_shape=INPUT_SHAPE, embed_dim=EMBED_DIM, width=32, depth=4)


def load_encoder_or_default(encoder_dir: str | None) -> nn.Module:
    if encoder_dir is None:
        return default_encoder()
    from encoderguard.models import load_encoder

    return load_encoder(encoder_dir)


def default_checkpoint(out_dir: Path) -> str:
    """Save :func:`default_encoder` as a checkpoint directory (so that ``encoderguard serve`` can load it)."""
    encoder = default_encoder()
    card = ModelCard(arch=encoder.arch, arch_kwargs=dict(encoder.arch_kwargs), input_shape=INPUT_SHAPE,
                     embed_dim=EMBED_DIM, training={"note": "random init, API benchmarks"})
    save_checkpoint(out_dir, encoder=encoder, card=card)
    return str(out_dir)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_key(keys_path: Path, name: str, **settings: Any) -> str:
    from encoderguard.api.keys import KeyStore

    _, key = KeyStore(keys_path).add(name=name, **settings)
    return key


def images(n: int, input_shape: tuple[int, ...], *, seed: int, eight_bit: bool) -> torch.Tensor:
    """Random images in [0, 1]; ``eight_bit`` makes them exact multiples of 1/255 like decoded PNG/idx data."""
    g = torch.Generator().manual_seed(seed)
    if eight_bit:
        return torch.randint(0, 256, (n, *input_shape), generator=g).float() / 255
    return torch.rand((n, *input_shape), generator=g)


def start_server(*, encoder_dir: str | None, keys: Path, ledger: Path, extra: list[str] | None = None,
                 log: Path | None = None, timeout: float = 120.0) -> ServerProcess:
    """Start a server process on 127.0.0.1 (a free port), answering ``/health``: ``encoderguard serve`` on
    ``encoder_dir``, or this file's ``serve`` (the default encoder) when it is ``None``. The log is appended to."""
    command = None if encoder_dir is not None else [sys.executable, str(HERE / "_api_common.py"), "serve"]
    return launch_server(encoder_dir, keys=keys, ledger=ledger, extra=extra or [], command=command, log=log,
                         append_log=True, timeout=timeout)


def _serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="serve the default random-init ConvNet")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--max-body-mb", type=float, default=32.0)
    parser.add_argument("--synchronous", default="FULL")
    args = parser.parse_args(argv)
    from encoderguard.api.server import run_server

    run_server(default_encoder(), keys_path=args.keys, ledger_path=args.ledger, host=args.host, port=args.port,
               max_batch=args.max_batch, max_body_bytes=int(args.max_body_mb * 2**20), synchronous=args.synchronous,
               on_bind=lambda url: print(f"benchmark server: listening on {url}", file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(_serve_main(sys.argv[1:]))
