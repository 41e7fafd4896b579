"""Stealing a text encoder: exact payment, resume, refused image-only options, learning, and steal_to_dir's summary.

The victim is a tiny deterministic bag-of-words encoder (no model download); the students are the package's
``text-ngram`` and ``text-transformer`` at tiny sizes; the data are synthetic two-topic documents.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from encoderguard.api import LocalAPI
from encoderguard.attacks import StealingAttack
from encoderguard.attacks.copy_evaluation import mean_cosine
from encoderguard.attacks.steal_run import Victim, steal_to_dir
from encoderguard.data import SplitSpec, load_split
from encoderguard.data.text_set import TextSet
from encoderguard.errors import DataError
from encoderguard.models import create_encoder
from encoderguard.models.text_students import words_of

TINY_STUDENTS = {
    "text-ngram": {"buckets": 1024, "dim": 16, "hidden": 32},
    "text-transformer": {"buckets": 1024, "d_model": 16, "layers": 1, "heads": 2, "ff": 32, "max_len": 32,
                         "dropout": 0.0},
}
TOPICS = (
    ("match", "goal", "team", "season", "coach", "league", "striker", "final", "cup", "players"),
    ("shares", "profit", "market", "bank", "prices", "investors", "growth", "economy", "firm", "sales"),
)
FILLER = ("the", "said", "on", "with", "after", "new", "year", "from", "a", "this", "its", "will", "by", "more",
          "people", "time", "could", "last", "week", "told", "would", "first", "over", "two", "also", "were",
          "been", "they", "which", "about", "their", "some", "other", "there", "when", "what", "into", "only")


class FakeTextVictim(nn.Module):
    """A fixed bag-of-hashed-words encoder: ``forward(list[str]) -> [N, D]``, deterministic, counts words as tokens.

    Its first coordinate carries the topic (+ for :data:`TOPICS` ``[0]`` words, - for ``[1]``), so that its linear
    probe beats an untrained student's, whose features dilute the few topic words among the fillers.

    Args:
        embed_dim: answer size ``D``.
        buckets: hashed word buckets.
    """

    modality = "text"
    input_shape = None

    def __init__(self, embed_dim: int = 16, buckets: int = 256) -> None:
        super().__init__()
        self.embed_dim, self.buckets = embed_dim, buckets
        generator = torch.Generator().manual_seed(1234)
        weight = torch.randn(buckets, embed_dim, generator=generator)
        for sign, words in zip((8.0, -8.0), TOPICS, strict=True):
            for word in words:
                weight[self._bucket(word), 0] = sign
        self.weight = nn.Parameter(weight, requires_grad=False)

    def _bucket(self, word: str) -> int:
        return zlib.crc32(word.encode()) % self.buckets

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Words per text (the unit this fake API bills)."""
        return [max(1, len(words_of(t))) for t in texts]

    def forward(self, texts: list[str]) -> torch.Tensor:
        """``[N, D]``: tanh of the mean word vector of each text."""
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise TypeError("FakeTextVictim takes a list of strings")
        counts = torch.zeros(len(texts), self.buckets)
        for row, text in enumerate(texts):
            for word in words_of(text):
                counts[row, self._bucket(word)] += 1.0
        return torch.tanh(counts / counts.sum(1, keepdim=True).clamp_min(1.0) @ self.weight)


class CountingAPI:
    """Wraps an API and records every text it is asked to embed."""

    def __init__(self, inner: LocalAPI) -> None:
        self.inner = inner
        self.sent: list[str] = []
        self.batches = 0

    modality = "text"
    dim = property(lambda self: self.inner.dim)
    input_shape = None
    queries_used = property(lambda self: len(self.sent))

    def embed(self, inputs: list[str]) -> torch.Tensor:
        """The inner API's answers, after recording ``inputs``."""
        self.batches += 1
        self.sent += list(inputs)
        return self.inner.embed(inputs)


def _sentence(rng: np.random.Generator, topic: int) -> str:
    """One topic word (of the other topic one time in five) among 5-8 filler words."""
    words = [str(rng.choice(TOPICS[topic if rng.random() < 0.8 else 1 - topic])),
             *rng.choice(FILLER, size=int(rng.integers(5, 9)))]
    rng.shuffle(words)
    return " ".join(words).capitalize() + "."


def _documents(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` documents of 4 sentences, alternating topics: ``(text, topic)``."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        topic = i % 2
        docs.append((" ".join(_sentence(rng, topic) for _ in range(4)), topic))
    return docs


@pytest.fixture(scope="module")
def sentences() -> TextSet:
    """200 synthetic sentences of two topics (labels = topic, groups = document)."""
    rng = np.random.default_rng(7)
    labels = [i % 2 for i in range(200)]
    return TextSet([_sentence(rng, t) for t in labels], torch.tensor(labels), "synthetic:query",
                   torch.arange(200) // 4)


@pytest.fixture(scope="module")
def jsonl_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ``jsonl:`` dataset of 400 two-topic documents of 4 sentences each."""
    path = tmp_path_factory.mktemp("text") / "news.jsonl"
    path.write_text("".join(json.dumps({"text": text, "label": ["sport", "business"][label]}) + "\n"
                            for text, label in _documents(400)))
    return f"jsonl:{path}"


def _attack(api, tmp_path: Path, arch: str = "text-ngram", name: str = "cache", **kw) -> StealingAttack:
    settings: dict[str, Any] = {"loss": "mse", "budget": 50, "epochs": 1, "batch_size": 16, "query_batch": 16,
                                "arch": arch, "arch_kwargs": TINY_STUDENTS[arch], "progress": False}
    settings.update(kw)
    return StealingAttack(api, cache_dir=tmp_path / name, **settings)


@pytest.mark.parametrize("arch", sorted(TINY_STUDENTS))
def test_text_attack_pays_the_budget_exactly_and_resumes_from_the_cache(tmp_path, sentences, arch):
    api = CountingAPI(LocalAPI(FakeTextVictim()))
    result = _attack(api, tmp_path, arch, budget=37).extract(sentences)
    assert api.queries_used == 37 == result.queries_paid == result.queries_new
    assert len(set(api.sent)) == 37 and api.batches == 3  # ceil(37 / 16), each sentence once
    assert set(api.sent) == set(sentences.inputs(result.paid_sources))
    assert result.encoder.arch == arch and result.encoder.embed_dim == 16
    again = _attack(api, tmp_path, arch, budget=37).extract(sentences)  # a rerun pays nothing
    assert api.queries_used == 37 and again.queries_new == 0 and again.queries_cached == 37
    bigger = _attack(api, tmp_path, arch, budget=45).extract(sentences)  # a bigger budget pays the difference
    assert api.queries_used == 45 and bigger.queries_new == 8 and len(set(api.sent)) == 45


def test_query_data_of_the_wrong_modality_is_refused_before_paying(tmp_path, sentences):
    text_api = CountingAPI(LocalAPI(FakeTextVictim()))
    images = load_split(SplitSpec("digits", "query", 0, 200))
    with pytest.raises(DataError, match="holds image inputs but the victim API takes text"):
        _attack(text_api, tmp_path).extract(images)
    image_api = LocalAPI(create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2))
    with pytest.raises(DataError, match="holds text inputs but the victim API takes image"):
        StealingAttack(image_api, loss="mse", budget=10, cache_dir=tmp_path / "img", progress=False).extract(
            sentences)
    assert text_api.queries_used == 0 and image_api.queries_used == 0


@pytest.mark.parametrize("setting", [{"mode": "siamese", "views": 2}, {"selection": "kcenter"}, {"mixup": 0.4},
                                     {"augmentation": "weak"}, {"augmentation": "simclr"}],
                         ids=["siamese", "kcenter", "mixup", "weak", "simclr"])
def test_image_only_options_are_refused_for_text(tmp_path, sentences, setting):
    api = CountingAPI(LocalAPI(FakeTextVictim()))
    with pytest.raises(ValueError, match="text copies are trained in clean mode"):
        _attack(api, tmp_path, **setting).extract(sentences)
    assert api.queries_used == 0  # refused before any query is paid


@pytest.mark.parametrize("arch", sorted(TINY_STUDENTS))
def test_a_text_copy_is_closer_to_the_victim_than_its_random_init(tmp_path, sentences, arch):
    victim = FakeTextVictim()
    held_out = [_sentence(np.random.default_rng(99), i % 2) for i in range(64)]  # never sent to the victim
    with torch.no_grad():
        target = victim(held_out)
    attack = _attack(LocalAPI(victim), tmp_path, arch, budget=160, epochs=30, batch_size=32, lr=5e-3)
    result = attack.extract(sentences)
    untrained, _ = attack.build_copy(None, 16, arch=arch)  # the copy's own initial weights
    with torch.no_grad():
        before = mean_cosine(untrained.eval()(held_out), target)
        after = mean_cosine(result.encoder(held_out), target)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert after > before + 0.25, (before, after)


def test_steal_to_dir_on_text_reports_the_contract_keys(tmp_path, jsonl_data):
    from encoderguard.models import load_checkpoint

    fake = FakeTextVictim()
    victim = Victim(LocalAPI(fake), "fake:text", fake, None, in_process=True)
    kwargs = {"budget": 120, "query_data": f"{jsonl_data}:query", "probe_data": jsonl_data, "student": "ngram",
              "arch_kwargs": TINY_STUDENTS["text-ngram"], "epochs": 3, "batch_size": 32, "lr": 5e-3,
              "price_per_million_tokens": 0.02, "progress": False}
    summary = steal_to_dir(tmp_path / "copy", victim, **kwargs)
    for key in ("queries_paid", "linear_acc", "victim_linear_acc", "random_init_linear_acc", "gain_recovery",
                "fidelity_cosine", "retrieval_agreement", "tokens_paid", "estimated_cost_usd"):
        assert summary[key] is not None, key
    assert summary["queries_paid"] == summary["queries_new"] == summary["client_queries"] == 120
    assert summary["student"] == "text-ngram" and summary["price_per_1k"] is None
    queries = load_split(SplitSpec(jsonl_data, "query", 0, 1))
    assert len(queries) > 120 and all(len(t) < 200 for t in queries.texts)  # sentences, not documents
    paid = StealingAttack(victim.api, loss="mse", budget=120, cache_dir=tmp_path / "copy" / "query_cache",
                          progress=False).plan(queries).sources(0, 120)[0]
    assert summary["tokens_counted_by"] == "victim_tokenizer"
    assert summary["tokens_paid"] == sum(fake.count_tokens(queries.inputs(paid)))
    assert summary["estimated_cost_usd"] == pytest.approx(summary["tokens_paid"] / 1e6 * 0.02)
    assert 0 <= summary["retrieval_agreement"] <= 1 and summary["retrieval_agreement"] == summary["knn_agreement"]
    assert -1 <= summary["fidelity_cosine"] <= 1 and math.isfinite(summary["gain_recovery"])
    assert summary["victim_linear_acc"] > summary["random_init_linear_acc"]  # the victim's first coordinate
    # the copy is a checkpoint that loads back as the same text encoder
    copy = load_checkpoint(tmp_path / "copy").encoder
    assert copy.input_shape is None and copy.arch == "text-ngram"
    # a rerun into the same directory pays nothing more, and counts the same tokens
    again = steal_to_dir(tmp_path / "copy", victim, **kwargs)
    assert again["queries_new"] == 0 and again["tokens_paid"] == summary["tokens_paid"]


def test_steal_to_dir_refuses_a_student_for_image_data(tmp_path):
    victim = LocalAPI(create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2))
    with pytest.raises(ValueError, match="--student is for text victims"):
        steal_to_dir(tmp_path / "copy", Victim(victim, "img", None, None, in_process=True), budget=10,
                     query_data="digits:query", student="ngram", progress=False)
    assert victim.queries_used == 0
