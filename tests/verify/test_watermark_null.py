"""The watermark test's null comes from TRAINED independent encoders (references), not from a coin at 0.5."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from scipy import stats
from tests.conftest import tiny_encoder
from tests.verify.owners import SPEC, save_owner

from encoderguard.api import LocalAPI
from encoderguard.data import load_split
from encoderguard.models import load_encoder
from encoderguard.models.mlp import MLPEncoder
from encoderguard.train.autoencoder import train_autoencoder
from encoderguard.train.supervised import train_supervised
from encoderguard.verify.references import Reference
from encoderguard.verify.watermark import WatermarkVerifier

VERIFY_SEED = 4242
QUERIES = 374  # the whole owner-heldout split: binomial sd of an accuracy at 0.5 is 0.026
# (recipe, architecture) of the independent encoders: the first five are references, the last five innocent
# suspects; each half holds both recipes and both architectures.
RECIPES = [("supervised", "convnet"), ("autoencoder", "convnet"), ("supervised", "mlp"), ("autoencoder", "mlp"),
           ("supervised", "convnet"), ("autoencoder", "convnet"), ("supervised", "mlp"), ("autoencoder", "mlp"),
           ("supervised", "convnet"), ("autoencoder", "convnet")]
N_REFERENCES = 5


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # flatten pooling and 200 steps lift the tiny owner's held-out watermark accuracy from about 0.66 to about 0.73
    return save_owner(tmp_path_factory.mktemp("wm-null") / "owner", steps=200, seed=0, pool="flatten", key=False,
                      verify_seed=VERIFY_SEED)


@pytest.fixture(scope="module")
def independent() -> list[tuple[str, torch.nn.Module]]:
    """Ten encoders that never saw the owner's data: each trained on its own 400 of the 674 query-split digits,
    from its own seed, by supervised classification or autoencoding, as a ConvNet or an MLP."""
    pool = load_split(SPEC.with_split("query"))
    models = []
    for i, (recipe, arch) in enumerate(RECIPES):
        seed = 100 + i
        sample = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:400]
        data = pool.subset(sample, name=f"digits:query[400, seed {seed}]")
        if arch == "convnet":
            encoder = tiny_encoder(seed, embed_dim=16)
        else:
            torch.manual_seed(seed)
            encoder = MLPEncoder(input_shape=(1, 8, 8), embed_dim=16, hidden=32, depth=1)
        train = train_supervised if recipe == "supervised" else train_autoencoder
        train(encoder, data, epochs=30, batch_size=64, lr=1e-2, seed=seed)
        models.append((f"{recipe}-{arch}-{seed}", encoder.eval()))
    return models


def test_references_calibrate_the_null_for_trained_innocents(owner, independent):
    # Measured (owners from seeds 0-3 with reference seeds 100-109, and owner 0 with seeds 200-209; both halves as
    # references in turn): the owner scored 0.706-0.746 with calibrated p 0.00045-0.0015; the 50 innocents scored
    # 0.441-0.551 with calibrated p >= 0.07, never "stolen". Here: owner 0.746, p ~ 0.0005.
    references = [Reference(name, LocalAPI(encoder)) for name, encoder in independent[:N_REFERENCES]]
    verifier = WatermarkVerifier(owner, references=references, max_queries=QUERIES)

    mine = verifier.verify(LocalAPI(load_encoder(owner)))
    assert mine.verdict == "stolen" and mine.details["calibrated"]
    assert mine.details["calibration"] == "prediction" and mine.p_value < 0.005

    scores = mine.details["reference_scores"]
    assert sorted(scores) == sorted(name for name, _ in independent[:N_REFERENCES])
    for name, encoder in independent[N_REFERENCES:]:
        innocent = verifier.verify(LocalAPI(encoder))
        assert innocent.details["calibrated"], name
        assert innocent.verdict == "independent", (name, innocent.statistic, innocent.p_value)
        assert innocent.details["reference_scores"] == scores  # one null for every suspect
        # the p-value is the prediction test against the references (hand-written here with scipy), not the
        # binomial test at 0.5
        k, refs = len(scores), list(scores.values())
        mean, sd = sum(refs) / k, max(stats.tstd(refs), math.sqrt(0.25 / innocent.n))
        expected = stats.t.sf((innocent.statistic - mean) / (sd * math.sqrt(1 + 1 / k)), k - 1)
        assert innocent.p_value == pytest.approx(expected, rel=1e-9)
        assert innocent.effect == pytest.approx(innocent.statistic - mean)


def test_spread_of_trained_innocents_is_recorded(owner, independent):
    # The old test assumed every independent encoder scores Binomial(n, 0.5) / n. At this tiny scale the spread of
    # trained innocents does NOT exceed the binomial one, so it is recorded, not asserted against the binomial:
    # measured over 5 sets of 10 encoders, sample sd 0.013-0.023 against a binomial sd of 0.026 at n = 374
    # (chi-square of over-dispersion, 10 df: p 0.58-0.99). Many innocents score exactly 0.5 or close to it: the
    # owner's head reads their representations, far from the owner's, as one class. What does hold is that the
    # verifier reports the references' mean and spread it tests against.
    references = [Reference(name, LocalAPI(encoder)) for name, encoder in independent[:N_REFERENCES]]
    verifier = WatermarkVerifier(owner, references=references, max_queries=QUERIES)
    innocent = verifier.verify(LocalAPI(independent[-1][1]))
    refs = list(innocent.details["reference_scores"].values())
    assert innocent.details["reference_mean"] == pytest.approx(sum(refs) / len(refs))
    assert innocent.details["reference_sd"] == pytest.approx(stats.tstd(refs))
    assert all(0.4 < value < 0.6 for value in refs)  # trained innocents sit near chance, not at the owner's level
