"""Heads that sit on a representation: the SimCLR projection head and the watermark head."""

from __future__ import annotations

from torch import nn


def projection_head(embed_dim: int, *, hidden_dim: int = 256, out_dim: int = 64) -> nn.Sequential:
    """SimCLR projection MLP ``D -> hidden -> out`` (the contrastive loss is computed on its output)."""
    if min(embed_dim, hidden_dim, out_dim) < 1:
        raise ValueError(f"head sizes must be >= 1, got {(embed_dim, hidden_dim, out_dim)}")
    return nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


def watermark_head(embed_dim: int, *, hidden_dim: int = 64, classes: int = 2) -> nn.Sequential:
    """Small MLP ``D -> hidden -> classes`` that reads the secret rotation task from a representation."""
    if min(embed_dim, hidden_dim) < 1 or classes < 2:
        raise ValueError(f"watermark head needs sizes >= 1 and >= 2 classes, got {(embed_dim, hidden_dim, classes)}")
    return nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, classes))
