"""Users' own text: a folder of ``.txt`` documents (``text:PATH``) or a JSON Lines file (``jsonl:PATH``).

``text:PATH``: one sub-folder per class holding ``.txt`` files, each file one document (UTF-8), optionally under
``train/`` and ``test/`` like ``folder:`` images; ``.txt`` files directly in ``PATH`` (no class sub-folders) are
documents without labels. ``jsonl:PATH``: one JSON object per line with a ``"text"`` string and an optional
``"label"`` (integers as given; strings numbered in sorted order; absent or ``null``: ``-1``); blank lines are
skipped. Documents are stripped of surrounding white space. Every problem is a one-line :class:`DataError` naming
the file (and line).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from encoderguard.data.text_set import TextSet
from encoderguard.errors import DataError

TEXT_SUFFIX = ".txt"


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def decode_text(data: bytes, where: str) -> str:
    """Decode a document's bytes as UTF-8 (a leading byte-order mark is dropped).

    Args:
        data: the raw bytes.
        where: the file named in errors.

    Returns:
        The text.

    Raises:
        DataError: NUL bytes (a binary file) or bytes that are not UTF-8, naming the line.
    """
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{where}: line {_line_of(data, nul)} holds a NUL byte: a binary file, not UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: line {_line_of(data, exc.start)} is not UTF-8 (byte 0x{data[exc.start]:02x} at "
                        f"offset {exc.start}); convert the file to UTF-8") from None


def _read_document(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    text = decode_text(data, str(path)).strip()
    if not text:
        raise DataError(f"{path}: empty document (no text besides white space)")
    return text


def _text_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == TEXT_SUFFIX)


def read_text_documents(root: Path, name: str, *, first_id: int = 0) -> TextSet:
    """Read ``root/<class>/*.txt`` (labels by sorted class name) or ``root/*.txt`` (labels ``-1``).

    Args:
        root: the folder.
        name: the name of the set.
        first_id: document id of the first file (``groups`` counts on from it).

    Returns:
        One document per file, in sorted order, with ``groups`` = document ids.

    Raises:
        DataError: no ``.txt`` files, or a file that is empty, binary or not UTF-8.
    """
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        files += [(f, label) for f in _text_files(cls)]
    if not classes:
        files = [(f, -1) for f in _text_files(root)]
    if not files:
        where = f"{root}/<class>/*{TEXT_SUFFIX}" if classes else f"{root}/<class>/*{TEXT_SUFFIX} or {root}/*.txt"
        raise DataError(f"{root}: no {TEXT_SUFFIX} documents (expected {where})")
    texts = [_read_document(path) for path, _ in files]
    return TextSet(texts, torch.tensor([label for _, label in files], dtype=torch.int64), name,
                   torch.arange(first_id, first_id + len(texts), dtype=torch.int64))


def read_text_folder(folder: str | os.PathLike[str], *, name: str) -> tuple[TextSet, TextSet | None]:
    """The ``train`` and (where there is a ``test/`` folder) ``test`` parts of a ``text:`` folder.

    Args:
        folder: ``PATH`` of ``text:PATH``.
        name: the dataset's name (``text:PATH``).

    Returns:
        ``(train, test)``; ``test`` is ``None`` without ``PATH/test``.

    Raises:
        DataError: the folder is missing or holds no documents, or a document is unreadable.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset {name!r}: folder {folder} does not exist")
    if (folder / "train").is_dir():
        train = read_text_documents(folder / "train", f"{name}:train")
        test = (read_text_documents(folder / "test", f"{name}:test", first_id=len(train))
                if (folder / "test").is_dir() else None)
        return train, test
    return read_text_documents(folder, f"{name}:train"), None


def _parse_label(value: object, where: str) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(f"{where}: \"label\" must be an integer or a string, got {type(value).__name__}")
    if isinstance(value, int) and value < -1:
        raise DataError(f"{where}: \"label\" {value} is negative (use -1 or leave it out for unknown)")
    return value


def read_jsonl(path: str | os.PathLike[str], *, name: str) -> TextSet:
    """Read a JSON Lines file: one object per line with ``"text"`` and optionally ``"label"``.

    Integer labels are kept; string labels are numbered ``0..K-1`` in sorted order; a missing or ``null`` label is
    ``-1``. One file mixes no integer and string labels.

    Args:
        path: ``PATH`` of ``jsonl:PATH``.
        name: the dataset's name (``jsonl:PATH``).

    Returns:
        The documents in file order, named ``NAME:train``, with ``groups`` = document ids.

    Raises:
        DataError: a missing or empty file, bytes that are not UTF-8 or a NUL byte, a line that is not a JSON
            object, a missing or empty ``"text"``, a bad ``"label"`` (each naming the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset {name!r}: file {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    content = decode_text(data, str(path))
    texts: list[str] = []
    raw_labels: list[int | str | None] = []
    label_kind: tuple[type, int] | None = None
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} is not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where} is a JSON {type(record).__name__}, not an object with a \"text\" field")
        if "text" not in record:
            raise DataError(f"{where} has no \"text\" field")
        text = record["text"]
        if not isinstance(text, str):
            raise DataError(f"{where}: \"text\" must be a string, got {type(text).__name__}")
        if not text.strip():
            raise DataError(f"{where}: empty \"text\"")
        label = _parse_label(record.get("label"), where)
        if label is not None:
            if label_kind is None:
                label_kind = (type(label), number)
            elif type(label) is not label_kind[0]:
                raise DataError(f"{where}: \"label\" is a {type(label).__name__} but line {label_kind[1]}'s is a "
                                f"{label_kind[0].__name__}; use one kind of label per file")
        texts.append(text.strip())
        raw_labels.append(label)
    if not texts:
        raise DataError(f"{path}: empty file (expected one JSON object with a \"text\" field per line)")
    names = sorted({label for label in raw_labels if isinstance(label, str)})
    index = {label: i for i, label in enumerate(names)}
    labels = [-1 if label is None else index[label] if isinstance(label, str) else label for label in raw_labels]
    return TextSet(texts, torch.tensor(labels, dtype=torch.int64), f"{name}:train",
                   torch.arange(len(texts), dtype=torch.int64))
