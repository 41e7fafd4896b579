"""The serving-time watermark on a text encoder: the key calibrates on a text pool, the verifier sends strings and
reads any text suspect (checkpoint, in-process API), ``verify all`` takes a pretrained owner given as a model spec,
and the text references (LSA, SimCSE students) load from a reference-set folder. Tiny and offline: a synthetic
corpus in a JSON Lines file and hashed n-gram encoders (no download)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from encoderguard.api import LocalAPI
from encoderguard.cli.main import main
from encoderguard.data import SplitSpec, load_split
from encoderguard.defences import OutputWatermark, OutputWatermarkKey
from encoderguard.defences.output_watermark_key import pool_inputs
from encoderguard.models import ModelCard, save_checkpoint
from encoderguard.models.lsa_encoder import LSAEncoder
from encoderguard.models.registry import create_encoder
from encoderguard.verify.output_watermark import OutputWatermarkVerifier
from encoderguard.verify.ownership import TEXT_DI_REASON, verify_all
from encoderguard.verify.references import Reference, ReferenceSet

SECRET = bytes(range(32))
TOPICS = {0: "market shares bank profit growth economy trade price company investors",
          1: "film music award actor festival album singer star show director",
          2: "election minister party vote labour government policy council law campaign",
          3: "match team player goal season coach league cup win injury"}
FILLER = "the a of in on with and for to after before today yesterday new old big small".split()


def _sentences(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randrange(4)
        words = TOPICS[label].split()
        text = " ".join(rng.choice(words) if rng.random() < 0.6 else rng.choice(FILLER) for _ in range(10))
        out.append((text.capitalize() + ".", label))
    return out


def _encoder(seed: int, arch: str = "text-ngram") -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = {"buckets": 4096, "dim": 16, "hidden": 32} if arch == "text-ngram" else {
        "buckets": 4096, "d_model": 16, "layers": 1, "heads": 2, "ff": 32}
    return create_encoder(arch, input_shape=None, embed_dim=12, **kwargs).eval()


def _save(folder: Path, encoder: torch.nn.Module) -> Path:
    card = ModelCard(arch=encoder.arch, arch_kwargs={}, input_shape=None, embed_dim=12, data={"dataset": "jsonl"},
                     training={"method": "test"})
    save_checkpoint(folder, encoder=encoder, card=card)
    return folder


def _distil(teacher: LocalAPI, texts: list[str], seed: int, steps: int = 300) -> torch.nn.Module:
    """A thief's copy: a hashed n-gram student trained with MSE on the teacher's answers."""
    targets = teacher.embed(texts).float()
    copy = _encoder(seed).train()
    opt = torch.optim.Adam(copy.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(texts), generator=gen)[:64]
        loss = F.mse_loss(copy([texts[int(i)] for i in idx]), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return copy.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict:
    root = tmp_path_factory.mktemp("text-wm")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in _sentences(600, 0)))
    spec = SplitSpec(f"jsonl:{corpus}", "all", 0, 1)
    pool = load_split(spec)
    owner = _encoder(0)
    key = OutputWatermarkKey(SECRET, strength=0.5, data=spec.to_dict(), probes=150, align=400).calibrate(owner, pool)
    marked = LocalAPI(owner, defences=[OutputWatermark(key=key)])
    thief_texts = [t for t, _ in _sentences(3000, 1)]
    refs = ReferenceSet.create(root / "refs")
    other = [t for t, _ in _sentences(800, 2)]
    for i in range(4):
        refs.add_checkpoint(f"ngram{i}", _save(root / f"ref{i}", _distil(LocalAPI(_encoder(100 + i)), other, 50 + i,
                                                                         steps=20)))
    LSAEncoder.fit(other, dim=8, seed=0, min_df=1).save(refs.folder / "lsa")
    refs._add({"name": "lsa", "kind": "lsa", "path": "lsa", "recipe": "lsa", "arch": "lsa"})
    return {"root": root, "spec": spec, "pool": pool, "owner": owner, "key": key, "marked": marked, "refs": refs,
            "copy": _distil(marked, thief_texts, 7), "clean_copy": _distil(LocalAPI(owner), thief_texts, 7)}


def test_pool_inputs_are_strings_for_a_text_pool(world: dict) -> None:
    batch = pool_inputs(world["pool"], np.array([3, 1]))
    assert batch == [world["pool"].texts[3], world["pool"].texts[1]]
    assert pool_inputs(["a b", "c d", "e f"], np.array([2])) == ["e f"]
    key = world["key"]
    assert key.calibrated and key.owner_probe.shape == (150, 12) and key.owner_align.shape == (400, 12)


def test_copy_of_the_watermarked_text_api_stands_out(world: dict) -> None:
    verifier = OutputWatermarkVerifier(world["key"], references=world["refs"].references(), alpha=0.01)
    copy = verifier.verify(LocalAPI(world["copy"]))
    clean = verifier.verify(LocalAPI(world["clean_copy"]))
    own = verifier.verify(world["marked"])
    assert len(verifier.reference_scores()[0]) == 5  # the LSA reference is read like the students
    assert own.verdict == "stolen" and own.effect == pytest.approx(1.0, abs=0.05)
    assert copy.statistic > clean.statistic + 3 and copy.effect > 0.3
    assert clean.verdict != "stolen" and abs(clean.effect) < 0.2
    assert copy.queries_used == own.queries_used == 150 + own.details["alignment_inputs"]


def test_image_suspect_cannot_be_read_by_a_text_key(world: dict) -> None:
    from tests.conftest import tiny_encoder

    verifier = OutputWatermarkVerifier(world["key"], alpha=0.01)
    with pytest.raises(ValueError, match="takes images"):
        verifier.verify(LocalAPI(tiny_encoder(0)))


def test_verify_all_with_a_pretrained_text_owner(world: dict) -> None:
    # a calibrated key stores the owner's clean answers: the owner model named by the spec is never loaded
    result = verify_all("st:not-loaded-here", world["marked"], references=world["refs"].folder,
                        watermark_key=world["key"])
    methods = {m["method"]: m for m in result["methods"]}
    assert methods["di"]["verdict"] == "not applicable" and methods["di"]["reason"] == TEXT_DI_REASON
    assert methods["watermark"]["verdict"] == "not applicable" and "pretrained" in methods["watermark"]["reason"]
    assert methods["output-watermark"]["verdict"] == "stolen"
    assert result["verdict"] == "stolen" and result["references"]["count"] == 5
    no_key = verify_all("st:not-loaded-here", world["marked"], references=world["refs"].folder)
    assert no_key["verdict"] == "inconclusive"


def test_cli_keygen_and_verify_on_text(world: dict, capsys: pytest.CaptureFixture[str]) -> None:
    root = world["root"]
    owner_dir = _save(root / "owner", world["owner"])
    key_file = root / "cli.key"
    data = f"{world['spec'].dataset}:all"
    assert main(["watermark", "keygen", "--encoder", str(owner_dir), "--data", data, "--probes", "150",
                 "--align-probes", "400", "--strength", "0.5", "--out", str(key_file), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["calibrated"] and made["dim"] == 12 and made["data"]["split"] == "all"
    assert made["data"]["train_size"] == 1  # a text corpus without the owner's card: no training-set size
    served_key = world["key"].save(root / "served.key")  # the key the copy was stolen under
    copy_dir = _save(root / "copy", world["copy"])
    assert main(["verify", "output-watermark", "--watermark-key", str(served_key), "--suspect", str(copy_dir),
                 "--references", str(world["refs"].folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "output-watermark" and result["calibrated"] and result["statistic"] > 3
    assert main(["verify", "all", "--owner", "st:not-loaded-here", "--suspect", str(copy_dir), "--references",
                 str(world["refs"].folder), "--watermark-key", str(served_key), "--json"]) in (0, 1)
    decision = json.loads(capsys.readouterr().out)
    assert {m["method"] for m in decision["methods"]} == {"watermark", "di", "output-watermark"}


def test_reference_set_reads_an_lsa_reference(world: dict) -> None:
    refs = {r.name: r for r in world["refs"].references()}
    lsa = refs["lsa"].api
    out = lsa.embed(["market shares bank", "film music award"])
    assert out.shape == (2, 8) and torch.isfinite(out).all()
    assert isinstance(refs["lsa"], Reference)


def test_similarity_test_reads_the_key_and_flags_any_copy(world: dict) -> None:
    from encoderguard.verify.similarity import SimilarityVerifier, aligned_cosine

    verifier = SimilarityVerifier(world["key"], references=world["refs"].references(), alpha=0.01)
    own = verifier.verify(world["marked"])
    clean_copy = verifier.verify(LocalAPI(world["clean_copy"]))
    assert own.effect > 0.9 and own.verdict == "stolen"  # the marked answers (strength 0.5) vs the clean ones
    # a copy of the clean model answers like the owner too: similarity cannot tell how a model was obtained
    assert clean_copy.effect > max(verifier.reference_scores().values())
    assert "cannot tell" in own.warnings[0]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4))
    assert aligned_cosine(x[:40], x[:40] @ np.diag([2.0, 1, 1, 1]), x[40:], x[40:] @ np.diag([2.0, 1, 1, 1])) == \
        pytest.approx(1.0)
    result = verify_all("st:not-loaded-here", LocalAPI(world["copy"]), references=world["refs"].folder,
                        watermark_key=world["key"], similarity=True)
    assert {m["method"] for m in result["methods"]} == {"watermark", "di", "output-watermark", "similarity"}
    with pytest.raises(ValueError, match="similarity"):
        verify_all(world["root"] / "nowhere", world["marked"], similarity=True)


def test_references_build_for_a_text_owner(world: dict, capsys: pytest.CaptureFixture[str]) -> None:
    out = world["root"] / "built-refs"
    assert main(["references", "build", "--owner", "st:not-loaded-here", "--data", world["spec"].dataset, "--count",
                 "2", "--steps", "2", "--sentences", "300", "--out", str(out), "--json", "--no-progress"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["modality"] == "text" and not built["registered_with_owner"]
    assert [e["kind"] for e in built["references"]] == ["lsa", "checkpoint"]
    refs = ReferenceSet.load(out)
    assert refs.manifest["owner"] == "st:not-loaded-here"
    answers = [r.api.embed(["market shares", "film music"]) for r in refs.references()]
    assert [a.shape[1] for a in answers] == [128, 384]
