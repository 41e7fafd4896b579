"""Shared helpers of the API benchmarks (api_throughput.py, api_load.py, api_durability.py).

Also runnable: ``python benchmarks/_api_common.py serve --port 0 --keys K --ledger L`` serves the default random-init
ConvNet (1x28x28 -> 128) when no checkpoint directory is at hand; with a checkpoint use ``encoderguard serve``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

INPUT_SHAPE = (1, 28, 28)
EMBED_DIM = 128
HERE = Path(__file__).resolve().parent


class FallbackConvNet(nn.Module):
    """Used only if ``encoderguard.models.ConvNet`` is missing: 4 conv-BN-ReLU blocks (32/64/128/128), avg, linear."""

    embed_dim = EMBED_DIM
    input_shape = INPUT_SHAPE

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for i, out in enumerate((32, 64, 128, 128)):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, EMBED_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def default_encoder(seed: int = 0) -> nn.Module:
    """A random-init ConvNet of realistic size for Fashion-MNIST: 1x28x28 -> 128 (the project's default arch)."""
    torch.manual_seed(seed)
    try:
        from encoderguard.models import ConvNet

        return ConvNet(input_shape=INPUT_SHAPE, embed_dim=EMBED_DIM, width=32, depth=4)
    except ImportError:
        return FallbackConvNet()


def load_encoder_or_default(encoder_dir: str | None) -> nn.Module:
    if encoder_dir is None:
        return default_encoder()
    from encoderguard.models import load_encoder

    return load_encoder(encoder_dir)


def default_checkpoint(out_dir: Path) -> str | None:
    """Save :func:`default_encoder` as a checkpoint directory (so that ``encoderguard serve`` can load it);
    ``None`` if this build cannot write checkpoints."""
    try:
        from encoderguard.models import ModelCard, save_checkpoint
    except ImportError:
        return None
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
                 log: Path | None = None, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """Start a server process on 127.0.0.1 (ephemeral port) and return it with its URL."""
    if encoder_dir is not None:
        cmd = [sys.executable, "-m", "encoderguard.cli.main", "serve", "--encoder", encoder_dir]
    else:
        cmd = [sys.executable, str(HERE / "_api_common.py"), "serve"]
    cmd += ["--port", "0", "--keys", str(keys), "--ledger", str(ledger), *(extra or [])]
    stderr_file = open(log or os.devnull, "a")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        stderr_file.write(line)
        match = re.search(r"listening on (http://[^\s]+)", line)
        if match:
            _drain(proc, stderr_file)
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError(f"server did not start: {' '.join(cmd)}")


def _drain(proc: subprocess.Popen, sink: Any) -> None:
    """Keep reading the child's stderr so that it never blocks on a full pipe."""
    import threading

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            sink.write(line)
        sink.close()

    threading.Thread(target=pump, daemon=True).start()


def wait_healthy(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} is not healthy")


def _serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="serve the default random-init ConvNet")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--max-body-mb", type=float, default=32.0)
    parser.add_argument("--synchronous", default="FULL")
    args = parser.parse_args(argv)
    from encoderguard.api.server import run_server

    run_server(default_encoder(), keys_path=args.keys, ledger_path=args.ledger, port=args.port,
               max_batch=args.max_batch, max_body_bytes=int(args.max_body_mb * 2**20), synchronous=args.synchronous,
               on_bind=lambda url: print(f"benchmark server: listening on {url}", file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(_serve_main(sys.argv[1:]))
