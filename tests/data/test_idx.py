import gzip
import struct

import numpy as np
import pytest

from encoderguard.data import read_idx, write_idx
from encoderguard.errors import DataError


def test_roundtrip_gzip_and_raw(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", images)
    write_idx(tmp_path / "a.raw", images, compress=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), images)
    assert np.array_equal(read_idx(tmp_path / "a.raw"), images)


def test_truncated_file_names_sizes(tmp_path):
    images = np.zeros((4, 2, 2), dtype=np.uint8)
    write_idx(tmp_path / "ok", images, compress=False)
    raw = (tmp_path / "ok").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-3])
    with pytest.raises(DataError, match="holds 13 bytes"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("payload, message", [
    (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"x", "bad magic"),
    (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"x", "unknown idx data type"),
    (b"\x00\x00\x08\x03" + b"\x00" * 4, "truncated idx header"),
    (b"\x00", "bad magic"),
])
def test_malformed_headers(tmp_path, payload, message):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(payload)
    with pytest.raises(DataError, match=message):
        read_idx(path)


def test_missing_and_corrupt_gzip(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope.gz")
    (tmp_path / "broken.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "broken.gz")


def test_write_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "x", np.zeros((2, 2), dtype=np.float32))
