"""The batch data API in-process (Litestar's TestClient): contract, timing, errors, docs.

Expected rows come from reading the CSV here with the csv module, independently of the
service's own loader.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from app.covertype import COLUMNS
from app.data_api import create_app
from app.settings import DataApiSettings
from tests.conftest import FULL_DATASET, SAMPLE_CSV


def read_rows(path: Path) -> list[tuple[str, ...]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f)
        assert tuple(next(reader)) == COLUMNS
        return [tuple(row) for row in reader]


SAMPLE_ROWS = read_rows(SAMPLE_CSV)
# The sample's 5,000 rows make 10 batches of 500; each response is a tenth of that.
SAMPLE_BATCH = 500
SAMPLE_K = 50


def sample_slice(batch_number: int) -> list[tuple[str, ...]]:
    start = (batch_number - 1) * SAMPLE_BATCH
    return SAMPLE_ROWS[start : start + SAMPLE_BATCH]


def make_settings(tmp_path: Path, **overrides: Any) -> DataApiSettings:
    base = DataApiSettings(
        dataset_path=SAMPLE_CSV,
        state_file=tmp_path / "state" / "data-api.json",
        interval_seconds=3600.0,
        n_batches=10,
        n_groups=10,
        seed=None,
        host="127.0.0.1",
        port=0,
        access_log=False,
    )
    return replace(base, **overrides)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path))) as c:
        yield c


def assert_rows_from_batch(rows: list[list[str]], batch_number: int, k: int = SAMPLE_K) -> None:
    expected = sample_slice(batch_number)
    as_tuples = [tuple(r) for r in rows]
    assert len(as_tuples) == k
    assert all(len(r) == 13 and all(isinstance(v, str) for v in r) for r in as_tuples)
    assert len(set(expected)) == len(expected), "the test relies on a batch without duplicates"
    assert len(set(as_tuples)) == k, "a response must not repeat a row (no replacement)"
    outside = set(as_tuples) - set(expected)
    assert not outside, f"{len(outside)} rows are not from batch {batch_number}, e.g. {outside}"


class Paced:
    """Requests of one group, each with the times it was sent and answered.

    The server moves a group on when a request comes at least the interval after its previous
    move, and it decides at some instant between a request's send and receive times. So a
    request sent an interval after the previous move's answer *must* bring the next batch,
    and one answered less than an interval after the previous move was sent *must not*.
    """

    def __init__(self, client: TestClient, group: int, interval: float) -> None:
        self.client = client
        self.group = group
        self.interval = interval
        self.moved: tuple[float, float] | None = None  # (sent, received) of the last move
        self.last_batch = 0

    def get(self) -> Any:
        sent = time.time()
        r = self.client.get(f"/data?group_number={self.group}")
        received = time.time()
        if r.status_code == 200 and r.json()["batch_number"] != self.last_batch:
            self.moved = (sent, received)
            self.last_batch = r.json()["batch_number"]
        return r

    def wait(self, intervals: float) -> None:
        """Sleep until `intervals` intervals after the last move was answered."""
        assert self.moved is not None
        time.sleep(max(0.0, self.moved[1] + intervals * self.interval - time.time()))

    def next_batch(self, idle_intervals: float = 1.2) -> Any:
        """Wait, then ask: the answer must be the batch after the last one (or the 400)."""
        before = self.last_batch
        self.wait(idle_intervals)
        r = self.get()
        if r.status_code == 200:
            assert r.json()["batch_number"] == before + 1, (before, r.json()["batch_number"])
        return r

    def same_batch(self) -> Any:
        """Ask right away: unless the machine stalled for an interval, the batch is unchanged."""
        assert self.moved is not None
        before = self.last_batch
        r = self.get()
        if time.time() - self.moved[0] < self.interval:
            assert r.status_code == 200 and r.json()["batch_number"] == before
        return r


# --- contract ---------------------------------------------------------------------------------


def test_data_returns_a_tenth_of_batch_one_as_strings(client: TestClient) -> None:
    r = client.get("/data", params={"group_number": 4})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"group_number", "batch_number", "data"}
    assert body["group_number"] == 4
    assert body["batch_number"] == 1
    assert_rows_from_batch(body["data"], 1)


def test_two_responses_are_independent_samples_of_the_same_batch(client: TestClient) -> None:
    first = client.get("/data?group_number=1").json()
    second = client.get("/data?group_number=1").json()
    assert first["batch_number"] == second["batch_number"] == 1
    assert_rows_from_batch(second["data"], 1)
    # 50 of 500 twice: identical samples would mean the randomness is broken.
    assert {tuple(r) for r in first["data"]} != {tuple(r) for r in second["data"]}


def test_batches_advance_one_per_request_an_interval_apart_then_run_out(
    tmp_path: Path,
) -> None:
    interval = 0.4
    settings = make_settings(tmp_path, interval_seconds=interval)
    with TestClient(create_app(settings)) as c:
        group = Paced(c, 7, interval)
        r = group.get()
        assert r.status_code == 200 and r.json()["batch_number"] == 1
        assert_rows_from_batch(group.same_batch().json()["data"], 1)
        for batch in range(2, 11):
            body = group.next_batch().json()
            assert_rows_from_batch(body["data"], batch)
            assert_rows_from_batch(group.same_batch().json()["data"], batch)

        # The last batch, too, is served for an interval; the request after that is the 400.
        r = group.next_batch()
        assert r.status_code == 400
        body = r.json()
        assert body["status_code"] == 400
        assert "All 10 batches of group 7 have been served" in body["detail"]
        assert "/restart_data_generation?group_number=7" in body["detail"]
        assert body["extra"] == {
            "group_number": 7,
            "batches_served": 10,
            "restart": "/restart_data_generation?group_number=7",
        }
        # It stays exhausted until restarted.
        assert c.get("/data?group_number=7").status_code == 400
        assert c.get("/").json()["group_progress"]["7"] == "all batches served"

        r = c.get("/restart_data_generation?group_number=7")
        assert r.status_code == 200
        assert r.json()["ok"] is True and r.json()["group_number"] == 7
        r = c.get("/data?group_number=7")
        assert r.status_code == 200
        assert r.json()["batch_number"] == 1
        assert_rows_from_batch(r.json()["data"], 1)


def test_a_client_away_for_three_intervals_gets_the_next_batch_not_a_later_one(
    tmp_path: Path,
) -> None:
    interval = 0.5
    with TestClient(create_app(make_settings(tmp_path, interval_seconds=interval))) as c:
        group = Paced(c, 4, interval)
        assert group.get().json()["batch_number"] == 1
        assert group.next_batch().json()["batch_number"] == 2
        # Away for more than three intervals: a clock-driven server would now be on batch 5.
        body = group.next_batch(idle_intervals=3.5).json()
        assert body["batch_number"] == 3
        assert_rows_from_batch(body["data"], 3)
        # The interval counts from that request, not from when batch 3 "would" have begun.
        assert group.same_batch().json()["batch_number"] == 3
        assert group.next_batch().json()["batch_number"] == 4
        assert c.get("/").json()["group_progress"]["4"] == 4


def test_restart_midway_goes_back_to_batch_one(tmp_path: Path) -> None:
    interval = 0.3
    with TestClient(create_app(make_settings(tmp_path, interval_seconds=interval))) as c:
        group = Paced(c, 2, interval)
        assert group.get().json()["batch_number"] == 1
        group.next_batch()
        assert group.next_batch().json()["batch_number"] == 3
        assert c.get("/restart_data_generation?group_number=2").status_code == 200
        body = c.get("/data?group_number=2").json()
        assert body["batch_number"] == 1
        assert_rows_from_batch(body["data"], 1)


def test_restart_of_a_group_that_never_started_is_fine(client: TestClient) -> None:
    r = client.get("/restart_data_generation?group_number=10")
    assert r.status_code == 200
    assert r.json() == {
        "ok": True,
        "group_number": 10,
        "detail": "Group 10 starts again at batch 1 with its next /data request.",
    }
    assert client.get("/data?group_number=10").json()["batch_number"] == 1


def test_groups_progress_independently(tmp_path: Path) -> None:
    interval = 0.5
    with TestClient(create_app(make_settings(tmp_path, interval_seconds=interval))) as c:
        g1 = Paced(c, 1, interval)
        assert g1.get().json()["batch_number"] == 1
        assert_rows_from_batch(g1.next_batch().json()["data"], 2)
        # Group 3 starts now, at batch 1, while group 1 is on batch 2; group 3's request does
        # not move group 1.
        g3 = c.get("/data?group_number=3").json()
        assert g3["batch_number"] == 1
        assert_rows_from_batch(g3["data"], 1)
        assert g1.same_batch().json()["batch_number"] == 2
        # Restarting group 1 leaves group 3 alone.
        c.get("/restart_data_generation?group_number=1")
        assert c.get("/data?group_number=1").json()["batch_number"] == 1
        assert c.get("/").json()["group_progress"]["3"] == 1


def test_fewer_batches_and_groups_follow_the_settings(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, n_batches=4, n_groups=3)
    with TestClient(create_app(settings)) as c:
        info = c.get("/").json()
        assert info["batches"] == 4 and info["groups"] == 3
        assert info["batch_sizes"] == [1250] * 4
        assert info["rows_per_response"] == [125] * 4
        body = c.get("/data?group_number=3").json()
        assert len(body["data"]) == 125
        assert set(map(tuple, body["data"])) <= set(SAMPLE_ROWS[:1250])
        r = c.get("/data?group_number=4")
        assert r.status_code == 400
        assert "from 1 to 3" in r.json()["detail"]


# --- bad input -------------------------------------------------------------------------------


BAD_GROUPS = [
    ("0", "'0'"),
    ("11", "'11'"),
    ("-1", "'-1'"),
    ("abc", "'abc'"),
    ("1.5", "'1.5'"),
    ("", "''"),
    ("99999999999999999999999", "'99999999999999999999999'"),
]


@pytest.mark.parametrize("path", ["/data", "/restart_data_generation"])
@pytest.mark.parametrize(("value", "echo"), BAD_GROUPS)
def test_bad_group_number_is_a_400_naming_the_parameter_and_range(
    client: TestClient, path: str, value: str, echo: str
) -> None:
    r = client.get(path, params={"group_number": value})
    assert r.status_code == 400
    body = r.json()
    assert body["status_code"] == 400
    assert body["detail"] == f"group_number must be an integer from 1 to 10; got {echo}"
    assert body["extra"][0]["key"] == "group_number"
    assert body["extra"][0]["source"] == "query"
    assert body["extra"][0]["allowed"] == {"minimum": 1, "maximum": 10}


@pytest.mark.parametrize("path", ["/data", "/restart_data_generation"])
def test_missing_group_number_is_a_400_naming_the_parameter_and_range(
    client: TestClient, path: str
) -> None:
    r = client.get(path)
    assert r.status_code == 400
    body = r.json()
    assert body["detail"] == "group_number must be an integer from 1 to 10; it is missing"
    assert body["extra"][0]["key"] == "group_number"


def test_bad_input_does_not_start_or_restart_a_group(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as c:
        for value in ("0", "11", "abc"):
            c.get("/data", params={"group_number": value})
        assert set(c.get("/").json()["group_progress"].values()) == {"not started"}
    assert not settings.state_file.exists()


def test_unknown_path_and_wrong_method_answer_json(client: TestClient) -> None:
    r = client.get("/no/such/path")
    assert r.status_code == 404
    assert r.json() == {"status_code": 404, "detail": "Not Found"}
    r = client.post("/data?group_number=1")
    assert r.status_code == 405
    assert r.json()["status_code"] == 405


# --- randomness -----------------------------------------------------------------------------


def _bodies(tmp_path: Path, seed: int | None, name: str) -> list[bytes]:
    settings = make_settings(tmp_path / name, seed=seed)
    with TestClient(create_app(settings)) as c:
        return [c.get(f"/data?group_number={g}").content for g in (1, 2, 1, 5, 1)]


def test_a_seed_makes_samples_reproducible(tmp_path: Path) -> None:
    a = _bodies(tmp_path, 1234, "a")
    b = _bodies(tmp_path, 1234, "b")
    c = _bodies(tmp_path, 4321, "c")
    assert a == b
    assert a != c
    assert len(set(a)) == len(a), "successive samples under one seed must still differ"


def test_a_group_s_samples_do_not_depend_on_other_groups(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path / "x", seed=9))) as c:
        alone = [c.get("/data?group_number=1").content for _ in range(3)]
    with TestClient(create_app(make_settings(tmp_path / "y", seed=9))) as c:
        mixed = []
        for _ in range(3):
            c.get("/data?group_number=2")
            mixed.append(c.get("/data?group_number=1").content)
    assert alone == mixed


def test_without_a_seed_two_services_draw_different_samples(tmp_path: Path) -> None:
    assert _bodies(tmp_path, None, "a") != _bodies(tmp_path, None, "b")


# --- state ----------------------------------------------------------------------------------


def test_state_file_records_each_group_s_batch_and_its_move(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, interval_seconds=0.3)
    with TestClient(create_app(settings)) as c:
        before = time.time()
        c.get("/data?group_number=6")
        after = time.time()
        doc = json.loads(settings.state_file.read_text())
        assert doc["format"] == 2
        assert set(doc["groups"]) == {"6"}
        entry = doc["groups"]["6"]
        assert entry["batch_number"] == 1 and entry["exhausted"] is False
        assert before <= entry["advanced_at"] <= after
        # Requests that do not move the group leave the file alone.
        c.get("/data?group_number=6")
        assert json.loads(settings.state_file.read_text()) == doc
        group = Paced(c, 6, 0.3)
        group.moved, group.last_batch = (before, after), 1
        group.next_batch()
        entry = json.loads(settings.state_file.read_text())["groups"]["6"]
        assert entry["batch_number"] == 2 and entry["advanced_at"] >= after + 0.3
        c.get("/restart_data_generation?group_number=6")
        assert json.loads(settings.state_file.read_text())["groups"] == {}
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in settings.state_file.parent.iterdir()) == ["data-api.json"]


def test_progress_carries_over_to_a_new_app_on_the_same_state_file(tmp_path: Path) -> None:
    interval = 0.3
    settings = make_settings(tmp_path, interval_seconds=interval)
    with TestClient(create_app(settings)) as c:
        group = Paced(c, 8, interval)
        group.get()
        assert group.next_batch().json()["batch_number"] == 2
    with TestClient(create_app(settings)) as c:
        again = Paced(c, 8, interval)
        again.moved, again.last_batch = group.moved, group.last_batch
        assert again.same_batch().json()["batch_number"] == 2
        assert again.next_batch().json()["batch_number"] == 3
        assert c.get("/data?group_number=9").json()["batch_number"] == 1


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe garbage",
        b"[]",
        b'{"format": 3, "groups": {}}',
        b'{"format": 1}',
        b'{"format": 1, "groups": []}',
        b'{"format": 1, "groups": {"1": {}}}',
        b'{"format": 1, "groups": {"1": {"started_at": "yesterday"}}}',
        b'{"format": 2, "groups": {"1": {"batch_number": 1, "advanced_at": 5}}}',
        b'{"format": 1, "groups": {"1": {"started_at": true}}}',
        b'{"format": 1, "groups": {"1": {"started_at": NaN}}}',
        b'{"format": 1, "groups": {"one": {"started_at": 1.0}}}',
        b"",
    ],
)
def test_a_corrupt_state_file_gives_one_warning_and_a_clean_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    settings = make_settings(tmp_path)
    settings.state_file.parent.mkdir(parents=True)
    settings.state_file.write_bytes(content)
    with caplog.at_level(logging.INFO, logger="app.data_api"):
        app = create_app(settings)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert str(settings.state_file) in message
    assert "starts afresh" in message
    # The bad file is kept aside for inspection, and the service works from a clean state.
    aside = list(settings.state_file.parent.glob("data-api.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content
    with TestClient(app) as c:
        assert c.get("/data?group_number=1").json()["batch_number"] == 1
    assert json.loads(settings.state_file.read_text())["format"] == 2


def test_a_state_file_that_is_a_directory_gives_a_warning_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    settings.state_file.mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="app.data_api"):
        app = create_app(settings)
    assert any("cannot be read" in r.getMessage() for r in caplog.records)
    with TestClient(app) as c:
        assert c.get("/data?group_number=1").status_code == 200


def test_an_unwritable_state_file_is_logged_and_serving_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    settings = make_settings(tmp_path, state_file=blocker / "state.json")
    with TestClient(create_app(settings)) as c, caplog.at_level(logging.ERROR):
        r = c.get("/data?group_number=1")
        assert r.status_code == 200
        assert r.json()["batch_number"] == 1
    assert any("could not write state file" in r.getMessage() for r in caplog.records)


# --- info, health, docs ---------------------------------------------------------------------


def test_info_describes_the_service(client: TestClient) -> None:
    client.get("/data?group_number=2")
    info = client.get("/").json()
    assert info["name"] == "forest-cover-data-api"
    assert info["version"]
    assert info["dataset"] == {"file": SAMPLE_CSV.name, "rows": 5000, "columns": list(COLUMNS)}
    assert info["groups"] == 10
    assert info["batches"] == 10
    assert info["interval_seconds"] == 3600.0
    assert info["batch_sizes"] == [500] * 10
    assert info["rows_per_response"] == [50] * 10
    assert info["group_progress"]["2"] == 1
    assert info["group_progress"]["1"] == "not started"
    assert info["endpoints"] == {
        "data": "/data?group_number={1..10}",
        "restart": "/restart_data_generation?group_number={1..10}",
    }
    for name, link in info["links"].items():
        assert client.get(link).status_code == 200, name


def test_health(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "rows": 5000, "batches": 10}


def test_openapi_documents_parameters_and_errors(client: TestClient) -> None:
    spec = client.get("/schema/openapi.json").json()
    assert {"/data", "/restart_data_generation", "/", "/health"} <= set(spec["paths"])
    for path in ("/data", "/restart_data_generation"):
        op = spec["paths"][path]["get"]
        (param,) = op["parameters"]
        assert param["name"] == "group_number" and param["in"] == "query"
        assert param["required"] is True
        assert param["schema"]["type"] == "integer"
        assert param["schema"]["minimum"] == 1 and param["schema"]["maximum"] == 10
        assert {"200", "400"} <= set(op["responses"])
        assert "group_number" in op["responses"]["400"]["description"]
    assert "served" in spec["paths"]["/data"]["get"]["responses"]["400"]["description"]
    ok = spec["paths"]["/data"]["get"]["responses"]["200"]["content"]["application/json"]
    batch = spec["components"]["schemas"][ok["schema"]["$ref"].rsplit("/", 1)[1]]
    assert set(batch["properties"]) == {"group_number", "batch_number", "data"}
    assert batch["properties"]["data"]["items"]["items"]["type"] == "string"
    for page in ("/schema/swagger", "/schema/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]


# --- the full dataset -----------------------------------------------------------------------


@pytest.mark.slow
def test_full_dataset_batches_and_response_size(tmp_path: Path) -> None:
    rows = read_rows(FULL_DATASET)
    assert len(rows) == 581_012
    settings = make_settings(tmp_path, dataset_path=FULL_DATASET, seed=3)
    with TestClient(create_app(settings)) as c:
        info = c.get("/").json()
        sizes = info["batch_sizes"]
        assert sum(sizes) == 581_012 and max(sizes) - min(sizes) <= 1
        assert info["rows_per_response"] == [size // 10 for size in sizes] == [5810] * 10
        body = c.get("/data?group_number=1").json()
    assert body["batch_number"] == 1
    got = [tuple(r) for r in body["data"]]
    assert len(got) == 5810 == len(set(got))
    assert set(got) <= set(rows[: sizes[0]])
