"""Row validation: one test per rule class, the exact reasons, and the fast path agreeing with
the row-by-row path."""

from __future__ import annotations

import csv
import gzip
import hashlib
import random
from functools import cache

import pytest

from app.batch_store.validation import (
    N_FIELDS,
    canonical_text,
    is_holdout,
    row_hash,
    validate_row,
    validate_rows,
)
from app.covertype import COLUMNS, NUMERIC_RANGES, SOIL_TYPES, WILDERNESS_AREAS
from tests.conftest import FULL_DATASET

GOOD = ["2596", "51", "3", "258", "0", "510", "221", "232", "148", "6279", "Rawah", "C7745", "5"]


@cache
def dataset_rows(n: int) -> tuple[tuple[str, ...], ...]:
    with gzip.open(FULL_DATASET, "rt", newline="") as f:
        reader = csv.reader(f)
        assert tuple(next(reader)) == COLUMNS
        return tuple(tuple(row) for _, row in zip(range(n), reader, strict=False))


def with_value(column: str, value: object) -> list[object]:
    row: list[object] = list(GOOD)
    row[COLUMNS.index(column)] = value
    return row


def reasons(row: object) -> list[str]:
    values, problems = validate_row(row)
    assert values is None
    return [p.message for p in problems]


def test_a_clean_row_is_valid_and_canonical() -> None:
    values, problems = validate_row(GOOD)
    assert problems == ()
    assert values == tuple(GOOD)


def test_row_shape() -> None:
    assert reasons(GOOD[:12]) == ["row has 12 fields, expected 13"]
    assert reasons([*GOOD, "x"]) == ["row has 14 fields, expected 13"]
    assert reasons([]) == ["row has 0 fields, expected 13"]
    assert reasons("2596,51,3") == ["row is a str, expected a list of 13"]
    assert reasons({"Elevation": "2596"}) == ["row is a dict, expected a list of 13"]
    assert reasons(None) == ["row is a NoneType, expected a list of 13"]


@pytest.mark.parametrize("value", ["1.5", "", "abc", " 51", "5 1", "1_0", "٣", "0x1F", None, 1.0])
def test_numeric_fields_must_be_integers(value: object) -> None:
    assert reasons(with_value("Aspect", value)) == [f"Aspect: {value!r} is not an integer"]


@pytest.mark.parametrize("column", list(NUMERIC_RANGES))
def test_numeric_ranges_follow_the_contract(column: str) -> None:
    low, high = NUMERIC_RANGES[column]
    for ok in (low, high):
        values, _ = validate_row(with_value(column, str(ok)))
        assert values is not None, (column, ok)
    for bad in (low - 1, high + 1):
        assert reasons(with_value(column, str(bad))) == [
            f"{column}: {bad} is outside {low}..{high}"
        ]


def test_aspect_400_reads_as_the_brief_says() -> None:
    assert reasons(with_value("Aspect", "400")) == ["Aspect: 400 is outside 0..360"]


def test_integer_spellings_are_normalised() -> None:
    values, _ = validate_row(with_value("Vertical_Distance_To_Hydrology", "-007"))
    assert values is not None
    assert values[COLUMNS.index("Vertical_Distance_To_Hydrology")] == "-7"
    values, _ = validate_row(with_value("Elevation", 2596))  # a JSON number
    assert values == tuple(GOOD)
    assert reasons(with_value("Elevation", True)) == ["Elevation: True is not an integer"]


def test_wilderness_area() -> None:
    for name in WILDERNESS_AREAS:
        assert validate_row(with_value("Wilderness_Area", name))[0] is not None
    for bad in ("Comanche", "rawah", "", 1):
        assert reasons(with_value("Wilderness_Area", bad)) == [
            f"Wilderness_Area: {bad!r} is not one of Rawah, Neota, Commanche, Cache"
        ]


def test_soil_type() -> None:
    for code in SOIL_TYPES:
        assert validate_row(with_value("Soil_Type", code))[0] is not None
    for bad in ("C1234", "7745", "c7745", None):
        assert reasons(with_value("Soil_Type", bad)) == [
            f"Soil_Type: {bad!r} is not one of the 40 ELU codes (C2702 ... C8776)"
        ]


def test_cover_type() -> None:
    for ok in range(1, 8):
        assert validate_row(with_value("Cover_Type", str(ok)))[0] is not None
    assert reasons(with_value("Cover_Type", "0")) == ["Cover_Type: 0 is outside 1..7"]
    assert reasons(with_value("Cover_Type", "8")) == ["Cover_Type: 8 is outside 1..7"]
    assert reasons(with_value("Cover_Type", "Aspen")) == ["Cover_Type: 'Aspen' is not an integer"]


def test_every_problem_of_a_row_is_reported_and_long_values_are_cut() -> None:
    row = with_value("Slope", "91")
    row[COLUMNS.index("Soil_Type")] = "x" * 500
    found = reasons(row)
    assert found[0] == "Slope: 91 is outside 0..90"
    assert found[1].startswith("Soil_Type: 'xxxx") and "..." in found[1]
    assert len(found[1]) < 120


def test_summary_counts_rows_per_problem_kind() -> None:
    rows = [
        GOOD,
        with_value("Aspect", "400"),
        with_value("Aspect", "-1"),
        with_value("Slope", "x"),
        GOOD[:5],
    ]
    result = validate_rows(rows)
    assert [r.index for r in result.rejected] == [1, 2, 3, 4]
    assert result.rejected[0].reason == "Aspect: 400 is outside 0..360"
    assert result.summary() == {
        "Aspect: out of range": 2,
        "Slope: not an integer": 1,
        "wrong field count": 1,
    }
    assert result.valid == [tuple(GOOD)]


def test_a_real_batch_takes_the_fast_path_and_matches_row_by_row() -> None:
    rows = [list(r) for r in dataset_rows(5810)]
    fast = validate_rows(rows)
    assert fast.rejected == []
    assert fast.valid == [validate_row(r)[0] for r in rows]


def test_fast_and_row_by_row_paths_agree_on_mutated_payloads() -> None:
    rng = random.Random(7)
    base = [list(r) for r in dataset_rows(300)]
    mutations = ["", "1.5", "-1", "99999", "007", " 5", "Cache", "C7745", "C0000", 3, "8"]
    for _ in range(30):
        rows = [list(r) for r in base]
        for _ in range(rng.randint(1, 4)):
            rows[rng.randrange(len(rows))][rng.randrange(N_FIELDS)] = rng.choice(mutations)
        result = validate_rows(rows)
        expected = [validate_row(r) for r in rows]
        assert result.valid == [v for v, _ in expected if v is not None]
        assert [(r.index, r.problems) for r in result.rejected] == [
            (i, p) for i, (v, p) in enumerate(expected) if v is None
        ]


def test_row_hash_is_sha256_of_the_csv_line() -> None:
    line = "2596,51,3,258,0,510,221,232,148,6279,Rawah,C7745,5"
    assert canonical_text(GOOD) == line
    assert row_hash(GOOD) == hashlib.sha256(line.encode()).digest()


def test_split_rule_holds_out_about_a_fifth_of_real_rows() -> None:
    rows = dataset_rows(5810)
    share = sum(is_holdout(row_hash(r)) for r in rows) / len(rows)
    assert 0.18 < share < 0.22
    assert is_holdout(bytes([0, 19]) + bytes(30))
    assert not is_holdout(bytes([0, 20]) + bytes(30))
    assert not is_holdout(bytes([1, 0]) + bytes(30))  # 256 % 100 = 56
    assert is_holdout(bytes([1, 244]) + bytes(30))  # 500 % 100 = 0
