"""The sentence splitter and the sentence pool cut from documents."""

import pytest
import torch

from encoderguard.data import TextSet, sentence_pool, split_sentences


def test_splits_at_sentence_ends_and_paragraphs():
    text = "Title of the story\n\nFirst sentence is here. Second one asks why? Third one shouts!\nNew paragraph"
    assert split_sentences(text, min_chars=0) == [
        "Title of the story", "First sentence is here.", "Second one asks why?", "Third one shouts!", "New paragraph"]


def test_abbreviations_initials_and_quotes_do_not_end_sentences():
    text = ('Mr. Smith met J. K. Rowling in the U.S. on Monday. It rained! "Really?" she asked. '
            'Then (it was late.) They left.')
    assert split_sentences(text, min_chars=0) == [
        "Mr. Smith met J. K. Rowling in the U.S. on Monday.", "It rained!", '"Really?" she asked.',
        "Then (it was late.)", "They left."]


def test_short_fragments_are_dropped_and_white_space_collapsed():
    text = "By Jo Bloggs\nA sentence   that is\tlong enough. Ok. Another long enough sentence."
    assert split_sentences(text) == ["A sentence that is long enough.", "Another long enough sentence."]
    assert split_sentences("   \n\n  ") == []
    with pytest.raises(ValueError, match="-1"):
        split_sentences("x", min_chars=-1)


def test_pool_keeps_labels_document_ids_and_order():
    docs = TextSet(["First long sentence of doc one. Second long sentence of doc one.", "tiny",
                    "Only sentence of document C here."],
                   torch.tensor([2, 0, 1]), "d", torch.tensor([10, 11, 12]))
    pool = sentence_pool(docs, name="d:query")
    assert pool.texts == ["First long sentence of doc one.", "Second long sentence of doc one.", "tiny",
                          "Only sentence of document C here."]
    assert pool.labels.tolist() == [2, 2, 0, 1] and pool.groups.tolist() == [10, 10, 11, 12]
    assert pool.name == "d:query"
    # without groups, a document's id is its position
    plain = sentence_pool(TextSet(docs.texts, docs.labels))
    assert plain.groups.tolist() == [0, 0, 1, 2]


def test_empty_pool_is_a_valid_set():
    pool = sentence_pool(TextSet([], torch.zeros(0, dtype=torch.int64)))
    assert len(pool) == 0 and pool.groups.shape == (0,)
