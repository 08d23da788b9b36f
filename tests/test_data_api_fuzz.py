"""Any bytes to the data API process get an answer: a 2xx, or a 4xx that says why.

Hypothesis writes the requests byte by byte onto a raw socket to `python -m app.data_api`
(uvicorn and httptools, as the unit runs it), so nothing in between repairs or rejects them:
query strings as raw bytes and as percent-encoded bytes (which reach the app's own parsing),
header names and values, bodies, methods and paths. Every answer must be a whole HTTP
response; a 5xx, a connection closed without one, or no answer at all fails the test.
FUZZ_EXAMPLES sets how many requests each test sends (default 300).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote_from_bytes

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from tests.test_data_api_process import DataApiProcess, data_api_process

# Hypothesis caches (unicode tables, constants) in ./.hypothesis even without a database, from
# the moment tests are collected: keep them in a temporary directory, removed at exit.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="data-api-fuzz-hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)
set_hypothesis_home_dir(_HYPOTHESIS_HOME)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ folder left in the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# schemathesis's cases go through requests and its checks: slower per example, so fewer.
SCHEMA_FUZZ = settings(FUZZ, max_examples=max(1, EXAMPLES // 2))
# A healthy server answers any of these in milliseconds; the bound only catches a hang.
ANSWER_TIMEOUT = 20.0
PATHS = [b"/data", b"/restart_data_generation", b"/", b"/health", b"/schema/openapi.json"]
METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataApiProcess]:
    tmp = tmp_path_factory.mktemp("data-api-fuzz")
    with data_api_process(tmp, "fuzz", DATA_API_SEED="5", DATA_API_ACCESS_LOG="false") as server:
        yield server
        # The process survived everything and never logged a server error.
        assert requests.get(server.base_url + "/health", timeout=10).status_code == 200
        output = server.output()
        assert "Traceback" not in output and " ERROR " not in output, output[-5000:]


def _port(api: DataApiProcess) -> int:
    return int(api.base_url.rsplit(":", 1)[1])


def _read_head(sock: socket.socket, request: bytes) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without a response to {request[:300]!r}: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def send(api: DataApiProcess, request: bytes, head_request: bool = False) -> Answer:
    """Send raw bytes on a new connection; the first final (non-1xx) response."""
    with socket.create_connection(("127.0.0.1", _port(api)), timeout=ANSWER_TIMEOUT) as sock:
        sock.sendall(request)
        head, rest = _read_head(sock, request)
        while head.startswith(b"HTTP/1.1 1"):  # an interim response (100 Continue)
            data = rest
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                assert chunk, f"closed after an interim response to {request[:300]!r}"
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ")
        assert version == "HTTP/1.1", status_line
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        length = 0 if head_request else int(headers.get("content-length", "-1"))
        body = rest
        while length < 0 or len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                assert length < 0, f"body cut short ({len(body)} of {length}) for {request[:300]!r}"
                break
            body += chunk
    return Answer(int(status), headers, body[: max(length, 0)] if length >= 0 else body)


def assert_answered(answer: Answer, request: bytes, head_request: bool = False) -> None:
    where = f"{answer.status} to {request[:300]!r}: {answer.body[:500]!r}"
    assert 200 <= answer.status < 300 or 400 <= answer.status < 500, where
    if answer.status >= 400 and not head_request:
        # A reason: Litestar's JSON error shape, or uvicorn's one-line text for bytes that are
        # not HTTP at all.
        assert answer.body.strip(), where
        if answer.headers.get("content-type", "").startswith("application/json"):
            detail = json.loads(answer.body).get("detail")
            assert isinstance(detail, str) and detail.strip(), where


def request_bytes(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    body: bytes = b"",
) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# --- strategies -------------------------------------------------------------------------------

# Values that are near misses of a group number, and anything at all.
_NEAR_GROUPS = st.one_of(
    st.integers(-(10**30), 10**30).map(lambda n: str(n).encode()),
    st.sampled_from([b"", b"1", b"10", b" 1", b"1 ", b"+1", b"01", b"1.0", b"1e1", b"\xd9\xa1"]),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
)
_KEYS = st.one_of(st.just(b"group_number"), st.binary(max_size=20))


@st.composite
def encoded_queries(draw: st.DrawFn) -> bytes:
    """key=value pairs with every byte percent-encoded (so all of them reach the app), or
    with the separators left raw."""
    pairs = draw(st.lists(st.tuples(_KEYS, _NEAR_GROUPS), max_size=4))
    safe = draw(st.sampled_from(["", "=&+%", "/?:@"]))
    return b"&".join(
        quote_from_bytes(k, safe=safe).encode() + b"=" + quote_from_bytes(v, safe=safe).encode()
        for k, v in pairs
    )


# Any byte except those that end the request line; those are covered by the raw-target test.
_TARGET_BYTES = st.binary(max_size=120)


# --- tests ------------------------------------------------------------------------------------


@FUZZ
@given(path=st.sampled_from(PATHS), query=encoded_queries())
def test_percent_encoded_query_bytes(api: DataApiProcess, path: bytes, query: bytes) -> None:
    request = request_bytes(b"GET", path + b"?" + query)
    assert_answered(send(api, request), request)


@FUZZ
@given(path=st.sampled_from([*PATHS, b""]), query=_TARGET_BYTES)
def test_raw_query_bytes(api: DataApiProcess, path: bytes, query: bytes) -> None:
    # Spaces, CR, LF, NUL and non-ASCII straight in the request line: not HTTP any more, and
    # the server must still say so.
    request = request_bytes(b"GET", path + b"?" + query)
    assert_answered(send(api, request), request)


_HEADER_NAMES = st.one_of(
    st.sampled_from(
        [
            b"Content-Type",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Cookie",
            b"Accept",
            b"Accept-Encoding",
            b"Authorization",
            b"Expect",
            b"Connection",
            b"Host",
            b"Range",
            b"If-None-Match",
            b"Origin",
            b"X-Forwarded-For",
        ]
    ),
    st.binary(min_size=1, max_size=30),
)


@FUZZ
@given(
    method=st.one_of(st.sampled_from(METHODS), st.binary(min_size=1, max_size=10)),
    path=st.sampled_from(PATHS),
    query=encoded_queries(),
    headers=st.lists(st.tuples(_HEADER_NAMES, st.binary(max_size=80)), max_size=4),
    body=st.binary(max_size=300),
)
def test_any_method_headers_and_body(
    api: DataApiProcess,
    method: bytes,
    path: bytes,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    request = request_bytes(method, path + b"?" + query, headers, body)
    head_request = method == b"HEAD"
    assert_answered(send(api, request, head_request), request, head_request)


@FUZZ
@given(data=st.binary(max_size=400))
def test_bytes_that_are_not_http(api: DataApiProcess, data: bytes) -> None:
    # Whatever arrives on the port: an answer, or (for bytes that never finish a request
    # head) a clean close once the client stops sending; never a 5xx.
    with socket.create_connection(("127.0.0.1", _port(api)), timeout=ANSWER_TIMEOUT) as sock:
        sock.sendall(data + b"\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    if reply:
        status = reply.split(b" ", 2)[1]
        assert reply.startswith(b"HTTP/1.1 ") and status[:1] in (b"2", b"4"), reply[:300]


PARAMETERISED = {"GET /data", "GET /restart_data_generation"}


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_the_openapi_schema_holds_for_generated_requests(
    api: DataApiProcess, mode: schemathesis.GenerationMode
) -> None:
    """schemathesis, from the service's own /schema/openapi.json: requests that follow the
    schema (positive) and that break it (negative), every check it has (no 5xx, documented
    status codes and content types, bodies that match the documented shapes)."""
    schema = schemathesis.openapi.from_url(api.base_url + "/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= PARAMETERISED
    if mode == schemathesis.GenerationMode.NEGATIVE:
        # Nothing to break in an operation without parameters.
        operations = [op for op in operations if op.label in PARAMETERISED]
    for operation in operations:

        @SCHEMA_FUZZ
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate()

        check()


def test_the_known_cases_answer_as_documented(api: DataApiProcess) -> None:
    """Fixed examples the fuzzing above found or is meant to find, with their exact answers."""
    cases = {
        b"/data?group_number=%ff": 400,
        b"/data?group_number=%00": 400,
        b"/data?group_number=%": 400,
        b"/data?group_number=%EF%BC%91": 400,  # a full-width digit one
        b"/data?group_number=1": 200,
        b"/data?%ff=1": 400,
        b"/?x=%ff": 200,
    }
    for target, status in cases.items():
        request = request_bytes(b"GET", target)
        answer = send(api, request)
        assert answer.status == status, (target, answer)
        assert_answered(answer, request)


def test_a_huge_group_number_is_not_echoed_in_full(api: DataApiProcess) -> None:
    request = request_bytes(b"GET", b"/data?group_number=" + b"9" * 5000)
    answer = send(api, request)
    assert answer.status == 400
    detail = json.loads(answer.body)["detail"]
    assert detail == (
        f"group_number must be an integer from 1 to 10; got '{'9' * 40}'... (5000 chars)"
    )
    assert len(answer.body) < 1000, len(answer.body)


def test_a_repeated_group_number_means_the_last_one(api: DataApiProcess) -> None:
    # As the course's FastAPI server reads it (Starlette's query_params.get: the last value).
    request = request_bytes(b"GET", b"/data?group_number=1&group_number=2")
    answer = send(api, request)
    assert answer.status == 200, answer
    assert json.loads(answer.body)["group_number"] == 2


def test_the_fuzzed_server_still_serves(api: DataApiProcess) -> None:
    body = requests.get(api.base_url + "/data", params={"group_number": 3}, timeout=10).json()
    assert body["group_number"] == 3 and len(body["data"]) == 50
