"""The batch data API as its own process (`python -m app.data_api`), reached over real HTTP.

Here a client written the way course clients are (requests + pandas) talks to the server, and
the server is killed and started again to prove its state survives.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import requests

from app.covertype import COLUMNS
from tests.conftest import REPO_ROOT, SAMPLE_CSV
from tests.servers import free_port, wait_for

with SAMPLE_CSV.open(newline="") as _f:
    SAMPLE_ROWS = [tuple(row) for row in list(csv.reader(_f))[1:]]


def clean_environ() -> dict[str, str]:
    # The runner's own DATA_API_* variables must not leak into the server under test.
    return {k: v for k, v in os.environ.items() if not k.startswith("DATA_API_")}


@dataclass
class DataApiProcess:
    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def data_api_process(tmp_path: Path, name: str, **env: str) -> Iterator[DataApiProcess]:
    port = free_port()
    log = tmp_path / f"{name}.log"
    full_env = {
        **clean_environ(),
        "DATA_API_DATASET": str(SAMPLE_CSV),
        "DATA_API_STATE_FILE": str(tmp_path / "state.json"),
        "DATA_API_INTERVAL_SECONDS": "3600",
        "DATA_API_HOST": "127.0.0.1",
        "DATA_API_PORT": str(port),
        **env,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.data_api"],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = DataApiProcess(proc, f"http://127.0.0.1:{port}", log)
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"data API exited early:\n{server.output()}")
            return requests.get(server.base_url + "/health", timeout=1).status_code == 200

        wait_for(healthy, "data API", timeout=60, log=log)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- a client written against the course API ------------------------------------------------


def course_style_fetch(base_url: str, group_number: int) -> tuple[int, pd.DataFrame]:
    """What course clients do: GET /data, read batch_number, build a DataFrame of 'data'."""
    response = requests.get(f"{base_url}/data", params={"group_number": group_number}, timeout=30)
    response.raise_for_status()
    payload = response.json()
    assert set(payload) == {"group_number", "batch_number", "data"}
    assert payload["group_number"] == group_number
    return payload["batch_number"], pd.DataFrame(payload["data"], columns=list(COLUMNS))


def test_a_course_style_client_works_unchanged(tmp_path: Path) -> None:
    with data_api_process(tmp_path, "server") as server:
        batch_number, frame = course_style_fetch(server.base_url, 1)
        assert 1 <= batch_number <= 10
        assert frame.shape == (50, 13)  # floor(500 / 10) rows of 13 columns
        assert all(frame[c].map(type).eq(str).all() for c in COLUMNS)
        start = (batch_number - 1) * 500
        assert set(frame.itertuples(index=False, name=None)) <= set(
            SAMPLE_ROWS[start : start + 500]
        )
        # Numeric columns convert the way the course notebooks do.
        assert frame["Elevation"].astype(int).between(1800, 4000).all()
        assert set(frame["Cover_Type"].astype(int)) <= set(range(1, 8))
        assert (
            requests.get(
                f"{server.base_url}/restart_data_generation", params={"group_number": 1}, timeout=10
            ).json()["ok"]
            is True
        )
        bad = requests.get(f"{server.base_url}/data", params={"group_number": 0}, timeout=10)
        assert bad.status_code == 400 and "group_number" in bad.json()["detail"]


# --- persistence across a real restart -------------------------------------------------------


def timed_fetch(base_url: str, group_number: int) -> tuple[int, pd.DataFrame, float, float]:
    """course_style_fetch with the times it was sent and answered: the server decides whether
    the group moves on at some instant in between."""
    sent = time.time()
    batch, frame = course_style_fetch(base_url, group_number)
    return batch, frame, sent, time.time()


def assert_from_batch(frame: pd.DataFrame, batch: int) -> None:
    start = (batch - 1) * 500
    assert set(frame.itertuples(index=False, name=None)) <= set(SAMPLE_ROWS[start : start + 500])


def test_a_client_away_for_three_intervals_misses_no_batch(tmp_path: Path) -> None:
    interval = 1.0
    with data_api_process(tmp_path, "server", DATA_API_INTERVAL_SECONDS=str(interval)) as api:
        assert course_style_fetch(api.base_url, 2)[0] == 1
        time.sleep(1.2 * interval)
        batch, frame, sent, received = timed_fetch(api.base_url, 2)
        assert batch == 2
        # No request for more than three intervals: the server's clock alone would be on
        # batch 5 or 6 by now; the next requests get batch 3, then 4, as if nobody was away.
        time.sleep(max(0.0, received + 3.5 * interval - time.time()))
        batch, frame, sent, received = timed_fetch(api.base_url, 2)
        assert batch == 3
        assert_from_batch(frame, 3)
        again, frame, _, answered = timed_fetch(api.base_url, 2)
        if answered - sent < interval:  # else the machine stalled for a whole interval
            assert again == 3
            assert_from_batch(frame, 3)
        time.sleep(max(0.0, received + 1.2 * interval - time.time()))
        assert course_style_fetch(api.base_url, 2)[0] == 4
        info = requests.get(api.base_url + "/", timeout=10).json()
        assert info["group_progress"]["2"] == 4


# --- persistence across a real restart -------------------------------------------------------


def test_progress_survives_a_killed_and_restarted_process(tmp_path: Path) -> None:
    interval = 1.0
    env = {"DATA_API_INTERVAL_SECONDS": str(interval)}
    with data_api_process(tmp_path, "first", **env) as first:
        assert course_style_fetch(first.base_url, 3)[0] == 1
        time.sleep(1.2 * interval)
        batch, _, sent, received = timed_fetch(first.base_url, 3)
        assert batch == 2
        first.proc.kill()  # no clean shutdown: the state must already be on disk
        first.proc.wait()
    with data_api_process(tmp_path, "second", **env) as second:
        # A fresh start would say batch 1: the group is on batch 2 from the first process,
        # and however long the restart took, the next move brings batch 3, not later.
        time.sleep(max(0.0, received + 2.5 * interval - time.time()))
        batch, frame, _, _ = timed_fetch(second.base_url, 3)
        assert batch == 3
        assert_from_batch(frame, 3)
        # A group the first process never saw still starts at batch 1.
        assert course_style_fetch(second.base_url, 4)[0] == 1
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["format"] == 2
    assert state["groups"]["3"]["batch_number"] == 3


def test_exhaustion_survives_a_restart_and_restart_clears_it(tmp_path: Path) -> None:
    env = {"DATA_API_INTERVAL_SECONDS": "0.5", "DATA_API_BATCHES": "2"}
    with data_api_process(tmp_path, "first", **env) as first:
        assert course_style_fetch(first.base_url, 5)[0] == 1
        time.sleep(0.6)
        assert course_style_fetch(first.base_url, 5)[0] == 2
        time.sleep(0.6)
        r = requests.get(f"{first.base_url}/data", params={"group_number": 5}, timeout=10)
        assert r.status_code == 400
    with data_api_process(tmp_path, "second", **env) as second:
        r = requests.get(f"{second.base_url}/data", params={"group_number": 5}, timeout=10)
        assert r.status_code == 400
        assert "All 2 batches of group 5 have been served" in r.json()["detail"]
        requests.get(
            f"{second.base_url}/restart_data_generation", params={"group_number": 5}, timeout=10
        ).raise_for_status()
        assert course_style_fetch(second.base_url, 5)[0] == 1


def test_a_corrupt_state_file_logs_one_warning_and_the_process_serves(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"format": 1, "groups": {"1": {"started_at": "soon"}')
    with data_api_process(tmp_path, "server") as server:
        assert course_style_fetch(server.base_url, 1)[0] == 1
        output = server.output()
    warnings = [line for line in output.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, output
    assert str(state) in warnings[0] and "not valid JSON" in warnings[0]
    assert "Traceback" not in output
    assert json.loads(state.read_text())["groups"].keys() == {"1"}
    assert json.loads(state.read_text())["format"] == 2


def test_the_process_logs_its_start_up(tmp_path: Path) -> None:
    with data_api_process(tmp_path, "server") as server:
        output = server.output()
    assert f"loaded 5000 rows from {SAMPLE_CSV}" in output
    assert "RSS" in output and "MiB" in output


# --- start-up failures are clear, not tracebacks ---------------------------------------------


def _run_expecting_failure(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **clean_environ(),
        "DATA_API_STATE_FILE": str(tmp_path / "state.json"),
        "DATA_API_PORT": str(free_port()),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "app.data_api"],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_dataset_with_the_wrong_header_stops_start_up_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    lines = SAMPLE_CSV.read_text().splitlines()
    bad.write_text("\n".join([lines[0].replace("Elevation", "Altitude"), *lines[1:]]) + "\n")
    result = _run_expecting_failure(tmp_path, DATA_API_DATASET=str(bad))
    assert result.returncode == 1
    assert "header does not match the data contract" in result.stderr
    assert "Altitude" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_dataset_stops_start_up_clearly(tmp_path: Path) -> None:
    result = _run_expecting_failure(tmp_path, DATA_API_DATASET=str(tmp_path / "nope.csv.gz"))
    assert result.returncode == 1
    assert "dataset file not found" in result.stderr and "DATA_API_DATASET" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DATA_API_INTERVAL_SECONDS", "soon", "DATA_API_INTERVAL_SECONDS must be a number"),
        ("DATA_API_GROUPS", "0", "DATA_API_GROUPS must be >= 1"),
        ("DATA_API_ACCESS_LOG", "maybe", "DATA_API_ACCESS_LOG must be true or false"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_the_variable(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    result = _run_expecting_failure(tmp_path, **{name: value})
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
