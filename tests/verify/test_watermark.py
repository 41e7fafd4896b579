"""Tests of the rotation-watermark verifier and of ``encoderguard verify watermark`` on tiny digits checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import binomtest
from tests.conftest import tiny_encoder

from encoderguard.api import LocalAPI
from encoderguard.data import SplitSpec, load_split
from encoderguard.errors import APIError, CheckpointError, DataError
from encoderguard.models import ModelCard, load_checkpoint, load_encoder, save_checkpoint, watermark_head
from encoderguard.train.evaluate import random_init_like
from encoderguard.train.watermark_task import rotation_batch
from encoderguard.verify.watermark import WatermarkVerifier

SPEC = SplitSpec("digits", "owner-train", 0, 300)  # owner-heldout then holds the other 374 owner images
VERIFY_SEED = 4242


def _save_owner(out: Path, *, steps: int, spec: SplitSpec = SPEC, watermark: bool = True) -> Path:
    """A tiny owner whose encoder and head learnt the rotation task on owner-train (a stand-in for joint SSL
    training: the verifier only needs a checkpoint whose head reads the watermark from the representation)."""
    images = load_split(spec).float()
    encoder = tiny_encoder(0, embed_dim=16)
    torch.manual_seed(0)
    head = watermark_head(16, hidden_dim=16)
    optimiser = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = images[torch.randperm(len(images), generator=generator)[:128]]
        rotated, labels = rotation_batch(batch, generator=generator)
        loss = F.cross_entropy(head(encoder(rotated)), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    encoder.eval()
    card = ModelCard(arch=encoder.arch, arch_kwargs=encoder.arch_kwargs, input_shape=encoder.input_shape,
                     embed_dim=16, data=spec.to_dict())
    if watermark:
        card = replace(card, heads={"watermark_head": {"hidden_dim": 16}},
                       watermark={"task": "rotation-0-180-vs-180-360", "weight": 1.0, "heldout_acc": None,
                                  "heldout_n": None, "verify_split": "owner-heldout", "verify_seed": VERIFY_SEED})
    save_checkpoint(out, encoder=encoder, card=card, watermark_head=head if watermark else None)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine its barrier waits cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_owner(tmp_path_factory.mktemp("wm") / "owner", steps=80)


@pytest.fixture(scope="module")
def owner_api(owner: Path) -> LocalAPI:
    return LocalAPI(load_encoder(owner))


class RecordingAPI:
    """Wraps an API; records requests and can corrupt the answers."""

    def __init__(self, inner: LocalAPI, *, corrupt: str | None = None, scale: float = 1.0) -> None:
        self.inner, self.corrupt, self.scale, self.requests = inner, corrupt, scale, []
        self.dim, self.input_shape = inner.dim, inner.input_shape
        self.used = 0

    @property
    def queries_used(self) -> int:
        return self.used

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        self.requests.append(inputs.clone())
        self.used += len(inputs)
        out = self.inner.embed(inputs) * self.scale
        if self.corrupt == "nan":
            out[3, 0] = float("nan")
        elif self.corrupt == "count":
            out = out[:-1]
        return out


def test_owner_is_stolen_and_random_init_is_not(owner, owner_api):
    verifier = WatermarkVerifier(owner, max_queries=300)
    mine = verifier.verify(owner_api)
    assert mine.method == "watermark" and mine.verdict == "stolen"
    assert mine.p_value < 1e-4 and mine.statistic > 0.6
    assert mine.effect == pytest.approx(mine.statistic - 0.5)
    assert mine.details["owner_accuracy"] == pytest.approx(mine.statistic)  # the owner is its own suspect
    assert mine.details["scale"] == pytest.approx(1.0)
    strict = WatermarkVerifier(owner, max_queries=300, null_accuracy=0.6).verify(owner_api)
    assert strict.p_value == pytest.approx(binomtest(mine.details["correct"], 300, 0.6, alternative="greater").pvalue)
    assert strict.p_value > mine.p_value and strict.effect == pytest.approx(mine.statistic - 0.6)
    for seed in (1, 2):
        other = verifier.verify(LocalAPI(random_init_like(load_encoder(owner), seed=seed)))
        assert other.verdict == "independent" and other.p_value > 0.01
        assert abs(other.statistic - 0.5) < 0.1


def test_verification_set_is_balanced_secret_and_deterministic(owner, owner_api):
    verifier = WatermarkVerifier(owner, max_queries=301)
    rotated, labels, decoys, info = verifier.verification_images()
    assert len(labels) == 300 and int(labels.sum()) == 150 and len(decoys) == 0
    assert info["source"] == "digits:owner-heldout"
    heldout = load_split(SPEC.with_split("owner-heldout"))
    train = load_split(SPEC)
    # built from held-out images only: none of the training images appears among the sources
    train_rows = {bytes(row.numpy()) for row in train.images.flatten(1)}
    assert not any(bytes(row.numpy()) in train_rows for row in heldout.images[:300].flatten(1))
    a, b = verifier.verify(owner_api), verifier.verify(owner_api)
    assert a.to_dict() == b.to_dict()
    assert a.details["class_balance"] == {"rotated_0_180": 150, "rotated_180_360": 150}
    assert a.details["verification_seed"] == VERIFY_SEED
    # another seed gives other rotations
    r2, l2, _, _ = WatermarkVerifier(owner, max_queries=301, seed=VERIFY_SEED + 1).verification_images()
    assert not torch.equal(r2, rotated)


class Mirrored(torch.nn.Module):
    """An encoder made exactly mirror-invariant: ``f(x) + f(flip(x))``."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.embed_dim, self.input_shape = inner, inner.embed_dim, inner.input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + self.inner(x.flip(-1))


def test_mirror_balanced_set(owner, owner_api):
    plain = WatermarkVerifier(owner, max_queries=200)
    mirrored = WatermarkVerifier(owner, max_queries=200, mirror=True)
    r0, l0, _, i0 = plain.verification_images()
    r1, l1, _, i1 = mirrored.verification_images()
    mask = i1["mirrored"]
    assert int(mask.sum()) == 100 and int(mask[l0 == 0].sum()) == 50 and not i0["mirrored"].any()
    assert int(l1.sum()) == 100  # still balanced
    assert torch.equal(r1[mask], r0[mask].flip(-1)) and torch.equal(r1[~mask], r0[~mask])
    assert torch.equal(l1[mask], 1 - l0[mask]) and torch.equal(l1[~mask], l0[~mask])
    # a mirror-invariant suspect answers a mirrored image as the original, so it is right on exactly the mirrored
    # images it got wrong before: its mirrored half cannot carry a bias
    sym = Mirrored(load_encoder(owner)).eval()
    before = plain.verify(LocalAPI(sym))
    after = mirrored.verify(LocalAPI(sym))
    from encoderguard.train.probe import encode

    pred = plain._predict(encode(sym, r0) * before.details["scale"])
    assert after.details["accuracy_mirrored"] == pytest.approx(1 - float((pred[mask] == l0[mask]).float().mean()))
    assert after.details["mirror"] and after.details["mirrored"] == 100


def test_budget_is_respected_and_queries_are_shuffled_with_decoys(owner, owner_api):
    api = RecordingAPI(owner_api)
    verdict = WatermarkVerifier(owner, max_queries=101, decoys=0.2).verify(api)
    assert verdict.queries_used == api.queries_used <= 101
    assert verdict.n == 80 and verdict.details["decoys"] == 20
    sent = api.requests[0]
    heldout = load_split(SPEC.with_split("owner-heldout"))
    decoy_images = heldout.float(slice(80, 100))
    positions = [int(torch.nonzero((sent == d).flatten(1).all(1))[0]) for d in decoy_images]
    assert max(positions) - min(positions) > 20 and sorted(positions) != list(range(80, 100))
    assert WatermarkVerifier(owner, max_queries=10).verify(owner_api).queries_used == 10


def test_scale_of_the_suspect_is_matched(owner, owner_api):
    plain = WatermarkVerifier(owner, max_queries=200).verify(owner_api)
    scaled = WatermarkVerifier(owner, max_queries=200).verify(RecordingAPI(owner_api, scale=25.0))
    assert scaled.details["scale"] == pytest.approx(1 / 25.0, rel=1e-5)
    assert scaled.statistic == plain.statistic
    raw = WatermarkVerifier(owner, max_queries=200, match_scale=False).verify(RecordingAPI(owner_api, scale=25.0))
    assert raw.details["scale"] == 1.0 and raw.details["accuracy_unscaled"] == raw.statistic


def test_card_and_head_without_encoder(owner, owner_api):
    ckpt = load_checkpoint(owner)
    with pytest.raises(CheckpointError, match="--watermark"):
        WatermarkVerifier(ckpt.card)  # a card alone carries no head
    verdict = WatermarkVerifier(ckpt.card, head=ckpt.watermark_head, max_queries=200).verify(owner_api)
    assert verdict.verdict == "stolen" and verdict.details["owner_accuracy"] is None
    assert any("no owner representation norm" in w for w in verdict.warnings)
    # with the owner's norm in the card, a rescaled suspect is read at the owner's scale
    norm = verdict.details["suspect_mean_norm"]
    card = replace(ckpt.card, watermark={**ckpt.card.watermark, "embed_norm": norm})
    scaled = WatermarkVerifier(card, head=ckpt.watermark_head, max_queries=200).verify(
        RecordingAPI(owner_api, scale=0.01))
    assert scaled.details["scale"] == pytest.approx(100.0, rel=1e-4) and not scaled.warnings
    assert scaled.statistic == verdict.statistic


def test_watermarked_training_records_what_the_verifier_needs(tmp_path):
    from encoderguard.train.run import train_to_dir
    from encoderguard.train.simclr import SimCLRConfig

    out = tmp_path / "wm"
    spec = SplitSpec("digits", "owner-train", 0, 64)
    train_to_dir(data=spec, arch="convnet", arch_kwargs={"width": 4, "depth": 2, "embed_dim": 16},
                 config=SimCLRConfig(epochs=1, batch_size=64, watermark_weight=1.0), out_dir=out, probe=False,
                 progress=False)
    ckpt = load_checkpoint(out)
    wm = ckpt.card.watermark
    assert wm["verify_split"] == "owner-heldout" and isinstance(wm["verify_seed"], int)
    assert wm["heldout_n"] == 674 - 64 and wm["embed_norm"] > 0 and "watermark_head" in ckpt.card.heads
    verdict = WatermarkVerifier(ckpt.card, head=ckpt.watermark_head, max_queries=50).verify(LocalAPI(ckpt.encoder))
    assert verdict.details["scale"] == pytest.approx(wm["embed_norm"] / verdict.details["suspect_mean_norm"])
    assert verdict.n == 50 and verdict.queries_used == 50


def test_owner_without_signal_is_inconclusive(tmp_path, owner_api):
    weak = _save_owner(tmp_path / "weak", steps=0)  # head and encoder never trained
    verdict = WatermarkVerifier(weak, max_queries=200).verify(owner_api)
    assert verdict.verdict == "inconclusive"
    assert any("owner's own watermark is not significant" in w for w in verdict.warnings)


@pytest.fixture(scope="module")
def unmarked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_owner(tmp_path_factory.mktemp("plain") / "owner", steps=0, watermark=False)


def test_owner_without_watermark_head(unmarked):
    with pytest.raises(CheckpointError, match="train the owner with --watermark"):
        WatermarkVerifier(unmarked)


def test_training_split_overlapping_heldout_is_refused(tmp_path):
    owner = _save_owner(tmp_path / "o", steps=0, spec=SplitSpec("digits", "train", 0, 300))
    with pytest.raises(DataError, match="overlaps owner-heldout"):
        WatermarkVerifier(owner).verification_images()


def test_suspect_of_another_size_or_input_shape(owner):
    with pytest.raises(ValueError, match="head needs the victim's representation size"):
        WatermarkVerifier(owner).verify(LocalAPI(tiny_encoder(0, embed_dim=8)))
    from encoderguard.models import create_encoder

    other_shape = create_encoder("convnet", input_shape=(1, 9, 9), embed_dim=16, width=2, depth=1)
    with pytest.raises(ValueError, match="owner's input format"):
        WatermarkVerifier(owner).verify(LocalAPI(other_shape))


@pytest.mark.parametrize(("corrupt", "match"), [("nan", "NaN or infinite values for 1 of"), ("count", "for 100")])
def test_bad_answers_raise_api_error(owner, owner_api, corrupt, match):
    with pytest.raises(APIError, match=match):
        WatermarkVerifier(owner, max_queries=100).verify(RecordingAPI(owner_api, corrupt=corrupt))


@pytest.mark.parametrize(("kwargs", "match"), [({"max_queries": 1}, "max_queries"), ({"alpha": 1.0}, "alpha"),
                                               ({"decoys": 1.0}, "decoys"), ({"seed": -1}, "seed"),
                                               ({"null_accuracy": 0.0}, "null_accuracy"),
                                               ({"max_queries": 4, "decoys": 0.9}, "fewer than 2")])
def test_bad_settings(owner, kwargs, match):
    with pytest.raises(ValueError, match=match):
        WatermarkVerifier(owner, **kwargs)


def test_cli_verify_watermark_contract(owner, unmarked, capsys):
    from encoderguard.cli.main import main

    code = main(["verify", "watermark", "--owner", str(owner), "--suspect", str(owner), "--queries", "150",
                 "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("method", "verdict", "p_value", "alpha", "effect", "n", "queries_used", "statistic", "details",
                "warnings", "suspect"):
        assert key in result
    assert result["method"] == "watermark" and result["verdict"] == "stolen"
    assert result["n"] == 150 and result["queries_used"] == 150 and result["suspect"] == str(owner)

    code = main(["verify", "watermark", "--owner", str(owner), "--suspect", str(owner), "--queries", "100",
                 "--mirror", "--decoys", "0.2", "--seed", "7", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 80 and result["queries_used"] == 100
    assert result["details"]["mirrored"] == 40 and result["details"]["decoys"] == 20
    assert result["details"]["verification_seed"] == 7

    code = main(["verify", "watermark", "--owner", str(unmarked), "--suspect", str(owner), "--json"])
    assert code == 2
    assert "train the owner with --watermark" in capsys.readouterr().err
