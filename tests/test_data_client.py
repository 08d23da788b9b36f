"""The data-API client against real HTTP servers scripted to behave like ours, like the course's
original (Spanish 400s, batch counter, 500s), and like broken ones (garbage, slow, silent)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from app.data_client import (
    DataApiClient,
    DataApiError,
    DataApiProtocolError,
    DataApiRequestError,
    DataApiServerError,
    DataApiTimeout,
    DataApiUnavailable,
    Exhausted,
    NewBatch,
    Timeouts,
    is_exhausted_detail,
    safe_url,
)
from app.settings import DataClientSettings
from tests.servers import free_port

ROW = ["2596", "51", "3", "258", "0", "510", "221", "232", "148", "6279", "Rawah", "C7745", "5"]
SPANISH_DONE = "Ya se recolectó toda la información minima necesaria"
SPANISH_BAD_GROUP = "Número de grupo inválido"
FAST = Timeouts(connect=2.0, read=2.0, total=5.0)


@dataclass
class Reply:
    status: int = 200
    body: object = None  # bytes/str sent as is, anything else as JSON
    content_type: str = "application/json"
    hang: bool = False  # never answer (until the test ends)
    trickle: bool = False  # send headers, then one byte at a time, forever
    drop: bool = False  # close the connection without a response


@dataclass
class ScriptedServer:
    """A real HTTP server on a free port; each request takes the next scripted reply, or asks
    `handler(path, query)` when one is set."""

    url: str = ""
    replies: list[Reply] = field(default_factory=list)
    handler: Callable[[str, dict[str, list[str]]], Reply] | None = None
    requests: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def next_reply(self, path: str) -> Reply:
        parts = urlsplit(path)
        if self.handler is not None:
            return self.handler(parts.path, parse_qs(parts.query))
        if not self.replies:
            return Reply(599, {"detail": "unscripted request"})
        return self.replies.pop(0)


def make_handler(script: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            script.requests.append(self.path)
            reply = script.next_reply(self.path)
            if reply.hang:
                script.release.wait(30)
                return
            if reply.drop:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if isinstance(reply.body, bytes):
                body = reply.body
            elif isinstance(reply.body, str):
                body = reply.body.encode()
            else:
                body = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(body) + (10**6 if reply.trickle else 0)))
            self.end_headers()
            if reply.trickle:
                while not script.release.wait(0.05):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                return
            self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    """A ScriptedServer listening on a free loopback port until the block ends."""
    script = ScriptedServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(script))
    httpd.daemon_threads = True
    script.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield script
    finally:
        script.release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with scripted_server() as script:
        yield script


def client(server: ScriptedServer, timeouts: Timeouts = FAST) -> DataApiClient:
    return DataApiClient(server.url, timeouts)


def batch_body(group: int = 3, batch: int = 1, rows: object = None) -> dict[str, object]:
    return {"group_number": group, "batch_number": batch, "data": rows or [ROW, ROW]}


def test_new_batch(server: ScriptedServer) -> None:
    server.replies.append(Reply(body=batch_body(3, 4, [ROW] * 5)))
    with client(server) as c:
        result = c.fetch_batch(3)
    assert result == NewBatch(group_number=3, batch_number=4, rows=[ROW] * 5)
    assert server.requests == ["/data?group_number=3"]


def test_malformed_rows_pass_through_to_ingestion(server: ScriptedServer) -> None:
    rows = [ROW, ROW[:12], "garbage", [*ROW[:12], "9"]]
    server.replies.append(Reply(body=batch_body(3, 2, rows)))
    result = client(server).fetch_batch(3)
    assert isinstance(result, NewBatch)
    assert result.rows == rows


@pytest.mark.parametrize(
    "detail",
    [
        SPANISH_DONE,
        "All 10 batches of group 3 have been served; call /restart_data_generation to start again",
        "ya se recolecto toda la informacion minima necesaria",
    ],
)
def test_exhausted(server: ScriptedServer, detail: str) -> None:
    server.replies.append(Reply(400, {"detail": detail}))
    assert client(server).fetch_batch(3) == Exhausted(detail)


def test_exhausted_as_our_data_api_says_it(server: ScriptedServer) -> None:
    detail = (
        "All 10 batches of group 3 have been served. Call GET"
        " /restart_data_generation?group_number=3 to start the group again from batch 1."
    )
    extra = {"group_number": 3, "batches_served": 10, "restart": "/restart_data_generation"}
    server.replies.append(Reply(400, {"status_code": 400, "detail": detail, "extra": extra}))
    assert client(server).fetch_batch(3) == Exhausted(detail)
    # The machine-readable flag alone is enough, whatever the wording becomes.
    server.replies.append(Reply(400, {"status_code": 400, "detail": "fin", "extra": extra}))
    assert client(server).fetch_batch(3) == Exhausted("fin")


@pytest.mark.parametrize(
    "detail",
    [
        "group_number must be an integer from 1 to 10; got '11'",
        "Número de grupo inválido",
        "batch served",
        "",
    ],
)
def test_other_400_details_are_not_exhaustion(detail: str) -> None:
    assert not is_exhausted_detail(detail)


def test_invalid_group_is_a_configuration_error_not_exhaustion(server: ScriptedServer) -> None:
    server.replies.append(Reply(400, {"detail": SPANISH_BAD_GROUP}))
    with pytest.raises(DataApiRequestError) as info:
        client(server).fetch_batch(11)
    assert info.value.status_code == 400
    assert SPANISH_BAD_GROUP in str(info.value)
    assert f"{server.url}/data?group_number=11" in str(info.value)
    assert not is_exhausted_detail(SPANISH_BAD_GROUP)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (422, {"detail": [{"loc": ["query", "group_number"], "msg": "not an int"}]}),
        (404, "Not Found"),
        (400, {"detail": "group_number must be between 1 and 10"}),
    ],
)
def test_other_client_errors(server: ScriptedServer, status: int, body: object) -> None:
    server.replies.append(Reply(status, body))
    with pytest.raises(DataApiRequestError, match=f"rejected with {status}"):
        client(server).fetch_batch(3)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors(server: ScriptedServer, status: int) -> None:
    server.replies.append(Reply(status, "Internal Server Error", content_type="text/plain"))
    with pytest.raises(DataApiServerError, match=f"server error {status}") as info:
        client(server).fetch_batch(3)
    assert info.value.status_code == status
    assert info.value.url == f"{server.url}/data?group_number=3"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>proxy error</html>", "body is not JSON"),
        (b'{"group_number": 3, "batch_number": 1, "data": [[', "body is not JSON"),
        (b"", "body is not JSON"),
        ([1, 2, 3], "expected a JSON object, got list"),
        ({"group_number": 3, "data": [ROW]}, "missing key"),
        ({"batch_number": 1, "data": [ROW]}, "missing key"),
        (batch_body(3, "2"), "batch_number must be a non-negative integer, got '2'"),
        (batch_body(3, 1.0), "batch_number must be a non-negative integer"),
        (batch_body(3, True), "batch_number must be a non-negative integer"),
        (batch_body(3, -1), "batch_number must be a non-negative integer"),
        (batch_body(4, 1), "group_number is 4, asked for 3"),
        ({"group_number": 3, "batch_number": 1, "data": "rows"}, "data must be a list"),
        (batch_body(3, 1, [{"Elevation": "1"}]), "no row is a list of 13"),
        (batch_body(3, 1, [ROW[:12], ROW[:5]]), "no row is a list of 13"),
    ],
)
def test_malformed_responses(server: ScriptedServer, body: object, message: str) -> None:
    server.replies.append(Reply(200, body))
    with pytest.raises(DataApiProtocolError, match=message):
        client(server).fetch_batch(3)


def test_empty_batch_is_a_batch(server: ScriptedServer) -> None:
    server.replies.append(Reply(body={"group_number": 3, "batch_number": 1, "data": []}))
    assert client(server).fetch_batch(3) == NewBatch(3, 1, [])


def test_a_silent_server_times_out(server: ScriptedServer) -> None:
    server.replies.append(Reply(hang=True))
    started = time.monotonic()
    with pytest.raises(DataApiTimeout, match="no response data within 0.3s"):
        client(server, Timeouts(connect=2, read=0.3, total=10)).fetch_batch(3)
    assert time.monotonic() - started < 5  # bounded by the read timeout, not the server


def test_a_trickling_server_hits_the_total_deadline(server: ScriptedServer) -> None:
    # Each byte comes well within the read timeout; only the total deadline stops this.
    server.replies.append(Reply(body=batch_body(), trickle=True))
    with pytest.raises(DataApiTimeout, match="not complete within 0.5s"):
        client(server, Timeouts(connect=2, read=2, total=0.5)).fetch_batch(3)


def test_connection_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DataApiUnavailable, match=f"GET {url}/data\\?group_number=3: connection"):
        DataApiClient(url, FAST).fetch_batch(3)


def test_connection_dropped_without_answer(server: ScriptedServer) -> None:
    server.replies.append(Reply(drop=True))
    with pytest.raises(DataApiUnavailable):
        client(server).fetch_batch(3)


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose listen queue is full: the kernel drops new SYNs, so connecting hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # non-blocking connect "in progress"
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    yield port
    for s in [*fillers, listener]:
        s.close()


def test_connect_timeout(full_backlog: int) -> None:
    url = f"http://127.0.0.1:{full_backlog}"
    with pytest.raises(DataApiTimeout, match="no connection within 0.3s"):
        DataApiClient(url, Timeouts(connect=0.3, read=5, total=10)).fetch_batch(3)


def test_errors_never_show_credentials(server: ScriptedServer) -> None:
    server.replies.append(Reply(500, "boom"))
    host = server.url.removeprefix("http://")
    secret_url = f"http://mlops:hunter2-secret@{host}"
    with pytest.raises(DataApiServerError) as info:
        DataApiClient(secret_url, FAST).fetch_batch(3)
    assert "hunter2" not in str(info.value) and "hunter2" not in info.value.url
    assert f"http://{host}/data?group_number=3" in str(info.value)
    assert safe_url("https://u:p@[::1]:8443/x?y=1") == "https://[::1]:8443/x?y=1"


def test_every_error_is_a_data_api_error() -> None:
    for cls in (
        DataApiTimeout,
        DataApiUnavailable,
        DataApiServerError,
        DataApiRequestError,
        DataApiProtocolError,
    ):
        assert issubclass(cls, DataApiError)


def test_settings_drive_url_group_and_timeouts(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA_API_URL", server.url + "/")
    monkeypatch.setenv("DATA_API_GROUP", "7")
    monkeypatch.setenv("DATA_API_READ_TIMEOUT", "0.3")
    settings = DataClientSettings()
    server.replies.append(Reply(body=batch_body(7, 2)))
    with DataApiClient(settings.base_url, Timeouts.from_settings(settings)) as c:
        assert c.fetch_batch(settings.group_number) == NewBatch(7, 2, [ROW, ROW])
        server.replies.append(Reply(hang=True))
        with pytest.raises(DataApiTimeout, match="0.3s"):
            c.fetch_batch(settings.group_number)
    assert server.requests == ["/data?group_number=7", "/data?group_number=7"]


def test_restart(server: ScriptedServer) -> None:
    server.replies.append(Reply(body=["ok"]))  # what the course server's `return {'ok'}` sends
    assert DataApiClient(server.url, FAST).restart(5) == ["ok"]
    server.replies.append(Reply(400, {"detail": SPANISH_BAD_GROUP}))
    with pytest.raises(DataApiRequestError, match="inválido"):
        DataApiClient(server.url, FAST).restart(5)
    server.replies.append(Reply(200, b"", content_type="text/plain"))
    assert DataApiClient(server.url, FAST).restart(5) is None
    assert server.requests == ["/restart_data_generation?group_number=5"] * 3


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="http"):
        DataApiClient("ftp://example.org")
    with pytest.raises(ValueError, match="group_number"):
        DataApiClient("http://127.0.0.1:1").fetch_batch(0)


class CourseServer:
    """The course's original API, as published: batch counter per group, the same slice for
    every batch, the Spanish 400 after the last batch, a set for the restart answer."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.state = {g: [0.0, -1] for g in range(1, 11)}
        self.lock = threading.Lock()

    def __call__(self, path: str, query: dict[str, list[str]]) -> Reply:
        try:
            group = int(query["group_number"][0])
        except (KeyError, ValueError):
            return Reply(422, {"detail": [{"loc": ["query", "group_number"]}]})
        if group < 1 or group > 10:
            return Reply(400, {"detail": SPANISH_BAD_GROUP})
        with self.lock:
            if path == "/restart_data_generation":
                self.state[group] = [0.0, -1]
                return Reply(body=["ok"])
            if self.state[group][1] >= 10:
                return Reply(400, {"detail": SPANISH_DONE})
            now = time.time()
            if now - self.state[group][0] > self.interval:
                self.state[group][0] = now
                self.state[group][1] += 2 if self.state[group][1] == -1 else 1
            rows = [[str(group), *ROW[1:]]] * 3
            return Reply(
                body={"group_number": group, "batch_number": self.state[group][1], "data": rows}
            )


def test_a_full_run_against_the_course_server(server: ScriptedServer) -> None:
    server.handler = CourseServer(interval=0.0)
    seen: list[int] = []
    with client(server) as c:
        while True:
            result = c.fetch_batch(5)
            if isinstance(result, Exhausted):
                break
            seen.append(result.batch_number)
            assert len(seen) <= 20, "never exhausted"
        assert result.detail == SPANISH_DONE
        assert seen == list(range(1, 11))
        with pytest.raises(DataApiRequestError, match="Número de grupo inválido"):
            c.fetch_batch(11)
        assert c.restart(5) == ["ok"]
        again = c.fetch_batch(5)
    assert isinstance(again, NewBatch) and again.batch_number == 1
