"""The modality of dataset names, and narrowing a loaded set to one modality."""

import pytest
import torch

from encoderguard.data import (
    DATASETS,
    MODALITY,
    ImageSet,
    SplitSpec,
    TextSet,
    dataset_modality,
    images_only,
    load_split,
    texts_only,
)
from encoderguard.errors import DataError


@pytest.mark.parametrize(("name", "modality"), [
    ("fashion-mnist", "image"), ("mnist", "image"), ("digits", "image"), ("idx:/x", "image"),
    ("folder:/x/y", "image"), ("bbc-news", "text"), ("bbc-news:query", "text"), ("text:/x", "text"),
    ("jsonl:/x/y.jsonl:query", "text"), ("digits:probe-test", "image"),
])
def test_modality_without_loading(name, modality):
    assert dataset_modality(name) == modality


def test_every_registered_name_has_a_modality():
    assert set(DATASETS) <= set(MODALITY) and set(MODALITY.values()) == {"image", "text"}


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="digits, bbc-news, idx:PATH, folder:PATH, text:PATH, jsonl:PATH"):
        dataset_modality("cifar-10")
    with pytest.raises(ValueError, match="unknown dataset 'text'"):
        dataset_modality("text")


def test_load_split_returns_the_modality_s_set():
    images = load_split(SplitSpec("digits", "probe-test", 0, 100))
    assert isinstance(images, ImageSet) and images_only(images, purpose="training") is images
    with pytest.raises(DataError, match="SimCLR training takes images, but t holds texts"):
        images_only(TextSet(["a"], torch.zeros(1, dtype=torch.int64), "t"), purpose="SimCLR training")
    with pytest.raises(DataError, match="takes texts, but digits:probe-test holds images"):
        texts_only(images, purpose="a text encoder")


def test_query_documents_is_a_text_only_split():
    with pytest.raises(DataError, match="exists only for text datasets"):
        load_split(SplitSpec("digits", "query-documents", 0, 100))
