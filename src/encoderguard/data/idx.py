"""Reader for the classic idx format (MNIST, Fashion-MNIST), plain or gzip-compressed.

The format: a big-endian header of two zero bytes, a type code, the number of dimensions ``d``, then ``d`` uint32
sizes, then the data. Only unsigned bytes (type 0x08) are used by image and label files; the reader validates the
header and that the payload has exactly the size the header promises, so a truncated or wrong file is an error.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from encoderguard.errors import DataError

_DTYPES: dict[int, np.dtype] = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
                                0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
# Generous bound on any single idx file this project reads (the 60k-image MNIST file is 47 MB raw).
_MAX_BYTES = 2 * 1024**3


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (``.gz`` or raw) into a numpy array.

    Args:
        path: file path; gzip is detected from the magic bytes, not the name.

    Returns:
        Array of the shape the header gives, in native byte order.

    Raises:
        DataError: the file is missing, not idx, of an unknown type, or its size disagrees with its header.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"idx file not found: {path}")
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:  # type: ignore[operator]
            raw = fh.read(_MAX_BYTES + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read idx file {path}: {exc}") from exc
    return parse_idx(raw, source=str(path))


def parse_idx(raw: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an idx file (already decompressed). See :func:`read_idx`."""
    if len(raw) > _MAX_BYTES:
        raise DataError(f"{source}: idx file larger than {_MAX_BYTES} bytes")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{source}: not an idx file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _DTYPES:
        raise DataError(f"{source}: unknown idx data type 0x{type_code:02x}")
    if ndim == 0 or ndim > 4:
        raise DataError(f"{source}: unsupported number of dimensions {ndim}")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(f"{source}: truncated idx header")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = _DTYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(raw) - header_len
    if payload != expected:
        raise DataError(
            f"{source}: idx header promises {dims} ({expected} bytes of data) but the file holds {payload} bytes"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool = True) -> None:
    """Write a uint8 array as an idx file (used by tests and by users preparing their own data)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx supports uint8 arrays only, got dtype {array.dtype}")
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    opener = gzip.open if compress else open
    with opener(Path(path), "wb") as fh:  # type: ignore[operator]
        fh.write(data)
