"""Sentences cut from documents: the pool of short texts a thief sends to a text embedding API.

The splitter is a small deterministic regular-expression rule (no language model, nothing to download): a document
is cut into paragraphs at line breaks, each paragraph into sentences after ``.``, ``!`` or ``?`` (and any closing
quotes or brackets) followed by white space, except after common abbreviations (``Mr.``, ``e.g.``) and single
initials (``J. K. Rowling``, ``U.S.``). White space inside a sentence is collapsed to single spaces, and fragments
shorter than ``min_chars`` characters are dropped; a document none of whose sentences is long enough contributes
itself (collapsed) as one text, so that every document appears in the pool.
"""

from __future__ import annotations

import functools
import re

import torch

from encoderguard.data.text_set import TextSet

#: Shortest sentence kept (characters): shorter fragments are mostly bylines, headings and list debris.
MIN_SENTENCE_CHARS = 20

_PARAGRAPH = re.compile(r"\s*\n\s*")
# a sentence ends at . ! ? (with closing quotes or brackets) and white space, unless a lower-case word follows
_BOUNDARY = re.compile(r"[.!?]+[\"'\u2019\u201d)\]]*\s+(?![a-z])")
_SPACE = re.compile(r"\s+")
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "e.g", "i.e", "no", "inc", "ltd", "co",
    "corp", "gov", "gen", "col", "sgt", "lt", "capt", "rev", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "approx", "fig", "al",
})


def _is_abbreviation(chunk: str) -> bool:
    """Whether ``chunk`` (text up to a full stop, exclusive) ends in an abbreviation or an initial."""
    words = chunk[-40:].split()
    if not words:
        return False
    word = words[-1].lstrip("\"'(\u2018\u201c[").lower()
    # single letters and dotted initials ("j", "u.s") end no sentence
    return word in _ABBREVIATIONS or (len(word.replace(".", "")) <= 2 and word.replace(".", "").isalpha()
                                      and (len(word) == 1 or "." in word))


def split_sentences(text: str, *, min_chars: int = MIN_SENTENCE_CHARS) -> list[str]:
    """Cut a document into sentences, in order.

    Args:
        text: the document.
        min_chars: shortest sentence kept, in characters after collapsing white space.

    Returns:
        The sentences (each stripped, white space collapsed, at least ``min_chars`` long); possibly empty.

    Raises:
        ValueError: ``min_chars`` is negative.
    """
    if min_chars < 0:
        raise ValueError(f"min_chars must be >= 0, got {min_chars}")
    return list(_split_cached(text, min_chars))


# the sentence pool of a dataset is rebuilt on every load of its query split: remember recent documents' sentences
@functools.lru_cache(maxsize=16384)
def _split_cached(text: str, min_chars: int) -> tuple[str, ...]:
    sentences: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        start = 0
        for boundary in _BOUNDARY.finditer(paragraph):
            end = boundary.end()
            stop = paragraph[start:boundary.start()]
            if paragraph[boundary.start()] == "." and _is_abbreviation(stop):
                continue
            sentences.append(paragraph[start:end])
            start = end
        sentences.append(paragraph[start:])
    cleaned = (_SPACE.sub(" ", s).strip() for s in sentences)
    return tuple(s for s in cleaned if s and len(s) >= min_chars)


def sentence_pool(documents: TextSet, *, name: str | None = None, min_chars: int = MIN_SENTENCE_CHARS) -> TextSet:
    """The sentences of every document of ``documents``, document by document in order.

    Each sentence keeps its document's label, and ``groups`` holds its document's id: the document's own entry of
    ``documents.groups`` when the set has groups, else its position in ``documents``. A document without a
    sentence of ``min_chars`` characters contributes itself (white space collapsed) as one text.

    Args:
        documents: the documents.
        name: name of the pool (default: that of ``documents``).
        min_chars: shortest sentence kept.

    Returns:
        A :class:`TextSet` of sentences with ``groups`` set.
    """
    ids = (documents.groups if documents.groups is not None
           else torch.arange(len(documents), dtype=torch.int64)).tolist()
    labels = documents.labels.tolist()
    texts: list[str] = []
    out_labels: list[int] = []
    groups: list[int] = []
    for text, label, doc in zip(documents.texts, labels, ids, strict=True):
        pieces = split_sentences(text, min_chars=min_chars)
        if not pieces:
            whole = _SPACE.sub(" ", text).strip()
            pieces = [whole] if whole else []
        texts += pieces
        out_labels += [int(label)] * len(pieces)
        groups += [int(doc)] * len(pieces)
    return TextSet(texts, torch.tensor(out_labels, dtype=torch.int64), name or documents.name,
                   torch.tensor(groups, dtype=torch.int64))
