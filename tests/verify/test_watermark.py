"""Tests of the rotation-watermark verifier and of ``encoderguard verify watermark`` on tiny digits checkpoints.

The owner (``tests.verify.owners.save_owner``) learnt the rotation task; its verification set is drawn with a fixed
secret key written next to the checkpoint. Eight tiny independent encoders (random initialisations and briefly
trained ones on the owner's ``query`` split) serve as reference models.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from scipy import stats
from tests.conftest import tiny_encoder
from tests.verify.owners import KEY, SPEC, reference_encoders, references, save_owner, save_reference_set

from encoderguard.api import LocalAPI
from encoderguard.data import SplitSpec, load_split
from encoderguard.errors import APIError, CheckpointError, DataError
from encoderguard.models import load_checkpoint, load_encoder
from encoderguard.models.random_init import random_init_like
from encoderguard.models.verify_key import VERIFY_KEY_FILE, VerifyKey
from encoderguard.train.watermark_task import VerificationSeeds, verification_rotations
from encoderguard.verify.references import Reference
from encoderguard.verify.watermark import WatermarkVerifier

VERIFY_SEED = 4242


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_owner(tmp_path_factory.mktemp("wm") / "owner", steps=80)


@pytest.fixture(scope="module")
def owner_api(owner: Path) -> LocalAPI:
    return LocalAPI(load_encoder(owner))


@pytest.fixture(scope="module")
def encoders() -> list[tuple[str, torch.nn.Module]]:
    return reference_encoders()


@pytest.fixture(scope="module")
def refs(encoders) -> list[Reference]:
    return references(encoders)


@pytest.fixture(scope="module")
def refs_dir(encoders, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_reference_set(tmp_path_factory.mktemp("refs") / "refs", encoders).folder


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


def test_without_references_a_strong_owner_is_inconclusive(owner, owner_api):
    verifier = WatermarkVerifier(owner, max_queries=300)
    mine = verifier.verify(owner_api)
    details = mine.details
    assert mine.method == "watermark" and mine.verdict == "inconclusive"
    assert not details["calibrated"] and details["calibration"] == "none" and details["reference_scores"] == {}
    # the binomial test alone would flag it, but it is reported, not acted on
    assert mine.p_value == details["binomial_p_value"] < 1e-4 and mine.statistic > 0.6
    assert details["binomial_p_value"] == pytest.approx(
        stats.binomtest(details["correct"], 300, 0.5, alternative="greater").pvalue)
    assert "reference models" in details["reason"] and "references build" in details["reason"]
    assert details["reason"] in mine.warnings and details["can_detect"]
    assert mine.effect == pytest.approx(mine.statistic - 0.5)
    assert details["owner_accuracy"] == pytest.approx(mine.statistic)  # the owner is its own suspect
    assert details["scale"] == pytest.approx(1.0)
    strict = WatermarkVerifier(owner, max_queries=300, null_accuracy=0.6).verify(owner_api)
    assert strict.details["binomial_p_value"] == pytest.approx(
        stats.binomtest(details["correct"], 300, 0.6, alternative="greater").pvalue)
    assert strict.p_value > mine.p_value and strict.effect == pytest.approx(mine.statistic - 0.6)
    for seed in (1, 2):  # an encoder the binomial test does not flag stays "independent"
        other = verifier.verify(LocalAPI(random_init_like(load_encoder(owner), seed=seed)))
        assert other.verdict == "independent" and other.p_value > 0.01
        assert abs(other.statistic - 0.5) < 0.1


def test_with_references_the_owner_is_stolen_and_random_init_is_not(owner, owner_api, refs):
    verifier = WatermarkVerifier(owner, references=refs, max_queries=300)
    mine = verifier.verify(owner_api)
    details = mine.details
    assert mine.verdict == "stolen" and details["calibrated"] and details["calibration"] == "prediction"
    scores = list(details["reference_scores"].values())
    assert len(scores) == 8 and details["references_skipped"] == {}
    # the prediction test by hand: t = (x - m) / (s sqrt(1 + 1/K)), s floored at the binomial sd at 0.5, df K - 1
    mean, floor = statistics.fmean(scores), math.sqrt(0.25 / 300)
    sd = max(statistics.stdev(scores), floor)
    expected = stats.t.sf((mine.statistic - mean) / (sd * math.sqrt(1 + 1 / 8)), 7)
    assert mine.p_value == pytest.approx(expected, rel=1e-9) and mine.p_value < 0.01
    assert details["binomial_p_value"] < mine.p_value  # the binomial null overstates the evidence
    assert mine.effect == pytest.approx(mine.statistic - mean) and details["reference_mean"] == pytest.approx(mean)
    assert details["can_detect"] and details["owner_p_value"] < 0.01 and details["reason"] is None
    assert not any("reference models:" in w for w in mine.warnings)  # 8 references: no small-set warning
    for seed in (1, 2):
        other = verifier.verify(LocalAPI(random_init_like(load_encoder(owner), seed=seed)))
        assert other.verdict == "independent" and other.p_value > 0.01 and other.details["calibrated"]


def test_rank_test_when_there_are_enough_references(owner, owner_api, refs):
    # alpha 0.2: K + 1 = 9 > 1 / alpha, so the exact rank test decides; the owner beats all 8 references
    verifier = WatermarkVerifier(owner, references=refs, max_queries=300, alpha=0.2)
    mine = verifier.verify(owner_api)
    assert mine.details["calibration"] == "rank" and mine.p_value == pytest.approx(1 / 9)
    assert mine.verdict == "stolen"
    other = verifier.verify(LocalAPI(tiny_encoder(7)))
    scores = mine.details["reference_scores"].values()
    assert other.p_value == pytest.approx((1 + sum(s >= other.statistic for s in scores)) / 9)
    assert other.verdict == "independent"
    # the rank test is used only once it can reach alpha: K + 1 > 1 / alpha (5 references at alpha 0.2, not 4)
    for k, how in ((4, "prediction"), (5, "rank")):
        verdict = WatermarkVerifier(owner, references=refs[:k], max_queries=300, alpha=0.2).verify(owner_api)
        assert verdict.details["calibration"] == how


def test_few_or_unusable_references(owner, owner_api, refs):
    three = WatermarkVerifier(owner, references=refs[:3], max_queries=300).verify(owner_api)
    assert three.details["calibration"] == "prediction" and len(three.details["reference_scores"]) == 3
    assert any("only 3 reference models" in w for w in three.warnings)
    # a reference of another representation size is left out, with the reason
    wide = Reference("wide", LocalAPI(tiny_encoder(9, embed_dim=8)))
    two = WatermarkVerifier(owner, references=[*refs[:2], wide], max_queries=300).verify(owner_api)
    assert set(two.details["references_skipped"]) == {"wide"} and "8-d" in two.details["references_skipped"]["wide"]
    assert two.verdict == "inconclusive" and not two.details["calibrated"]
    assert "2 usable reference models" in two.details["reason"]


def test_owner_without_signal_is_inconclusive(tmp_path, owner_api, refs):
    weak = save_owner(tmp_path / "weak", steps=0)  # head and encoder never trained
    for references_ in ((), refs):
        verdict = WatermarkVerifier(weak, references=references_, max_queries=200).verify(owner_api)
        assert verdict.verdict == "inconclusive" and not verdict.details["can_detect"]
        assert "cannot detect a copy" in verdict.details["reason"]
        assert any("owner's own watermark does not stand out" in w for w in verdict.warnings)


def test_verification_set_is_balanced_secret_and_deterministic(owner, owner_api):
    verifier = WatermarkVerifier(owner, max_queries=301)
    rotated, labels, decoys, info = verifier.verification_images()
    assert len(labels) == 300 and int(labels.sum()) == 150 and len(decoys) == 0
    assert info["source"] == "digits:owner-heldout"
    heldout = load_split(SPEC.with_split("owner-heldout"))
    train = load_split(SPEC)
    # built from held-out images only: the pool shares no image with the training split
    train_rows = {bytes(row.numpy()) for row in train.images.flatten(1)}
    assert not any(bytes(row.numpy()) in train_rows for row in heldout.images.flatten(1))
    # drawn with the key in the owner's directory: images, angles and order follow from it
    expected, expected_labels, _ = verification_rotations(heldout.float(), 300, VerificationSeeds.from_key(KEY))
    assert torch.equal(rotated, expected) and torch.equal(labels, expected_labels)
    a, b = verifier.verify(owner_api), verifier.verify(owner_api)
    assert a.to_dict() == b.to_dict()
    assert a.details["class_balance"] == {"rotated_0_180": 150, "rotated_180_360": 150}
    assert a.details["verification_draw"] == f"secret key {KEY.fingerprint}"
    assert not any("public card" in w or "is not the one" in w for w in a.warnings)
    same = WatermarkVerifier(owner, max_queries=301, key=VerifyKey.load(owner / VERIFY_KEY_FILE))
    assert torch.equal(same.verification_images()[0], rotated)
    # the public card holds the fingerprint, never the key
    card_text = (owner / "card.json").read_text()
    assert KEY.fingerprint in card_text and KEY.key.hex() not in card_text and "verify_seed" not in card_text
    # another key, or a seed, gives other images and rotations
    other_key = VerifyKey(bytes(range(1, 33)))
    by_other_key = WatermarkVerifier(owner, max_queries=301, key=other_key)
    assert not torch.equal(by_other_key.verification_images()[0], rotated)
    assert any("is not the one" in w for w in by_other_key.verify(owner_api).warnings)
    by_seed = WatermarkVerifier(owner, max_queries=301, seed=VERIFY_SEED)
    assert not torch.equal(by_seed.verification_images()[0], rotated)
    assert by_seed.verify(owner_api).details["verification_draw"] == f"seed {VERIFY_SEED} (not secret)"


def test_old_card_with_a_public_seed_still_works_with_a_warning(tmp_path, owner_api, refs):
    old = save_owner(tmp_path / "old", steps=80, key=False, verify_seed=VERIFY_SEED)
    assert not (old / VERIFY_KEY_FILE).exists()
    verifier = WatermarkVerifier(old, references=refs, max_queries=300)
    rotated = verifier.verification_images()[0]
    assert torch.equal(rotated, WatermarkVerifier(old, max_queries=300, seed=VERIFY_SEED).verification_images()[0])
    verdict = verifier.verify(LocalAPI(load_encoder(old)))
    assert verdict.verdict == "stolen" and verdict.details["calibrated"]
    assert verdict.details["verification_draw"] == f"the card's public verify_seed {VERIFY_SEED}"
    assert any("seed stored in the public card" in w for w in verdict.warnings)


def test_no_key_and_no_seed_is_refused(tmp_path):
    keyless = save_owner(tmp_path / "keyless", steps=0, key=False)
    with pytest.raises(CheckpointError, match="no verification key"):
        WatermarkVerifier(keyless)
    assert WatermarkVerifier(keyless, key=KEY).seeds == VerificationSeeds.from_key(KEY)


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
    from encoderguard.models.probe import encode

    pred = plain._predict(encode(sym, r0) * before.details["scale"])
    assert after.details["accuracy_mirrored"] == pytest.approx(1 - float((pred[mask] == l0[mask]).float().mean()))
    assert after.details["mirror"] and after.details["mirrored"] == 100


def test_budget_is_respected_and_queries_are_shuffled_with_decoys(owner, owner_api):
    api = RecordingAPI(owner_api)
    verifier = WatermarkVerifier(owner, max_queries=101, decoys=0.2)
    verdict = verifier.verify(api)
    assert verdict.queries_used == api.queries_used <= 101
    assert verdict.n == 80 and verdict.details["decoys"] == 20
    sent = api.requests[0]
    decoy_images = verifier.verification_images()[2]
    assert len(decoy_images) == 20
    positions = [int(torch.nonzero((sent == d).flatten(1).all(1))[0]) for d in decoy_images]
    assert max(positions) - min(positions) > 20 and sorted(positions) != list(range(80, 100))
    assert WatermarkVerifier(owner, max_queries=10).verify(owner_api).queries_used == 10


def test_references_receive_the_same_batch_as_the_suspect(owner, owner_api, encoders):
    recorders = [RecordingAPI(LocalAPI(encoder)) for _, encoder in encoders[:3]]
    refs = [Reference(f"r{i}", api) for i, api in enumerate(recorders)]
    suspect = RecordingAPI(owner_api)
    verifier = WatermarkVerifier(owner, references=refs, max_queries=60, decoys=0.1)
    verifier.verify(suspect)
    verifier.verify(suspect)  # the references are read once per verifier
    assert all(len(r.requests) == 1 and torch.equal(r.requests[0], suspect.requests[0]) for r in recorders)


def test_scale_of_the_suspect_is_matched(owner, owner_api):
    plain = WatermarkVerifier(owner, max_queries=200).verify(owner_api)
    scaled = WatermarkVerifier(owner, max_queries=200).verify(RecordingAPI(owner_api, scale=25.0))
    assert scaled.details["scale"] == pytest.approx(1 / 25.0, rel=1e-5)
    assert scaled.statistic == plain.statistic
    raw = WatermarkVerifier(owner, max_queries=200, match_scale=False).verify(RecordingAPI(owner_api, scale=25.0))
    assert raw.details["scale"] == 1.0 and raw.details["accuracy_unscaled"] == raw.statistic


def test_card_and_head_without_encoder(owner, owner_api, refs):
    ckpt = load_checkpoint(owner)
    with pytest.raises(CheckpointError, match="--watermark"):
        WatermarkVerifier(ckpt.card)  # a card alone carries no head
    with pytest.raises(CheckpointError, match="no verification key"):
        WatermarkVerifier(ckpt.card, head=ckpt.watermark_head)  # nor the key, which sits in the owner's directory
    verdict = WatermarkVerifier(ckpt.card, head=ckpt.watermark_head, key=KEY, references=refs,
                                max_queries=200).verify(owner_api)
    assert verdict.verdict == "stolen" and verdict.details["owner_accuracy"] is None
    assert verdict.details["owner_p_value"] is None and verdict.details["can_detect"]
    assert any("no owner representation norm" in w for w in verdict.warnings)
    # with the owner's norm in the card, a rescaled suspect is read at the owner's scale
    norm = verdict.details["suspect_mean_norm"]
    card = replace(ckpt.card, watermark={**ckpt.card.watermark, "embed_norm": norm})
    scaled = WatermarkVerifier(card, head=ckpt.watermark_head, key=KEY, references=refs, max_queries=200).verify(
        RecordingAPI(owner_api, scale=0.01))
    assert scaled.details["scale"] == pytest.approx(100.0, rel=1e-4) and not scaled.warnings
    assert scaled.statistic == verdict.statistic
    # without the encoder, the owner gate reads the card's measured accuracy
    chance = replace(ckpt.card, watermark={**ckpt.card.watermark, "heldout_acc": 0.5, "heldout_n": 300})
    gated = WatermarkVerifier(chance, head=ckpt.watermark_head, key=KEY, references=refs,
                              max_queries=200).verify(owner_api)
    assert gated.verdict == "inconclusive" and "card heldout_acc 0.500 on 300 images" in gated.details["reason"]


def test_watermarked_training_records_what_the_verifier_needs(tmp_path):
    from encoderguard.train.run import train_to_dir
    from encoderguard.train.simclr import SimCLRConfig

    out = tmp_path / "wm"
    spec = SplitSpec("digits", "owner-train", 0, 64)
    train_to_dir(data=spec, arch="convnet", arch_kwargs={"width": 4, "depth": 2, "embed_dim": 16},
                 config=SimCLRConfig(epochs=1, batch_size=64, watermark_weight=1.0, seed=5), out_dir=out,
                 probe=False, progress=False)
    ckpt = load_checkpoint(out)
    wm = ckpt.card.watermark
    key_path = out / VERIFY_KEY_FILE
    assert key_path.is_file() and key_path.stat().st_mode & 0o777 == 0o600
    key = VerifyKey.load(key_path)
    assert wm["verify_key_fingerprint"] == key.fingerprint and wm["verify_key_file"] == VERIFY_KEY_FILE
    assert "verify_seed" not in wm and key.key.hex() not in (out / "card.json").read_text()
    assert wm["verify_split"] == "owner-heldout" and wm["heldout_n"] == 674 - 64
    assert wm["embed_norm"] > 0 and "watermark_head" in ckpt.card.heads
    # the verifier reads the key from the directory and reproduces the card's measured accuracy on the same set
    whole = WatermarkVerifier(out, max_queries=wm["heldout_n"]).verify(LocalAPI(ckpt.encoder))
    assert whole.details["verification_draw"] == f"secret key {key.fingerprint}" and whole.n == wm["heldout_n"]
    assert whole.details["owner_accuracy"] == pytest.approx(wm["heldout_acc"])
    assert not any("is not the one" in w for w in whole.warnings)
    verdict = WatermarkVerifier(ckpt.card, head=ckpt.watermark_head, key=key, max_queries=50).verify(
        LocalAPI(ckpt.encoder))
    assert verdict.details["scale"] == pytest.approx(wm["embed_norm"] / verdict.details["suspect_mean_norm"])
    assert verdict.n == 50 and verdict.queries_used == 50


@pytest.fixture(scope="module")
def unmarked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_owner(tmp_path_factory.mktemp("plain") / "owner", steps=0, watermark=False)


def test_owner_without_watermark_head(unmarked):
    with pytest.raises(CheckpointError, match="train the owner with --watermark"):
        WatermarkVerifier(unmarked)


def test_training_split_overlapping_heldout_is_refused(tmp_path):
    owner = save_owner(tmp_path / "o", steps=0, spec=SplitSpec("digits", "train", 0, 300))
    with pytest.raises(DataError, match="overlaps owner-heldout"):
        WatermarkVerifier(owner).verification_images()


def test_suspect_of_another_size_or_input_shape(owner):
    with pytest.raises(ValueError, match="head needs the owner's input format and representation size"):
        WatermarkVerifier(owner).verify(LocalAPI(tiny_encoder(0, embed_dim=8)))
    from encoderguard.models import create_encoder

    other_shape = create_encoder("convnet", input_shape=(1, 9, 9), embed_dim=16, width=2, depth=1)
    with pytest.raises(ValueError, match="owner's watermark inputs"):
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


def _cli(capsys, *argv: str) -> tuple[int, dict | None, str]:
    from encoderguard.cli.main import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_cli_verify_watermark_contract(owner, unmarked, refs_dir, tmp_path, capsys):
    base = ["verify", "watermark", "--owner", str(owner), "--suspect", str(owner)]
    code, result, err = _cli(capsys, *base, "--queries", "150", "--json")
    assert code == 0, err
    for key in ("method", "verdict", "p_value", "alpha", "effect", "n", "queries_used", "statistic", "details",
                "warnings", "suspect", "references"):
        assert key in result
    # no reference set given or registered with the owner: the binomial test alone never says "stolen"
    assert result["method"] == "watermark" and result["verdict"] == "inconclusive"
    assert result["details"]["calibration"] == "none" and "no reference set" in result["references"]
    assert result["n"] == 150 and result["queries_used"] == 150 and result["suspect"] == str(owner)

    code, result, err = _cli(capsys, *base, "--queries", "150", "--references", str(refs_dir), "--json")
    assert code == 0, err
    assert result["verdict"] == "stolen" and result["details"]["calibrated"]
    assert len(result["details"]["reference_scores"]) == 8 and str(refs_dir) in result["references"]

    code, result, err = _cli(capsys, *base, "--queries", "100", "--mirror", "--decoys", "0.2", "--seed", "7", "--json")
    assert code == 0, err
    assert result["n"] == 80 and result["queries_used"] == 100
    assert result["details"]["mirrored"] == 40 and result["details"]["decoys"] == 20
    assert result["details"]["verification_draw"] == "seed 7 (not secret)"

    other = VerifyKey(bytes(range(2, 34))).save(tmp_path / "other-key.json")
    code, result, err = _cli(capsys, *base, "--queries", "100", "--verify-key", str(other), "--json")
    assert code == 0, err
    assert result["details"]["verification_draw"] == f"secret key {VerifyKey.load(other).fingerprint}"
    assert any("is not the one" in w for w in result["warnings"])

    code, _, err = _cli(capsys, "verify", "watermark", "--owner", str(unmarked), "--suspect", str(owner), "--json")
    assert code == 2 and "train the owner with --watermark" in err
    code, _, err = _cli(capsys, *base, "--references", str(tmp_path / "nowhere"), "--json")
    assert code == 2 and "no reference set" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(capsys, *base, "--verify-key", str(tmp_path / "missing.json"), "--json")
    assert code == 2 and "verification key not found" in err
