"""The watermark test against a copy served behind an output transform, with and without alignment
(``WatermarkVerifier(align=...)``), on the tiny digits owner and its eight reference models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.conftest import tiny_encoder
from tests.verify.owners import reference_encoders, references, save_owner

from encoderguard.api import LocalAPI
from encoderguard.api.delegating_api import TransformedAPI
from encoderguard.attacks.output_transforms import create_transform
from encoderguard.models import load_encoder
from encoderguard.verify.references import Reference
from encoderguard.verify.watermark import WatermarkVerifier

QUERIES, ALIGN_QUERIES = 300, 200


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_owner(tmp_path_factory.mktemp("wm-align") / "owner", steps=80)


@pytest.fixture(scope="module")
def refs() -> list[Reference]:
    return references(reference_encoders())


def _verifier(owner: Path, refs: list[Reference], align: str = "none") -> WatermarkVerifier:
    return WatermarkVerifier(owner, references=refs, max_queries=QUERIES, align=align, align_queries=ALIGN_QUERIES)


def _served(owner: Path, name: str, seed: int = 0) -> TransformedAPI:
    transform, dim = create_transform(name, 16, seed=seed)
    return TransformedAPI(LocalAPI(load_encoder(owner)), transform, dim=dim, name=name)


class Recording:
    """Wraps an API and records the size of every request."""

    def __init__(self, inner: LocalAPI) -> None:
        self.inner, self.requests = inner, []
        self.dim, self.input_shape = inner.dim, inner.input_shape

    @property
    def queries_used(self) -> int:
        return self.inner.queries_used

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        self.requests.append(len(inputs))
        return self.inner.embed(inputs)


@pytest.mark.parametrize(("transform", "kind"), [("orthogonal", "orthogonal"), ("permute-scale", "permutation")])
def test_a_transformed_copy_is_found_only_with_alignment(owner, refs, transform, kind):
    plain = _verifier(owner, refs).verify(_served(owner, transform))
    # measured on this owner: seed 0 of either transform leaves the head at chance (0.5) without alignment (a
    # random rotation can keep part of the signal: seed 1 of "orthogonal" still reads 0.61)
    assert plain.verdict == "independent" and plain.details["alignment"]["kind"] == "none"
    assert plain.details["accuracy"] < plain.details["owner_accuracy"] - 0.1
    aligned = _verifier(owner, refs, "auto").verify(_served(owner, transform))
    assert aligned.verdict == "stolen" and aligned.p_value < 0.01
    assert aligned.details["alignment"]["kind"] == kind and aligned.details["alignment"]["fit_r2"] > 0.99
    # the map undoes the transform: the copy reads as the untransformed owner
    assert aligned.details["accuracy"] == pytest.approx(aligned.details["owner_accuracy"], abs=0.02)
    assert aligned.details["calibrated"] and len(aligned.details["reference_scores"]) == 8


def test_an_untransformed_owner_keeps_the_identity_and_the_same_accuracy(owner, refs):
    plain = _verifier(owner, refs).verify(LocalAPI(load_encoder(owner)))
    aligned = _verifier(owner, refs, "auto").verify(LocalAPI(load_encoder(owner)))
    alignment = aligned.details["alignment"]
    assert alignment["kind"] == "none" and alignment["fit_r2"] > 0.99 and alignment["queries"] == ALIGN_QUERIES
    assert set(alignment["candidates"]) == {"none", "permutation", "orthogonal", "linear"}
    assert aligned.details["accuracy"] == plain.details["accuracy"] and aligned.verdict == plain.verdict == "stolen"
    assert plain.details["alignment"] == {"kind": "none", "queries": 0, "fit_r2": None}


def test_references_are_aligned_too(owner, refs):
    plain, _ = _verifier(owner, refs).reference_scores()
    aligned, skipped = _verifier(owner, refs, "auto").reference_scores()
    assert set(plain) == set(aligned) and len(aligned) == 8 and skipped == {}
    assert plain != aligned  # each reference got its own map before the head read it
    assert sum(aligned.values()) / len(aligned) == pytest.approx(0.5, abs=0.05)  # still near chance


def test_alignment_queries_are_counted_and_sent_in_the_same_request(owner, refs):
    suspect = Recording(LocalAPI(load_encoder(owner)))
    verdict = _verifier(owner, refs, "auto").verify(suspect)
    assert verdict.queries_used == QUERIES + ALIGN_QUERIES == suspect.queries_used
    assert suspect.requests == [QUERIES + ALIGN_QUERIES]  # one shuffled batch: alignment images hide the secret ones
    assert verdict.n == QUERIES and verdict.details["alignment"]["queries"] == ALIGN_QUERIES
    assert _verifier(owner, refs).verify(LocalAPI(load_encoder(owner))).queries_used == QUERIES


def test_a_suspect_of_another_size_needs_an_alignment_that_resizes(owner, refs):
    def padded() -> TransformedAPI:  # the owner's answers padded with zeros to 24 dimensions
        return TransformedAPI(LocalAPI(load_encoder(owner)), lambda y: torch.cat([y, torch.zeros(len(y), 8)], 1),
                              dim=24, name="pad")

    verdict = _verifier(owner, refs, "linear").verify(padded())
    assert verdict.verdict == "stolen" and verdict.details["alignment"]["kind"] == "linear"
    assert verdict.details["accuracy"] == pytest.approx(verdict.details["owner_accuracy"], abs=0.02)
    for align in ("none", "orthogonal"):
        with pytest.raises(ValueError, match="24-d"):
            _verifier(owner, refs, align).verify(padded())


def _narrow() -> Reference:
    return Reference("narrow", LocalAPI(tiny_encoder(9, embed_dim=8).eval(), key="reference:narrow"))


def test_a_reference_of_another_size_is_aligned_when_the_map_resizes(owner, refs):
    with_narrow = [*refs, _narrow()]
    scores, skipped = _verifier(owner, with_narrow).reference_scores()
    assert "narrow" in skipped and "8-d" in skipped["narrow"] and len(scores) == 8
    for align in ("auto", "linear"):
        scores, skipped = _verifier(owner, with_narrow, align).reference_scores()
        assert skipped == {} and len(scores) == 9 and 0.4 < scores["narrow"] < 0.6


def test_permutation_alignment_skips_a_smaller_reference(owner, refs):
    scores, skipped = _verifier(owner, [*refs, _narrow()], "permutation").reference_scores()
    assert "narrow" in skipped and len(scores) == 8


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"align": "rotate"}, "align must be one of"),
    ({"align": "auto", "align_queries": 9}, "align_queries must be an integer >= 10"),
])
def test_bad_alignment_settings(owner, kwargs, match):
    with pytest.raises(ValueError, match=match):
        WatermarkVerifier(owner, **kwargs)
