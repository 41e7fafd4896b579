"""Verifying the serving-time watermark: copies of the watermarked API stand out from reference models, copies of
the clean model and independent encoders do not, and the p-value is calibrated on the references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.conftest import tiny_encoder

from encoderguard.api import LocalAPI
from encoderguard.attacks.output_transforms import create_transform
from encoderguard.cli.main import main
from encoderguard.data import SplitSpec, load_split
from encoderguard.defences import OutputWatermark, OutputWatermarkKey
from encoderguard.models import ModelCard, save_checkpoint
from encoderguard.models.mlp import MLPEncoder
from encoderguard.train.autoencoder import train_autoencoder
from encoderguard.train.supervised import train_supervised
from encoderguard.verify.output_watermark import OutputWatermarkVerifier, calibrated_z_p_value, watermark_score
from encoderguard.verify.references import Reference
from encoderguard.verify.stats import prediction_p_value, rank_p_value

SPEC = SplitSpec("digits", "owner-train", 0, 300)
PROBES = SplitSpec("digits", "test")  # 449 images: 150 probes + 299 alignment candidates
SECRET = bytes(range(32))


def _distil(teacher: LocalAPI, seed: int, *, steps: int = 1200) -> torch.nn.Module:
    """A thief's copy: a new MLP encoder trained with MSE on the teacher's answers to the query split."""
    images = load_split(SPEC.with_split("query")).float()
    targets = teacher.embed(images).float()
    torch.manual_seed(seed)
    copy = MLPEncoder(input_shape=(1, 8, 8), embed_dim=16, hidden=256, depth=2)
    optimiser = torch.optim.Adam(copy.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randperm(len(images), generator=generator)[:128]
        loss = F.mse_loss(copy(images[batch]), targets[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return copy.eval()


def _independent(i: int) -> torch.nn.Module:
    """An encoder that never saw the owner's answers: supervised or autoencoder, ConvNet or MLP, own seed."""
    pool = load_split(SPEC.with_split("query"))
    seed = 200 + i
    data = pool.subset(torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:400])
    if i % 2 == 0:
        encoder: torch.nn.Module = tiny_encoder(seed, embed_dim=16)
    else:
        torch.manual_seed(seed)
        encoder = MLPEncoder(input_shape=(1, 8, 8), embed_dim=16, hidden=32, depth=1)
    train = train_supervised if i % 4 < 2 else train_autoencoder
    train(encoder, data, epochs=20, batch_size=64, lr=1e-2, seed=seed)
    return encoder.eval()


@pytest.fixture(scope="module")
def world(one_thread: None) -> dict:
    torch.manual_seed(0)
    owner = MLPEncoder(input_shape=(1, 8, 8), embed_dim=16, hidden=64, depth=2)
    train_supervised(owner, load_split(SPEC), epochs=20, batch_size=64, lr=1e-2, seed=0)
    owner.eval()
    key = OutputWatermarkKey(SECRET, strength=0.3, data=PROBES.to_dict(), probes=150, align=299).calibrate(
        owner, load_split(PROBES))
    marked_api = LocalAPI(owner, defences=[OutputWatermark(key=key)])
    return {
        "owner": owner, "key": key,
        "wm_copy": _distil(marked_api, 11), "clean_copy": _distil(LocalAPI(owner), 11),
        "references": [Reference(f"ref{i}", LocalAPI(_independent(i))) for i in range(6)],
        "innocent": _independent(7),
    }


def test_watermark_score_matches_a_hand_computation() -> None:
    rng = np.random.default_rng(1)
    baseline = rng.normal(size=(50, 4))
    t = np.array([0.0, 0.0, 1.0, 0.0])
    shift = rng.normal(size=50)
    weights = shift - shift.mean()
    answers = baseline + (0.5 * shift)[:, None] * t + 0.01 * rng.normal(size=(50, 4))
    z, carried = watermark_score((answers - baseline) @ t, weights, shift)
    prod = weights * ((answers - baseline) @ t)
    assert math.isclose(z, prod.mean() / (prod.std(ddof=1) / math.sqrt(50)))
    assert math.isclose(carried, prod.sum() / (weights * shift).sum())
    assert 0.45 < carried < 0.55  # half of the shift was put in


def test_calibrated_p_value_is_the_rank_or_prediction_test() -> None:
    refs = [0.3, -1.2, 0.8, 0.1, -0.4]
    assert calibrated_z_p_value(4.0, refs, alpha=0.01) == (prediction_p_value(4.0, refs, min_sd=1.0), "prediction")
    many = list(np.linspace(-2, 2, 120))
    assert calibrated_z_p_value(1.5, many, alpha=0.01) == (rank_p_value(1.5, many), "rank")
    p, how = calibrated_z_p_value(9.0, refs[:2], alpha=0.01)
    assert how == "none" and math.isnan(p)


def test_a_copy_of_the_watermarked_api_is_detected_and_clean_copies_and_innocents_are_not(world: dict) -> None:
    verifier = OutputWatermarkVerifier(world["key"], references=world["references"], alpha=0.01)
    marked = verifier.verify(LocalAPI(world["wm_copy"]))
    clean = verifier.verify(LocalAPI(world["clean_copy"]))
    innocent = verifier.verify(LocalAPI(world["innocent"]))
    assert marked.method == "output-watermark" and marked.details["calibrated"]
    assert marked.details["calibration"] == "prediction" and len(marked.details["reference_scores"]) == 6
    assert marked.details["can_detect"] and marked.details["owner_carried"] == pytest.approx(1.0)
    assert marked.verdict == "stolen" and marked.p_value < 0.01, marked.details
    assert clean.verdict == "independent" and innocent.verdict == "independent"
    assert marked.p_value < clean.p_value and marked.p_value < innocent.p_value
    assert marked.effect > 0.2 and abs(clean.effect) < 0.1  # share of the shift the copy reproduces
    assert marked.n == 150 and 20 < marked.details["alignment_inputs"] < 299
    assert marked.queries_used == 150 + marked.details["alignment_inputs"]


def test_detection_survives_a_rotation_and_a_permutation_of_the_copy(world: dict) -> None:
    from encoderguard.api.delegating_api import TransformedAPI

    verifier = OutputWatermarkVerifier(world["key"], references=world["references"], alpha=0.01)
    for name in ("orthogonal", "permute-scale"):
        fn, dim = create_transform(name, 16, seed=5)
        verdict = verifier.verify(TransformedAPI(LocalAPI(world["wm_copy"]), fn, dim=dim, name=name))
        assert verdict.verdict == "stolen", (name, verdict.details)
    unaligned = OutputWatermarkVerifier(world["key"], references=world["references"], align="none")
    fn, dim = create_transform("orthogonal", 16, seed=5)
    assert unaligned.verify(TransformedAPI(LocalAPI(world["wm_copy"]), fn, dim=dim, name="o")).verdict != "stolen"


def test_the_p_value_is_calibrated_against_the_references(world: dict) -> None:
    verifier = OutputWatermarkVerifier(world["key"], references=world["references"], alpha=0.01)
    scores, skipped = verifier.reference_scores()
    assert not skipped and len(scores) == 6
    # independent encoders score like z-scores of no effect, far below the copy
    assert max(abs(v) for v in scores.values()) < 6
    verdict = verifier.verify(LocalAPI(world["wm_copy"]))
    assert verdict.p_value == pytest.approx(prediction_p_value(verdict.statistic, list(scores.values()), min_sd=1.0))
    # leave-one-out: each reference tested against the other five is not called stolen
    refs = world["references"]
    for i, ref in enumerate(refs):
        others = OutputWatermarkVerifier(world["key"], references=refs[:i] + refs[i + 1:], alpha=0.01)
        assert others.verify(ref.api).verdict == "independent"


def test_without_references_the_test_is_uncalibrated_and_never_says_stolen(world: dict) -> None:
    verdict = OutputWatermarkVerifier(world["key"]).verify(LocalAPI(world["wm_copy"]))
    assert not verdict.details["calibrated"] and verdict.details["calibration"] == "none"
    assert verdict.verdict == "inconclusive" and verdict.p_value < 0.01
    assert "no calibrated null" in verdict.details["reason"]


def test_cli_verify_output_watermark_and_verify_all(world: dict, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    key_path = world["key"].save(tmp_path / "wm.key")
    owner_dir, copy_dir = tmp_path / "owner", tmp_path / "copy"
    for folder, encoder in ((owner_dir, world["owner"]), (copy_dir, world["wm_copy"])):
        save_checkpoint(folder, encoder=encoder, card=ModelCard(
            arch=encoder.arch, arch_kwargs=encoder.arch_kwargs, input_shape=encoder.input_shape, embed_dim=16,
            data=SPEC.to_dict(), training={"method": "supervised", "seed": 0}))
    refs = tmp_path / "refs"
    from encoderguard.verify.references import ReferenceSet

    ref_set = ReferenceSet.create(refs)
    for i, ref in enumerate(world["references"]):
        save_checkpoint(refs / ref.name, encoder=ref.api.encoder, card=ModelCard(
            arch=ref.api.encoder.arch, arch_kwargs=getattr(ref.api.encoder, "arch_kwargs", {}),
            input_shape=(1, 8, 8), embed_dim=16, training={"method": "independent", "seed": 200 + i}))
        ref_set.add_checkpoint(ref.name, refs / ref.name)
    assert main(["verify", "output-watermark", "--watermark-key", str(key_path), "--suspect", str(copy_dir),
                 "--references", str(refs), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"method", "verdict", "p_value", "alpha", "n", "calibrated"} <= set(out)
    assert out["method"] == "output-watermark" and out["verdict"] == "stolen" and out["calibrated"] is True
    assert out["n"] == 150 and out["alpha"] == 0.01 and out["p_value"] < 0.01
    assert main(["verify", "all", "--owner", str(owner_dir), "--suspect", str(copy_dir), "--references", str(refs),
                 "--watermark-key", str(key_path), "--json"]) == 0
    decision = json.loads(capsys.readouterr().out)
    methods = {m["method"]: m for m in decision["methods"]}
    assert "output-watermark" in methods and "output-watermark" in decision["family"]
    assert methods["output-watermark"]["verdict"] == "stolen" and decision["verdict"] == "stolen"
    assert main(["verify", "all", "--owner", str(owner_dir), "--suspect", str(copy_dir), "--references", str(refs),
                 "--json"]) == 0
    assert "output-watermark" not in {m["method"] for m in json.loads(capsys.readouterr().out)["methods"]}
