"""Tiny watermarked owners and reference models on sklearn's 8x8 digits, shared by the ownership-test tests.

Not a test module: imported as ``from tests.verify.owners import ...``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tests.conftest import tiny_encoder

from encoderguard.api import LocalAPI
from encoderguard.data import SplitSpec, load_split
from encoderguard.models import ModelCard, save_checkpoint, watermark_head
from encoderguard.models.verify_key import VERIFY_KEY_FILE, VerifyKey
from encoderguard.train.watermark_task import rotation_batch
from encoderguard.verify.references import Reference, ReferenceSet

SPEC = SplitSpec("digits", "owner-train", 0, 300)  # owner-heldout then holds the other 374 owner images
OWNER_SEED = 0  # the owner's training seed recorded in its card (references must never use it)
# A fixed key, so that the tests' verification set (and so their accuracies) never change between runs.
KEY = VerifyKey(bytes(range(32)))


def save_owner(out: Path, *, steps: int, spec: SplitSpec = SPEC, watermark: bool = True, key: bool = True,
               verify_seed: int | None = None, seed: int = OWNER_SEED, pool: str = "avg") -> Path:
    """A tiny owner whose encoder and head learnt the rotation task on ``spec`` (a stand-in for joint SSL training:
    the verifier only needs a checkpoint whose head reads the watermark from the representation).

    Args:
        out: the checkpoint directory.
        steps: Adam steps on the rotation task (0: an untrained owner, no watermark signal).
        spec: the owner's training split, recorded in the card.
        watermark: save a watermark head and the card's ``watermark`` section.
        key: write :data:`KEY` as ``watermark-verify-key.json`` and its fingerprint into the card.
        verify_seed: store this public seed in the card, as cards did before the secret key.
        seed: seeds the encoder, the head and the training batches.
        pool: the tiny ConvNet's pooling (``"flatten"`` gives a stronger watermark).
    """
    images = load_split(spec).float()
    encoder = tiny_encoder(seed, embed_dim=16, pool=pool)
    torch.manual_seed(seed)
    head = watermark_head(16, hidden_dim=16)
    optimiser = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = images[torch.randperm(len(images), generator=generator)[:128]]
        rotated, labels = rotation_batch(batch, generator=generator)
        loss = F.cross_entropy(head(encoder(rotated)), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    encoder.eval()
    card = ModelCard(arch=encoder.arch, arch_kwargs=encoder.arch_kwargs, input_shape=encoder.input_shape,
                     embed_dim=16, data=spec.to_dict(),
                     training={"method": "rotation", "seed": seed, "epochs": 1, "batch_size": 64})
    if watermark:
        section: dict[str, Any] = {"task": "rotation-0-180-vs-180-360", "weight": 1.0, "heldout_acc": None,
                                   "heldout_n": None, "verify_split": "owner-heldout"}
        if key:
            section.update(verify_key_file=VERIFY_KEY_FILE, verify_key_fingerprint=KEY.fingerprint)
        if verify_seed is not None:
            section["verify_seed"] = verify_seed
        card = replace(card, heads={"watermark_head": {"hidden_dim": 16}}, watermark=section)
    save_checkpoint(out, encoder=encoder, card=card, watermark_head=head if watermark else None)
    if watermark and key:
        KEY.save(out / VERIFY_KEY_FILE)
    return out


def reference_encoders(*, embed_dim: int = 16) -> list[tuple[str, torch.nn.Module]]:
    """Eight independent tiny encoders: four random initialisations, two trained briefly with labels and two as
    autoencoders on the owner's ``query`` split (disjoint from the owner's data), none from the owner's seed."""
    from encoderguard.train.autoencoder import train_autoencoder
    from encoderguard.train.supervised import train_supervised

    pool = load_split(SPEC.with_split("query"))
    out: list[tuple[str, torch.nn.Module]] = []
    for seed in (101, 102, 103, 104):
        out.append((f"random{seed}", tiny_encoder(seed, embed_dim=embed_dim).eval()))
    for seed, train in ((105, train_supervised), (106, train_supervised), (107, train_autoencoder),
                        (108, train_autoencoder)):
        encoder = tiny_encoder(seed, embed_dim=embed_dim)
        sample = pool.subset(torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:128],
                             name=f"query[128, seed {seed}]")
        train(encoder, sample, epochs=4, batch_size=32, seed=seed)
        out.append((f"{train.__name__.removeprefix('train_')}{seed}", encoder.eval()))
    return out


def references(encoders: list[tuple[str, torch.nn.Module]]) -> list[Reference]:
    """The encoders as in-memory :class:`Reference` models."""
    return [Reference(name, LocalAPI(encoder, key=f"reference:{name}")) for name, encoder in encoders]


def save_reference_set(folder: Path, encoders: list[tuple[str, torch.nn.Module]]) -> ReferenceSet:
    """Save the encoders as checkpoints and register them in a reference set at ``folder``."""
    refs = ReferenceSet.create(folder)
    for name, encoder in encoders:
        path = folder / name
        save_checkpoint(path, encoder=encoder, card=ModelCard(
            arch=encoder.arch, arch_kwargs=encoder.arch_kwargs, input_shape=encoder.input_shape,
            embed_dim=encoder.embed_dim, data=SPEC.with_split("query").to_dict()))
        refs.add_checkpoint(name, path, recipe="test")
    return refs
