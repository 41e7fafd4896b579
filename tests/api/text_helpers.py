"""A tiny text encoder for the API tests: characters hashed into buckets, then a linear layer."""

from __future__ import annotations

import torch
from torch import nn

TEXT_DIM = 8
BUCKETS = 32


class FakeTextEncoder(nn.Module):
    """Bag of character buckets -> linear(32 -> 8); one token per white-space separated word."""

    modality = "text"
    input_shape = None
    embed_dim = TEXT_DIM
    max_tokens = 64
    model_name = "fake-text"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(BUCKETS, TEXT_DIM)
        self.calls: list[int] = []

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [max(1, len(text.split())) for text in texts]

    def forward(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(len(texts))
        counts = torch.zeros(len(texts), BUCKETS)
        for i, text in enumerate(texts):
            for ch in text:
                counts[i, ord(ch) % BUCKETS] += 1.0
        return self.fc(counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0))
