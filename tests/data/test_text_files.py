"""Users' own text: ``text:`` folders of ``.txt`` documents and ``jsonl:`` files, their splits and their errors."""

import json
from pathlib import Path

import pytest

from encoderguard.data import SplitSpec, TextSet, load_dataset, load_split, parse_data_spec
from encoderguard.errors import DataError


def _doc(i: int) -> str:
    return f"Document number {i} opens here. It has a second sentence of some length.\n"


def _write_class_folder(root: Path, classes=("news", "sport"), per_class: int = 6) -> Path:
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            (root / cls / f"{i:02d}.txt").write_text(_doc(c * 100 + i), encoding="utf-8")
    return root


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _load(spec: str) -> TextSet:
    data = load_split(SplitSpec(*parse_data_spec(spec, default_split="all"), 0, 2))
    assert isinstance(data, TextSet)
    return data


# -- text: folders ------------------------------------------------------------------------------------------------

def test_text_folder_labels_by_sorted_class_and_splits_like_images(tmp_path):
    root = _write_class_folder(tmp_path / "corpus", classes=("b", "a"))
    raw = load_dataset(f"text:{root}")
    assert raw.modality == "text" and raw.test is None and len(raw.train) == 12
    assert raw.train.labels.tolist() == [0] * 6 + [1] * 6  # "a" sorts first
    assert raw.train.texts[0] == _doc(100).strip()
    every = _load(f"text:{root}:all")
    assert len(every) == 12 and sorted(every.groups.tolist()) == list(range(12))
    parts = {s: _load(f"text:{root}:{s}") for s in ("owner-train", "owner-heldout", "query-documents",
                                                      "probe-train", "probe-test")}
    assert [len(p) for p in parts.values()] == [2, 2, 5, 1, 2]
    ids = [set(p.groups.tolist()) for p in parts.values()]
    assert len(set().union(*ids)) == sum(len(i) for i in ids) == 12


def test_text_folder_query_is_sentences_of_the_query_documents(tmp_path):
    root = _write_class_folder(tmp_path / "corpus")
    documents = _load(f"text:{root}:query-documents")
    sentences = _load(f"text:{root}:query")
    assert len(sentences) == 2 * len(documents)
    assert set(sentences.groups.tolist()) == set(documents.groups.tolist())


def test_text_folder_with_train_and_test_parts(tmp_path):
    _write_class_folder(tmp_path / "c" / "train", per_class=4)
    _write_class_folder(tmp_path / "c" / "test", per_class=2)
    raw = load_dataset(f"text:{tmp_path / 'c'}")
    assert len(raw.train) == 8 and raw.test is not None and len(raw.test) == 4
    assert raw.test.groups.tolist() == [8, 9, 10, 11]  # ids unique across the parts
    assert len(_load(f"text:{tmp_path / 'c'}:probe-train")) == 2


def test_text_folder_without_classes_is_unlabelled(tmp_path):
    for i in range(4):
        (tmp_path / f"{i}.txt").write_text(_doc(i), encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    raw = load_dataset(f"text:{tmp_path}")
    assert len(raw.train) == 4 and raw.train.labels.tolist() == [-1] * 4


def test_text_folder_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"text:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.txt documents"):
        load_dataset(f"text:{tmp_path / 'empty'}")
    cases = {
        "binary": (b"fine line\n\x00\x01\x02", r"binary\.txt: line 2 holds a NUL byte"),
        "latin1": (b"line one\nprice \xa3 5\n", r"latin1\.txt: line 2 is not UTF-8 \(byte 0xa3"),
        "blank": (b"  \n\t\n", r"blank\.txt: empty document"),
    }
    for stem, (data, message) in cases.items():
        root = _write_class_folder(tmp_path / stem, per_class=1)
        (root / "news" / f"{stem}.txt").write_bytes(data)
        with pytest.raises(DataError, match=message) as info:
            load_dataset(f"text:{root}")
        assert "\n" not in str(info.value)


def test_text_folder_reads_a_byte_order_mark(tmp_path):
    root = _write_class_folder(tmp_path / "c", per_class=1)
    (root / "news" / "bom.txt").write_bytes("\ufeffHello there, reader.".encode())
    assert "Hello there, reader." in load_dataset(f"text:{root}").train.texts


# -- jsonl: files -------------------------------------------------------------------------------------------------

def test_jsonl_string_labels_are_numbered_in_sorted_order(tmp_path):
    lines = [json.dumps({"text": _doc(i), "label": ["sport", "news", "arts"][i % 3]}) for i in range(9)]
    lines.insert(3, "")  # blank lines are skipped
    lines.append(json.dumps({"text": "No label on this one at all."}))
    path = _write_jsonl(tmp_path / "d.jsonl", lines)
    raw = load_dataset(f"jsonl:{path}")
    assert raw.modality == "text" and raw.test is None and len(raw.train) == 10
    assert raw.train.labels.tolist() == [2, 1, 0, 2, 1, 0, 2, 1, 0, -1]
    assert raw.train.texts[0] == _doc(0).strip() and raw.train.name == f"jsonl:{path}:train"


def test_jsonl_int_labels_and_splits(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl",
                        [json.dumps({"text": _doc(i), "label": i % 2, "id": i}) for i in range(16)])
    assert load_dataset(f"jsonl:{path}").train.labels.tolist() == [i % 2 for i in range(16)]
    parts = [_load(f"jsonl:{path}:{s}") for s in ("owner-train", "owner-heldout", "query-documents", "probe-train",
                                                   "probe-test")]
    assert [len(p) for p in parts] == [2, 4, 6, 2, 2]
    assert len(set().union(*(set(p.groups.tolist()) for p in parts))) == 16
    assert len(_load(f"jsonl:{path}:query")) == 12


@pytest.mark.parametrize(("content", "message"), [
    (b"", r"d\.jsonl: empty file"),
    (b"\n  \n", r"d\.jsonl: empty file"),
    (b'{"text": "ok here"}\n{"text": oops}\n', r"d\.jsonl: line 2 is not valid JSON"),
    (b'{"text": "ok here"}\n["text"]\n', r"d\.jsonl: line 2 is a JSON list, not an object"),
    (b'{"text": "ok here"}\n{"body": "x"}\n', r"d\.jsonl: line 2 has no \"text\" field"),
    (b'{"text": "   "}\n', r"d\.jsonl: line 1: empty \"text\""),
    (b'{"text": 5}\n', r"d\.jsonl: line 1: \"text\" must be a string"),
    (b'{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n', r"line 2: \"label\" is a str but line 1's is a"),
    (b'{"text": "a", "label": 1.5}\n', r"line 1: \"label\" must be an integer or a string, got float"),
    (b'{"text": "a", "label": true}\n', r"line 1: \"label\" must be an integer or a string, got bool"),
    (b'{"text": "a", "label": -3}\n', r"line 1: \"label\" -3 is negative"),
    (b'{"text": "a"}\n{"text": "caf\xe9"}\n', r"d\.jsonl: line 2 is not UTF-8"),
    (b'{"text": "a"}\n\x00\n', r"d\.jsonl: line 2 holds a NUL byte"),
])
def test_jsonl_errors_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(f"jsonl:{path}")
    assert "\n" not in str(info.value)


def test_jsonl_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"jsonl:{tmp_path / 'none.jsonl'}")


def test_path_specs_keep_their_path():
    assert parse_data_spec("text:/a/b:query", default_split="all") == ("text:/a/b", "query")
    assert parse_data_spec("jsonl:/a/b.jsonl", default_split="query") == ("jsonl:/a/b.jsonl", "query")
    assert parse_data_spec("jsonl:/a/b.jsonl:probe-test", default_split="all") == ("jsonl:/a/b.jsonl", "probe-test")
