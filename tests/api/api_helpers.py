"""Helpers of the API tests: a hand-made 2-layer encoder on 1x8x8 images, request builders."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

INPUT_SHAPE = (1, 8, 8)
DIM = 16
TEST_KDF_N = 2**8  # cheap scrypt for tests; the server reads each key's cost from the file


class TinyEncoder(nn.Module):
    """conv(1->4) -> ReLU -> max-pool -> linear(64->16): the encoder contract at toy size."""

    embed_dim = DIM
    input_shape = INPUT_SHAPE

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, DIM)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(int(x.shape[0]))
        z = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(z.flatten(1))


def images(n: int, *, seed: int = 0, uint8: bool = False) -> torch.Tensor:
    """``n`` random images in [0, 1] (exact multiples of 1/255 when ``uint8``)."""
    g = torch.Generator().manual_seed(seed)
    if uint8:
        return torch.randint(0, 256, (n, *INPUT_SHAPE), generator=g).to(torch.float32) / 255.0
    return torch.rand((n, *INPUT_SHAPE), generator=g)


def raw_body(array: np.ndarray, dtype: str = "float32", shape: list[int] | None = None) -> dict[str, Any]:
    wire = {"float32": "<f4", "uint8": "u1", "float64": "<f8"}[dtype]
    data = base64.b64encode(np.ascontiguousarray(array.astype(wire)).tobytes()).decode()
    return {"dtype": dtype, "shape": list(shape if shape is not None else array.shape), "data": data}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Served:
    """An app with its keys (name -> plaintext key) and files."""

    app: Any
    keys: dict[str, str]
    key_ids: dict[str, str]
    keys_path: Path
    ledger_path: Path

    def ledger_summary(self) -> dict[str, Any]:
        from encoderguard.api.ledger import Ledger

        with Ledger(self.ledger_path, create=False) as ledger:
            return ledger.summary()
