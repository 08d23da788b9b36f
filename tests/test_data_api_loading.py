"""The data API's building blocks: the CSV loader, the sampler and the state file."""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from app.covertype import COLUMNS
from app.data_api import dataset as dataset_module
from app.data_api.dataset import DatasetError, batch_bounds, load_dataset
from app.data_api.responses import data_body
from app.data_api.sampling import sample_indices
from app.data_api.schedule import AllBatchesServed, Schedule
from app.data_api.state import (
    GroupProgress,
    StateFileError,
    load_progress,
    parse_state,
    save_progress,
)
from tests.conftest import SAMPLE_CSV

HEADER = ",".join(COLUMNS)
ROW = "2596,51,3,258,0,510,221,232,148,6279,Rawah,C7745,5"


def rows_of(path: Path, n_batches: int = 10) -> list[list[str]]:
    return [json.loads(row) for batch in load_dataset(path, n_batches).batches for row in batch]


def csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))[1:]


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


# --- loader ---------------------------------------------------------------------------------


def test_the_sample_loads_as_the_csv_module_reads_it() -> None:
    loaded = load_dataset(SAMPLE_CSV, 10)
    assert loaded.batch_sizes == [500] * 10
    assert loaded.rows_per_response == [50] * 10
    assert [json.loads(r) for b in loaded.batches for r in b] == csv_rows(SAMPLE_CSV)


def test_small_read_chunks_split_lines_anywhere_and_change_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A chunk size that is prime and smaller than a line puts chunk edges mid-line, mid-field
    # and right at newlines.
    monkeypatch.setattr(dataset_module, "_CHUNK_BYTES", 37)
    assert rows_of(SAMPLE_CSV) == csv_rows(SAMPLE_CSV)


def test_gzip_and_plain_files_give_the_same_rows(tmp_path: Path) -> None:
    gz = tmp_path / "sample.csv.gz"
    gz.write_bytes(gzip.compress(SAMPLE_CSV.read_bytes()))
    # Detected by content, not by name.
    disguised = tmp_path / "sample.csv"
    disguised.write_bytes(gz.read_bytes())
    assert rows_of(gz) == rows_of(disguised) == csv_rows(SAMPLE_CSV)


def test_crlf_bom_no_final_newline_and_blank_lines_are_handled(tmp_path: Path) -> None:
    body = "\r\n".join([ROW.replace("2596", str(2000 + i)) for i in range(20)])
    path = write(tmp_path, "\ufeff" + HEADER + "\r\n" + body + "\r\n\r\n")
    rows = rows_of(path, n_batches=2)
    assert len(rows) == 20
    assert rows[0][0] == "2000" and rows[-1] == ROW.replace("2596", "2019").split(",")
    no_newline = write(tmp_path, HEADER + "\n" + body.replace("\r\n", "\n"), "b.csv")
    assert rows_of(no_newline, n_batches=2) == rows


def test_quoted_and_special_values_are_encoded_exactly(tmp_path: Path) -> None:
    special = ['"2596"', "51", "3", "258", "0", "510", "221", "232", "148", "6279",
               '"Ra,wah"', '"C\\7745 ""x"""', "5"]  # fmt: skip
    lines = [HEADER, ",".join(special)] + [ROW] * 19
    rows = rows_of(write(tmp_path, "\n".join(lines) + "\n"), n_batches=2)
    assert rows[0][0] == "2596"
    assert rows[0][10] == "Ra,wah"
    assert rows[0][11] == 'C\\7745 "x"'
    assert rows[1:] == [ROW.split(",")] * 19


def test_non_ascii_values_survive(tmp_path: Path) -> None:
    lines = [HEADER, ROW.replace("Rawah", "Rawáh")] + [ROW] * 19
    rows = rows_of(write(tmp_path, "\n".join(lines)), n_batches=2)
    assert rows[0][10] == "Rawáh"


def test_a_wrong_header_is_refused_naming_both(tmp_path: Path) -> None:
    swapped = ",".join([COLUMNS[1], COLUMNS[0], *COLUMNS[2:]])
    path = write(tmp_path, swapped + "\n" + (ROW + "\n") * 20)
    with pytest.raises(DatasetError, match="header does not match") as err:
        load_dataset(path, 2)
    assert HEADER in str(err.value) and swapped in str(err.value)


@pytest.mark.parametrize(
    ("bad_line", "fields"),
    [(ROW.rsplit(",", 1)[0], 12), (ROW + ",extra", 14), ("", None)],
)
def test_a_row_with_the_wrong_field_count_is_refused_with_its_line(
    tmp_path: Path, bad_line: str, fields: int | None
) -> None:
    lines = [HEADER] + [ROW] * 10 + [bad_line] + [ROW] * 10
    path = write(tmp_path, "\n".join(lines) + "\n")
    if fields is None:  # a blank line is skipped, not an error
        assert len(rows_of(path, n_batches=2)) == 20
        return
    with pytest.raises(DatasetError, match=f"line 12: {fields} fields, expected 13"):
        load_dataset(path, 2)


def test_missing_empty_short_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset file not found"):
        load_dataset(tmp_path / "nope.csv", 10)
    with pytest.raises(DatasetError, match="is empty"):
        load_dataset(write(tmp_path, ""), 10)
    with pytest.raises(DatasetError, match="need at least 100"):
        load_dataset(write(tmp_path, HEADER + "\n" + (ROW + "\n") * 99), 10)
    truncated = tmp_path / "t.csv.gz"
    truncated.write_bytes(gzip.compress(SAMPLE_CSV.read_bytes())[:5000])
    with pytest.raises(DatasetError, match="cannot read dataset"):
        load_dataset(truncated, 10)
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_dataset(_latin1(tmp_path), 2)


def _latin1(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.csv"
    lines = [HEADER, ROW.replace("Rawah", "Raw\xe1h")] + [ROW] * 19
    path.write_bytes("\n".join(lines).encode("latin-1"))
    return path


@pytest.mark.parametrize(("n_rows", "n_batches"), [(5000, 10), (581_012, 10), (23, 4), (10, 10)])
def test_batches_are_contiguous_and_differ_by_at_most_one(n_rows: int, n_batches: int) -> None:
    bounds = batch_bounds(n_rows, n_batches)
    assert len(bounds) == n_batches
    assert bounds[0][0] == 0 and bounds[-1][1] == n_rows
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [end - start for start, end in bounds]
    assert max(sizes) - min(sizes) <= 1


# --- sampler --------------------------------------------------------------------------------


@pytest.mark.parametrize(("population", "k"), [(500, 50), (58_102, 5810), (10, 10), (7, 0), (1, 1)])
def test_samples_are_distinct_in_range_and_complete(population: int, k: int) -> None:
    rng = random.Random(5)
    for _ in range(20):
        picked = sample_indices(rng, population, k)
        assert len(picked) == k == len(set(picked))
        assert all(0 <= i < population for i in picked)


def test_every_index_is_equally_likely() -> None:
    rng = random.Random(11)
    counts = Counter()
    rounds = 20_000
    for _ in range(rounds):
        counts.update(sample_indices(rng, 20, 5))
    expected = rounds * 5 / 20
    # Binomial sd is about 61 here; 5 sd either side.
    assert all(abs(counts[i] - expected) < 310 for i in range(20)), counts


def test_first_picks_are_uniform_too() -> None:
    # The order matters to no client, but a biased order would betray a biased algorithm.
    rng = random.Random(12)
    firsts = Counter(sample_indices(rng, 10, 3)[0] for _ in range(20_000))
    assert all(abs(firsts[i] - 2000) < 220 for i in range(10)), firsts


def test_a_sample_larger_than_the_population_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot sample 11 of 10"):
        sample_indices(random.Random(), 10, 11)


# --- state file -----------------------------------------------------------------------------


def test_state_round_trips_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.json"
    groups = {
        3: GroupProgress(batch_number=4, advanced_at=1_700_000_000.25),
        1: GroupProgress(batch_number=10, advanced_at=1_700_000_100.5, exhausted=True),
    }
    save_progress(path, groups)
    assert load_progress(path, 10, 10, 300.0, now=0.0) == groups
    save_progress(path, {})
    assert load_progress(path, 10, 10, 300.0, now=0.0) == {}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_groups_beyond_the_configured_range_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_progress(path, {2: GroupProgress(1, 10.0), 12: GroupProgress(1, 20.0)})
    assert load_progress(path, 10, 10, 300.0, now=0.0) == {2: GroupProgress(1, 10.0)}


def test_a_group_beyond_a_shorter_dataset_has_been_served_it_all(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_progress(path, {1: GroupProgress(7, 10.0), 2: GroupProgress(3, 20.0)})
    assert load_progress(path, 10, 4, 300.0, now=0.0) == {
        1: GroupProgress(4, 10.0, exhausted=True),
        2: GroupProgress(3, 20.0),
    }


def test_a_format_1_file_continues_where_the_old_clock_rule_was(tmp_path: Path) -> None:
    # Written by the service before batches followed requests: start times only.
    path = tmp_path / "state.json"
    path.write_text(
        '{"format": 1, "groups": {"1": {"started_at": 1000.0}, "2": {"started_at": 1900.0},'
        ' "3": {"started_at": 0}}}'
    )
    # At 2000 s with 300 s batches: group 1 is 1000 s in (batch 4, begun at 1900), group 2 is
    # 100 s in (batch 1), group 3 is 2000 s in: past 5 batches, so all served.
    assert load_progress(path, 10, 5, 300.0, now=2000.0) == {
        1: GroupProgress(4, 1900.0),
        2: GroupProgress(1, 1900.0),
        3: GroupProgress(5, 1200.0, exhausted=True),
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("nope", "not valid JSON"),
        ("{}", "format-2"),
        ('{"format": 3, "groups": {}}', "format-2"),
        ('{"format": 2, "groups": 3}', "no 'groups'"),
        ('{"format": 2, "groups": {"1": 5}}', "invalid entry for group '1'"),
        (
            '{"format": 2, "groups": {"-1": {"batch_number": 1, "advanced_at": 5,'
            ' "exhausted": false}}}',
            "invalid entry for group '-1'",
        ),
        (
            '{"format": 2, "groups": {"1": {"batch_number": 0, "advanced_at": 5,'
            ' "exhausted": false}}}',
            "invalid entry for group '1'",
        ),
        (
            '{"format": 2, "groups": {"1": {"batch_number": 2.0, "advanced_at": 5,'
            ' "exhausted": false}}}',
            "invalid entry for group '1'",
        ),
        (
            '{"format": 2, "groups": {"1": {"batch_number": 2, "advanced_at": Infinity,'
            ' "exhausted": false}}}',
            "invalid entry",
        ),
        (
            '{"format": 2, "groups": {"1": {"batch_number": 2, "advanced_at": 5,'
            ' "exhausted": "no"}}}',
            "invalid entry",
        ),
        ('{"format": 2, "groups": {"1": {"started_at": 5}}}', "invalid entry"),
        ('{"format": 1, "groups": {"1": {"started_at": Infinity}}}', "invalid entry"),
    ],
)
def test_parse_state_names_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(StateFileError, match=reason):
        parse_state(text, n_batches=10, interval_seconds=300.0, now=0.0)


# --- schedule -------------------------------------------------------------------------------


class Clock:
    """A clock the test sets: the schedule's own `clock` parameter, exact to the second."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def schedule(tmp_path: Path, clock: Clock, n_batches: int = 10) -> Schedule:
    return Schedule(
        state_file=tmp_path / "state.json",
        n_groups=3,
        n_batches=n_batches,
        interval_seconds=300.0,
        clock=clock,
    )


def test_a_group_advances_one_batch_per_request_an_interval_apart(tmp_path: Path) -> None:
    clock = Clock(10_000.0)
    s = schedule(tmp_path, clock)
    served = []
    for at in (0, 299.9, 300, 300, 599.9, 600, 5_000, 5_000.5, 86_400):
        clock.now = 10_000.0 + at
        served.append(s.batch_index(1) + 1)
    # 300 s after the start: batch 2 from then on. Then 300 s after *that* move (at 600),
    # batch 3; hours away only ever bring the next batch.
    assert served == [1, 1, 2, 2, 2, 3, 4, 4, 5]
    assert s.progress()["1"] == 5 and s.progress()["2"] == "not started"


def test_the_last_batch_is_served_an_interval_then_all_is_served(tmp_path: Path) -> None:
    clock = Clock(0.0)
    s = schedule(tmp_path, clock, n_batches=2)
    assert s.batch_index(2) == 0
    clock.now = 1_000.0
    assert s.batch_index(2) == 1
    clock.now = 1_299.0
    assert s.batch_index(2) == 1
    clock.now = 1_300.0
    with pytest.raises(AllBatchesServed):
        s.batch_index(2)
    # Exhausted stays exhausted (and survives a new process) until restarted.
    with pytest.raises(AllBatchesServed):
        schedule(tmp_path, clock, n_batches=2).batch_index(2)
    s.restart(2)
    assert s.batch_index(2) == 0


def test_a_clock_set_back_delays_the_next_batch_by_one_interval_at_most(tmp_path: Path) -> None:
    clock = Clock(100_000.0)
    s = schedule(tmp_path, clock)
    s.batch_index(3)
    clock.now = 10_000.0  # a day back
    assert s.batch_index(3) == 0
    clock.now = 10_300.0
    assert s.batch_index(3) == 1


# --- response body --------------------------------------------------------------------------


@pytest.mark.parametrize(("n_rows", "k"), [(10, 1), (19, 1), (25, 2), (500, 50), (9, 0)])
def test_the_body_is_json_with_a_tenth_of_the_rows(n_rows: int, k: int) -> None:
    rows = [json.dumps([str(i)] * 13).encode() for i in range(n_rows)]
    doc = json.loads(data_body(rows, random.Random(1), 4, 7))
    assert doc["group_number"] == 4 and doc["batch_number"] == 7
    assert len(doc["data"]) == k
    assert len({r[0] for r in doc["data"]}) == k
    assert all(r == [r[0]] * 13 and 0 <= int(r[0]) < n_rows for r in doc["data"])
