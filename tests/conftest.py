"""Shared fixtures: tiny encoders and checkpoints built from sklearn's 8x8 digits (fast, offline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("ENCODERGUARD_NO_PROGRESS", "1")
# Tiny test models run faster on one thread than split over a busy machine's cores.
torch.set_num_threads(1)


def tiny_encoder(seed: int = 0, *, embed_dim: int = 16, pool: str = "avg"):
    from encoderguard.models import create_encoder

    torch.manual_seed(seed)
    return create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=embed_dim, width=4, depth=2, pool=pool)


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A briefly trained digits encoder saved as a checkpoint directory (train_size 200, 1 epoch)."""
    from encoderguard.data import SplitSpec
    from encoderguard.train.run import train_to_dir
    from encoderguard.train.simclr import SimCLRConfig

    out = tmp_path / "tiny"
    train_to_dir(data=SplitSpec("digits", "owner-train", 0, 200), arch="convnet",
                 arch_kwargs={"width": 4, "depth": 2, "embed_dim": 16}, config=SimCLRConfig(epochs=1, batch_size=64),
                 out_dir=out, probe=False, progress=False)
    return out
