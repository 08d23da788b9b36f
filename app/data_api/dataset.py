"""Load the Covertype CSV once and keep every row pre-encoded as its JSON array.

A /data response is ~5,800 rows of 13 strings. Encoding them per request costs milliseconds;
encoding each row once at start-up and joining the sampled rows' bytes per request costs a
fraction of that. The rows are served as the CSV has them (strings, as-is), so the JSON array
of a plain row is just the line with '","' for ',' between '["' and '"]'.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import BinaryIO

import msgspec

from app.covertype import COLUMNS

# Decompressed bytes per read: large enough that per-chunk overhead vanishes, small enough
# that the raw text never sits in memory next to the encoded rows.
_CHUNK_BYTES = 1 << 20
_N_FIELDS = len(COLUMNS)
# Bytes that may not appear raw inside a JSON string (or that mean CSV quoting is in play),
# except the newline that separates lines in a block. A block with any of them takes the slow,
# exact path (csv module + msgspec).
_NEEDS_SLOW_PATH = re.compile(rb'["\\\x00-\x09\x0b-\x1f]')
_GZIP_MAGIC = b"\x1f\x8b"


class DatasetError(ValueError):
    """The dataset file is missing or does not follow the data contract; the message says how."""


@dataclass(frozen=True)
class Dataset:
    """The file cut into contiguous batches (file order), each a list of JSON-array bytes."""

    path: Path
    batches: tuple[list[bytes], ...]

    @property
    def n_rows(self) -> int:
        return sum(len(b) for b in self.batches)

    @property
    def batch_sizes(self) -> list[int]:
        return [len(b) for b in self.batches]

    @property
    def rows_per_response(self) -> list[int]:
        # One tenth of the batch, rounded down, as the course's API does.
        return [len(b) // 10 for b in self.batches]


def batch_bounds(n_rows: int, n_batches: int) -> list[tuple[int, int]]:
    """[start, end) of each batch; sizes differ by at most one, larger batches first."""
    base, extra = divmod(n_rows, n_batches)
    bounds = []
    start = 0
    for i in range(n_batches):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def load_dataset(path: Path, n_batches: int) -> Dataset:
    """Read a (optionally gzip-compressed) CSV with the contract's header into batches."""
    try:
        with _open(path) as raw:
            rows = _encode_rows(raw, path)
    except FileNotFoundError as exc:
        raise DatasetError(f"dataset file not found: {path} (set DATA_API_DATASET)") from exc
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc}") from exc
    if len(rows) < 10 * n_batches:
        raise DatasetError(
            f"{path} has {len(rows)} rows: {n_batches} batches need at least {10 * n_batches} "
            "so that every response (a tenth of a batch) has at least one row"
        )
    batches = tuple(rows[start:end] for start, end in batch_bounds(len(rows), n_batches))
    return Dataset(path=path, batches=batches)


def _open(path: Path) -> BinaryIO:
    # Compressed or not is decided by content, so a misnamed file still loads.
    with path.open("rb") as f:
        magic = f.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _encode_rows(raw: BinaryIO, path: Path) -> list[bytes]:
    header = raw.readline().decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if not header:
        raise DatasetError(f"{path} is empty: expected a header line")
    if tuple(header.split(",")) != COLUMNS:
        raise DatasetError(
            f"{path}: header does not match the data contract (app.covertype.COLUMNS); "
            f"expected {','.join(COLUMNS)!r}, got {header[:500]!r}"
        )
    rows: list[bytes] = []
    line_no = 1  # the header
    for block in _line_blocks(raw):
        rows.extend(_encode_block(block, line_no + 1, path))
        line_no += block.count(b"\n") + 1
    return rows


def _line_blocks(raw: BinaryIO) -> Iterator[bytes]:
    """Blocks of whole lines (no trailing newline), CRLF normalised to LF."""
    rest = b""
    while chunk := raw.read(_CHUNK_BYTES):
        chunk = rest + chunk
        cut = chunk.rfind(b"\n")
        if cut < 0:
            rest = chunk
            continue
        rest = chunk[cut + 1 :]
        # Cut after the newline so a CR right before it is normalised with it.
        yield chunk[: cut + 1].replace(b"\r\n", b"\n")[:-1]
    if rest.rstrip(b"\r"):
        yield rest.rstrip(b"\r")


def _encode_block(block: bytes, first_line_no: int, path: Path) -> list[bytes]:
    if block.isascii() and _NEEDS_SLOW_PATH.search(block) is None:
        # Whole-block replaces and one split: no Python-level work per row on the fast path.
        encoded = (b'["' + block.replace(b",", b'","').replace(b"\n", b'"]\n["') + b'"]').split(
            b"\n"
        )
        # The block has no quotes, so every '","' was a comma: 12 per row means 13 fields.
        if set(map(bytes.count, encoded, repeat(b'","'))) == {_N_FIELDS - 1}:
            return encoded
    encoded = []
    for line_no, line in enumerate(block.split(b"\n"), first_line_no):
        if not line:
            continue  # blank lines carry no row (csv and pandas skip them too)
        encoded.append(_encode_line_exactly(line, line_no, path))
    return encoded


def _encode_line_exactly(line: bytes, line_no: int, path: Path) -> bytes:
    text = _check_utf8(line, line_no, path)
    fields = next(csv.reader(io.StringIO(text)), [])
    if len(fields) != _N_FIELDS:
        raise DatasetError(f"{path} line {line_no}: {len(fields)} fields, expected {_N_FIELDS}")
    return msgspec.json.encode(fields)


def _check_utf8(line: bytes, line_no: int, path: Path) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} line {line_no}: not UTF-8 ({exc.reason})") from exc
