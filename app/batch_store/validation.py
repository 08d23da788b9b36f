"""Row validation against the data contract (app/covertype), with a specific reason per problem.

It runs on every delivered row (5,810 per batch). The common case -- a payload whose rows are
all clean, canonical strings -- is confirmed column by column in C-level loops; only a payload
with something unusual in it goes through validate_row, row by row, which names each problem.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from app.covertype import (
    COLUMNS,
    COVER_TYPES,
    NUMERIC_COLUMNS,
    NUMERIC_RANGES,
    SOIL_TYPES,
    TARGET_COLUMN,
    WILDERNESS_AREAS,
)

N_FIELDS: Final = len(COLUMNS)
_COVER_RANGE: Final = (min(COVER_TYPES), max(COVER_TYPES))
# (position, name, low, high) of every integer field, in column order: the target is last.
_INTEGER_FIELDS: Final = tuple(
    (COLUMNS.index(name), name, *NUMERIC_RANGES[name]) for name in NUMERIC_COLUMNS
) + ((COLUMNS.index(TARGET_COLUMN), TARGET_COLUMN, *_COVER_RANGE),)
_WILDERNESS_AT: Final = COLUMNS.index("Wilderness_Area")
_SOIL_AT: Final = COLUMNS.index("Soil_Type")
_WILDERNESS_SET: Final = frozenset(WILDERNESS_AREAS)
_SOIL_SET: Final = frozenset(SOIL_TYPES)
_WILDERNESS_LIST: Final = ", ".join(WILDERNESS_AREAS)
# What counts as an integer when the text is not already canonical ("007", "+5"). int() alone
# would also accept " 5", "1_000" and non-ASCII digits.
_INTEGER_TEXT: Final = re.compile(r"[+-]?[0-9]+")
_MAX_SHOWN: Final = 40  # characters of an offending value quoted in a reason


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a row. `kind` groups problems for the report's summary."""

    kind: str
    message: str


@dataclass(frozen=True)
class Rejection:
    index: int  # position in the delivered payload
    row: object  # exactly as received
    problems: tuple[Problem, ...]

    @property
    def reason(self) -> str:
        return "; ".join(p.message for p in self.problems)


@dataclass(frozen=True)
class ValidationResult:
    # Canonical text of each valid row's 13 values (integers without sign noise or leading
    # zeros), in payload order; the database stores and hashes exactly these.
    valid: list[tuple[str, ...]]
    rejected: list[Rejection]

    def summary(self) -> dict[str, int]:
        """How many rejected rows had each kind of problem."""
        counts: Counter[str] = Counter()
        for rejection in self.rejected:
            counts.update({p.kind for p in rejection.problems})
        return dict(sorted(counts.items()))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _integer(value: object) -> int | None:
    if type(value) is int:  # JSON numbers; bool is not an integer here
        return value
    if type(value) is not str:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    if str(number) == value or _INTEGER_TEXT.fullmatch(value):
        return number
    return None


def validate_row(row: object) -> tuple[tuple[str, ...] | None, tuple[Problem, ...]]:
    """(canonical values, ()) for a good row, (None, problems) for a bad one."""
    if not isinstance(row, list | tuple):
        kind = type(row).__name__
        return None, (Problem("not a list", f"row is a {kind}, expected a list of {N_FIELDS}"),)
    if len(row) != N_FIELDS:
        return None, (
            Problem("wrong field count", f"row has {len(row)} fields, expected {N_FIELDS}"),
        )
    values = list(row)
    problems: list[Problem] = []
    for i, name, low, high in _INTEGER_FIELDS:
        raw = row[i]
        number = _integer(raw)
        if number is None:
            problems.append(
                Problem(f"{name}: not an integer", f"{name}: {_shown(raw)} is not an integer")
            )
        elif number < low or number > high:
            problems.append(
                Problem(f"{name}: out of range", f"{name}: {number} is outside {low}..{high}")
            )
        else:
            values[i] = str(number)
    wilderness = row[_WILDERNESS_AT]
    if type(wilderness) is not str or wilderness not in _WILDERNESS_SET:
        problems.append(
            Problem(
                "Wilderness_Area: unknown value",
                f"Wilderness_Area: {_shown(wilderness)} is not one of {_WILDERNESS_LIST}",
            )
        )
    soil = row[_SOIL_AT]
    if type(soil) is not str or soil not in _SOIL_SET:
        problems.append(
            Problem(
                "Soil_Type: unknown value",
                f"Soil_Type: {_shown(soil)} is not one of the 40 ELU codes (C2702 ... C8776)",
            )
        )
    if problems:
        return None, tuple(problems)
    return tuple(values), ()


def _all_clean(rows: Sequence[list[object]]) -> bool:
    """Whether every row (each a list of 13) is valid and already canonical, checked column by
    column with C-level map/min/max/set operations: about 20x cheaper than validate_row per row.
    Any doubt (a float, an int, " 5", "007", an unknown name) answers False and the caller
    falls back to the exact per-row check, so both paths accept the same rows."""
    if not rows:
        return True
    try:
        for i, _name, low, high in _INTEGER_FIELDS:
            column = [row[i] for row in rows]
            numbers = list(map(int, column))
            if min(numbers) < low or max(numbers) > high or list(map(str, numbers)) != column:
                return False
        return {row[_WILDERNESS_AT] for row in rows} <= _WILDERNESS_SET and {
            row[_SOIL_AT] for row in rows
        } <= _SOIL_SET
    except (TypeError, ValueError):
        return False


def validate_rows(rows: Sequence[object]) -> ValidationResult:
    if all(type(row) is list and len(row) == N_FIELDS for row in rows) and _all_clean(rows):
        return ValidationResult([tuple(row) for row in rows], [])
    valid: list[tuple[str, ...]] = []
    rejected: list[Rejection] = []
    for index, row in enumerate(rows):
        values, problems = validate_row(row)
        if values is None:
            rejected.append(Rejection(index, row, problems))
        else:
            valid.append(values)
    return ValidationResult(valid, rejected)


def canonical_text(values: Sequence[str]) -> str:
    """The text a row's hash is taken of; matches covertype_row_hash() in the schema."""
    return ",".join(values)


def row_hash(values: Sequence[str]) -> bytes:
    """sha256 of canonical_text(values): the bytes the database stores as row_hash."""
    return hashlib.sha256(canonical_text(values).encode("ascii")).digest()


def is_holdout(digest: bytes) -> bool:
    """The split rule of covertype_is_holdout() in the schema."""
    return (digest[0] * 256 + digest[1]) % 100 < 20
