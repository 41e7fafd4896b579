"""Fixtures of the defence tests: random answers and inputs at toy size, and a tiny encoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

DIM = 16
INPUT_SHAPE = (1, 8, 8)


class TinyEncoder(nn.Module):
    """flatten -> linear(64 -> 16): the encoder contract at toy size."""

    embed_dim = DIM
    input_shape = INPUT_SHAPE

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(64, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture
def answers() -> torch.Tensor:
    return torch.randn(64, DIM, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def inputs() -> torch.Tensor:
    return torch.randint(0, 256, (64, *INPUT_SHAPE), generator=torch.Generator().manual_seed(1)).float() / 255


@pytest.fixture
def encoder() -> TinyEncoder:
    return TinyEncoder()
