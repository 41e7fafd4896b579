"""Small text encoders that train on a CPU in minutes: the students a thief distils a text API into.

Both take a list of strings and tokenize inside ``forward`` with a deterministic tokenizer that needs no download
and no vocabulary file: text is NFKC-normalised and lower-cased, split into words (runs of letters and digits) and
single punctuation marks, and every feature is hashed into a fixed number of buckets with CRC-32 (the *hashing
trick*; Python's own ``hash`` of a string changes with each process, CRC-32 does not). The same text therefore maps
to the same ids on every machine, and a checkpoint needs nothing but its weights and card.

- ``text-ngram`` (:class:`HashedNgramEncoder`): the bag of word unigrams, word bigrams and character ``n``-grams
  (``3 <= n <= 5`` of each word with boundary marks, as fastText does) -> ``nn.EmbeddingBag`` (mean) ->
  LayerNorm -> MLP -> ``D``. No notion of order beyond bigrams; the fastest to train.
- ``text-transformer`` (:class:`HashedTransformerEncoder`): each word is one token whose embedding is the mean
  of its hashed word id and its hashed character ``n``-grams (so misspelt and unseen words get sensible
  vectors), plus a learned position; a small pre-norm transformer encoder; mean pooling over the words; a
  projection to ``D``. Word-level tokens keep sequences short (a sentence is ~15-25 tokens against ~100 for
  bytes), which is what makes the attention and feed-forward layers cheap on a CPU.

References:
    Joulin et al., "Bag of Tricks for Efficient Text Classification", EACL 2017 (fastText).
    Bojanowski et al., "Enriching Word Vectors with Subword Information", TACL 2017.
    Weinberger et al., "Feature Hashing for Large Scale Multitask Learning", ICML 2009.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Sequence

import torch
from torch import nn

from encoderguard.models.encoder import TextEncoder

_WORD_RE = re.compile(r"\w+|[^\w\s]")
# Stands in for a text with no word at all (white space only), so that every text has at least one token.
_EMPTY_TOKEN = "\x01empty"
# Salts (CRC-32 start values) keep the kinds of feature apart when they share one table.
_SALT_WORD, _SALT_BIGRAM, _SALT_CHAR = 0x57, 0x42, 0x43
# Per-word feature caches are cleared when they reach this many words (bounds memory on an endless stream).
_CACHE_WORDS = 200_000


def words_of(text: str) -> list[str]:
    """The tokenizer's words: NFKC-normalised, lower-cased runs of letters/digits and single punctuation marks.

    Args:
        text: any string.

    Returns:
        The words in order (``[]`` for a text of white space only).
    """
    return _WORD_RE.findall(unicodedata.normalize("NFKC", text).lower())


def hash_bucket(piece: str, salt: int, buckets: int) -> int:
    """Bucket of ``piece`` in ``[0, buckets)``: CRC-32 of its UTF-8 started at ``salt`` (same on every machine)."""
    return zlib.crc32(piece.encode("utf-8", "surrogatepass"), salt) % buckets


def char_ngrams(word: str, min_n: int, max_n: int) -> list[str]:
    """Character ``n``-grams (``min_n <= n <= max_n``) of ``<word>``; a word shorter than ``min_n`` gives itself."""
    marked = f"<{word}>"
    grams = [marked[i:i + n] for n in range(min_n, max_n + 1) for i in range(len(marked) - n + 1)]
    return grams or [marked]


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _as_texts(texts: Sequence[str] | str, cls_name: str) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, torch.Tensor) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{cls_name} is a text encoder: forward takes a list of strings, got "
                         f"{type(texts).__name__}")
    return list(texts)



def word_pieces(word: str, buckets: int, min_n: int, max_n: int, cache: dict[str, list[int]]) -> list[int]:
    """The hashed feature ids of one word: its word id, then its character ``min_n..max_n``-grams (memoised in
    ``cache``, which is emptied when it reaches its size bound)."""
    ids = cache.get(word)
    if ids is None:
        ids = [hash_bucket(word, _SALT_WORD, buckets)]
        ids += [hash_bucket(g, _SALT_CHAR, buckets) for g in char_ngrams(word, min_n, max_n)]
        if len(cache) >= _CACHE_WORDS:
            cache.clear()
        cache[word] = ids
    return ids

class HashedNgramEncoder(TextEncoder):
    """Hashed word 1-2-grams and character n-grams -> mean embedding -> MLP -> ``[N, D]`` (``text-ngram``).

    Args:
        embed_dim: output size ``D``.
        buckets: rows of the hashed embedding table (every feature lands in one of them). The table's dense
            gradient and optimiser update are most of a training step's cost: ``2**17`` rows of 64 trained as fast
            as ``2**18`` of 32 and copied all-MiniLM-L6-v2 better (held-out cosine 0.37 against 0.34 after 8
            epochs on 3,000 news sentences).
        dim: width of the embedding table.
        hidden: width of the MLP's hidden layer.
        min_n: shortest character n-gram.
        max_n: longest character n-gram.
        max_words: words read per text; later words are ignored (``max_tokens``).
        input_shape: must be ``None`` (it is a text encoder).

    Raises:
        ValueError: a setting out of range (quoted).
    """

    arch = "text-ngram"

    def __init__(self, *, input_shape: None = None, embed_dim: int = 128, buckets: int = 2 ** 17, dim: int = 64,
                 hidden: int = 256, min_n: int = 3, max_n: int = 5, max_words: int = 256) -> None:
        super().__init__(input_shape=input_shape, embed_dim=embed_dim,
                         arch_kwargs={"buckets": buckets, "dim": dim, "hidden": hidden, "min_n": min_n,
                                      "max_n": max_n, "max_words": max_words})
        _check_int("buckets", buckets, 2)
        _check_int("dim", dim, 1)
        _check_int("hidden", hidden, 1)
        _check_int("min_n", min_n, 1)
        _check_int("max_n", max_n, min_n)
        self.buckets, self.min_n, self.max_n = buckets, min_n, max_n
        self.max_tokens = _check_int("max_words", max_words, 1)
        self.bag = nn.EmbeddingBag(buckets, dim, mode="mean")
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
        self._word_cache: dict[str, list[int]] = {}

    def _word_features(self, word: str) -> list[int]:
        return word_pieces(word, self.buckets, self.min_n, self.max_n, self._word_cache)

    def features(self, text: str) -> list[int]:
        """The hashed feature ids of one text (word unigrams with their character n-grams, then word bigrams)."""
        words = words_of(text)[: self.max_tokens] or [_EMPTY_TOKEN]
        ids: list[int] = []
        for word in words:
            ids.extend(self._word_features(word))
        ids.extend(hash_bucket(f"{a} {b}", _SALT_BIGRAM, self.buckets) for a, b in zip(words, words[1:], strict=False))
        return ids

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Words per text (the tokenizer's, before truncation to ``max_tokens``), at least 1."""
        return [max(1, len(words_of(text))) for text in texts]

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Representations ``[N, D]`` of ``N`` strings.

        Raises:
            ValueError: ``texts`` is not a list of strings.
        """
        texts = _as_texts(texts, type(self).__name__)
        if not texts:
            return self.bag.weight.new_zeros(0, self.embed_dim)
        flat: list[int] = []
        offsets: list[int] = []
        for text in texts:
            offsets.append(len(flat))
            flat.extend(self.features(text))
        device = self.bag.weight.device
        ids = torch.tensor(flat, dtype=torch.long, device=device)
        starts = torch.tensor(offsets, dtype=torch.long, device=device)
        return self.mlp(self.norm(self.bag(ids, starts)))

    def extra_repr(self) -> str:
        return f"buckets={self.buckets}, n={self.min_n}..{self.max_n}, max_words={self.max_tokens}"


class HashedTransformerEncoder(TextEncoder):
    """Hashed word tokens with subword n-grams -> small transformer -> mean pool -> ``[N, D]`` (``text-transformer``).

    Args:
        embed_dim: output size ``D``.
        buckets: rows of the hashed token table (word ids and character n-grams share it). ``2**15`` trains
            about 1.5x faster than ``2**16`` (the table dominates a step's cost) for a held-out cosine to
            all-MiniLM-L6-v2 within 0.01 (8 epochs on 3,000 news sentences).
        d_model: width of the transformer.
        layers: transformer layers.
        heads: attention heads (must divide ``d_model``).
        ff: width of each feed-forward block.
        max_len: words read per text (later ones are dropped; ``max_tokens``); also the number of positions.
        min_n: shortest character n-gram of a word.
        max_n: longest character n-gram of a word.
        dropout: dropout inside the transformer while training.
        input_shape: must be ``None`` (it is a text encoder).

    Raises:
        ValueError: a setting out of range (quoted).
    """

    arch = "text-transformer"

    def __init__(self, *, input_shape: None = None, embed_dim: int = 128, buckets: int = 2 ** 15,
                 d_model: int = 128, layers: int = 2, heads: int = 4, ff: int = 256, max_len: int = 128,
                 min_n: int = 3, max_n: int = 4, dropout: float = 0.1) -> None:
        super().__init__(input_shape=input_shape, embed_dim=embed_dim,
                         arch_kwargs={"buckets": buckets, "d_model": d_model, "layers": layers, "heads": heads,
                                      "ff": ff, "max_len": max_len, "min_n": min_n, "max_n": max_n,
                                      "dropout": dropout})
        _check_int("buckets", buckets, 2)
        _check_int("d_model", d_model, 1)
        _check_int("layers", layers, 1)
        _check_int("heads", heads, 1)
        _check_int("ff", ff, 1)
        _check_int("min_n", min_n, 1)
        _check_int("max_n", max_n, min_n)
        if d_model % heads:
            raise ValueError(f"heads must divide d_model, got d_model={d_model}, heads={heads}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.buckets, self.min_n, self.max_n = buckets, min_n, max_n
        self.max_tokens = _check_int("max_len", max_len, 1)
        self.tokens = nn.EmbeddingBag(buckets, d_model, mode="mean")
        self.positions = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=ff, dropout=float(dropout),
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.project = nn.Linear(d_model, embed_dim)
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)
        self._word_cache: dict[str, list[int]] = {}

    def token_pieces(self, word: str) -> list[int]:
        """The hashed ids whose mean embeds one word: its word id, then its character n-grams."""
        return word_pieces(word, self.buckets, self.min_n, self.max_n, self._word_cache)

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """The words each text is read as (truncated to ``max_tokens``; an empty text reads as one placeholder)."""
        return [words_of(text)[: self.max_tokens] or [_EMPTY_TOKEN] for text in texts]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Words per text (the tokenizer's, before truncation to ``max_tokens``), at least 1."""
        return [max(1, len(words_of(text))) for text in texts]

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Representations ``[N, D]`` of ``N`` strings.

        Raises:
            ValueError: ``texts`` is not a list of strings.
        """
        tokenized = self.tokenize(_as_texts(texts, type(self).__name__))
        if not tokenized:
            return self.tokens.weight.new_zeros(0, self.embed_dim)
        flat: list[int] = []
        offsets: list[int] = []
        for words in tokenized:
            for word in words:
                offsets.append(len(flat))
                flat.extend(self.token_pieces(word))
        device = self.tokens.weight.device
        vectors = self.tokens(torch.tensor(flat, dtype=torch.long, device=device),
                              torch.tensor(offsets, dtype=torch.long, device=device))  # [T, d_model]
        lengths = torch.tensor([len(words) for words in tokenized], dtype=torch.long, device=device)
        width = int(lengths.max())
        mask = torch.arange(width, device=device)[None, :] < lengths[:, None]  # [N, L], True at words
        x = vectors.new_zeros(len(tokenized), width, vectors.shape[1]).masked_scatter(mask[..., None], vectors)
        x = x + self.positions.weight[:width]
        x = self.transformer(x, src_key_padding_mask=~mask)
        keep = mask[..., None].to(x.dtype)
        pooled = (x * keep).sum(1) / lengths[:, None].clamp_min(1).to(x.dtype)
        return self.project(self.norm(pooled))

    def extra_repr(self) -> str:
        return f"buckets={self.buckets}, n={self.min_n}..{self.max_n}, max_len={self.max_tokens}"
