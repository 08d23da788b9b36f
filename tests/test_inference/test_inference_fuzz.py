"""Issue 9 §5 for the inference API: raw bytes in request bodies and query strings, sent over a
plain socket to `python -m app.inference` (uvicorn, as the unit runs it) serving a real model.
Every answer is a 2xx, or a 4xx with a reason; never a 5xx, never a connection closed without
an answer. Schema-valid fuzzing lives in test_inference_process.py; this is what a schema does
not describe: broken JSON, wrong encodings, odd numbers, escapes and percent-encodings."""

from __future__ import annotations

import json
import socket
import string
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_from_bytes

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from tests.test_inference.support import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    Frames,
    Versions,
    api_process,
    record,
    wait_until,
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def port(
    versions: Versions, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    MlflowClient(tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        versions.name, "production", versions.forest.version
    )
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTERED_MODEL": versions.name,
        "MLFLOW_PRODUCTION_ALIAS": "production",
        "INFERENCE_POLL_SECONDS": "0.5",
    }
    log: Path = tmp_path_factory.mktemp("inference-fuzz") / "inference-api.log"
    with api_process(env, log) as url:
        wait_until(lambda: httpx.get(f"{url}/ready").status_code == 200, "the API to be ready")
        yield int(url.rsplit(":", 1)[1])
        # The process survived all of it and still answers.
        assert httpx.get(f"{url}/ready").status_code == 200
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]


def _exchange(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One request on its own connection; the status and body of the answer."""
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head + body)
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except ConnectionResetError:
            # A server may close right after answering a request it refused unread.
            pass
    raw = b"".join(chunks)
    assert raw, f"connection closed without an answer to {head[:200]!r} + {body[:200]!r}"
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, answer = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), answer


def _request(method: str, target: bytes, body: bytes = b"") -> bytes:
    return (
        f"{method} ".encode()
        + target
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        # The admin token: the fuzzed reloads reach the handler, not only the guard.
        + f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    )


def _check(status: int, answer: bytes, what: object) -> None:
    assert status < 500, (status, answer[:500], what)
    assert 200 <= status < 300 or 400 <= status < 500, (status, what)
    if status >= 400:
        # Litestar answers JSON with a detail; uvicorn's own refusals are plain text.
        try:
            reason = json.loads(answer).get("detail")
        except (ValueError, AttributeError):
            reason = answer.decode("utf-8", "replace").strip()
        assert reason, (status, answer[:500], what)


def _post_predict(port: int, body: bytes, query: bytes = b"") -> int:
    target = b"/predict" + (b"?" + query if query else b"")
    status, answer = _exchange(port, _request("POST", target, body), body)
    _check(status, answer, body[:300])
    return status


# --- bodies ----------------------------------------------------------------------------------

VALID = json.dumps(
    {
        "Elevation": 2596, "Aspect": 51, "Slope": 3, "Horizontal_Distance_To_Hydrology": 258,
        "Vertical_Distance_To_Hydrology": 0, "Horizontal_Distance_To_Roadways": 510,
        "Hillshade_9am": 221, "Hillshade_Noon": 232, "Hillshade_3pm": 148,
        "Horizontal_Distance_To_Fire_Points": 6279, "Wilderness_Area": "Rawah",
        "Soil_Type": "C7745",
    }
).encode()  # fmt: skip

NASTY_TOKENS = [
    b"NaN", b"Infinity", b"-Infinity", b"1e309", b"-1e309", b"1e-400", b"-0", b"-0.0", b"0.5",
    b"1E2", b"99999999999999999999999999", b"\"\\ud800\"", b"\"\\u0000\"", b"\"\xff\"", b"[]",
    b"{}", b"null", b"true", b"\"2596\"", b"[" * 2000, b"{\"a\":" * 600, b"\xef\xbb\xbf",
]  # fmt: skip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=40), inner),
    max_leaves=20,
)


@st.composite
def mutated_record(draw: st.DrawFn) -> bytes:
    """The valid record with a few bytes replaced, inserted or deleted, or a value swapped
    for a nasty token: close enough to valid to reach the validation and predict paths."""
    body = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["replace", "insert", "delete", "token"]))
        if action == "replace" and at < len(body):
            body[at] = draw(st.integers(0, 255))
        elif action == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del body[at : at + draw(st.integers(1, 8))]
        else:
            key = draw(st.sampled_from(list(json.loads(VALID))))
            start = body.find(f'"{key}": '.encode())
            if start >= 0:
                start += len(key) + 4
                end = min(i for i in (body.find(b",", start), body.find(b"}", start)) if i >= 0)
                body[start:end] = draw(st.sampled_from(NASTY_TOKENS))
    return bytes(body)


@FUZZ
@given(body=st.binary(max_size=2000))
def test_any_bytes_as_the_body(port: int, body: bytes) -> None:
    _post_predict(port, body)


@FUZZ
@given(body=mutated_record())
def test_near_valid_records(port: int, body: bytes) -> None:
    _post_predict(port, body)


@FUZZ
@given(value=json_values, as_list=st.booleans())
def test_any_json_document(port: int, value: object, as_list: bool) -> None:
    body = json.dumps([value] if as_list else value, allow_nan=True).encode()
    _post_predict(port, body)


@FUZZ
@given(
    rows=st.lists(st.sampled_from([VALID, *NASTY_TOKENS[:14]]), min_size=0, max_size=30),
)
def test_lists_mixing_good_and_bad_rows(port: int, rows: list[bytes]) -> None:
    status = _post_predict(port, b"[" + b",".join(rows) + b"]")
    if rows and all(r == VALID for r in rows):
        assert status == 200


def test_nasty_tokens_in_every_field(port: int) -> None:
    """Every token in every field, exhaustively (the mutation strategy only samples them)."""
    record_ = json.loads(VALID)
    for key in record_:
        for token in NASTY_TOKENS:
            head, _, tail = VALID.partition(f'"{key}": '.encode())
            end = min(i for i in (tail.find(b","), tail.find(b"}")) if i >= 0)
            _post_predict(port, head + f'"{key}": '.encode() + token + tail[end:])


# --- query strings ---------------------------------------------------------------------------

raw_query = st.binary(max_size=200)
# Bytes a request line may carry unescaped (RFC 3986 query characters), so the server's
# query parsing is reached rather than its HTTP parser refusing the line.
query_chars = st.text(
    alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/?%[]", max_size=120
)


def _percent(raw: bytes) -> bytes:
    return quote_from_bytes(raw, safe="=&").encode()


@FUZZ
@given(query=st.one_of(query_chars.map(str.encode), raw_query.map(_percent)))
def test_any_query_string(port: int, query: bytes) -> None:
    for method, path in (
        ("POST", b"/predict"),
        ("GET", b"/model"),
        ("GET", b"/ready"),
        ("GET", b"/health"),
    ):
        body = VALID if path == b"/predict" else b""
        status, answer = _exchange(port, _request(method, path + b"?" + query, body), body)
        _check(status, answer, (method, path, query))


@FUZZ
@given(
    version=st.one_of(st.text(max_size=30), st.integers(), st.binary(max_size=20)),
    alias=st.one_of(st.none(), st.text(max_size=30), st.binary(max_size=20)),
)
def test_reload_parameters(port: int, versions: Versions, version: object, alias: object) -> None:
    def encode(value: object) -> bytes:
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
        return _percent(raw)

    query = b"version=" + encode(version)
    if alias is not None:
        query += b"&alias=" + encode(alias)
    status, answer = _exchange(port, _request("POST", b"/model/reload?" + query), b"")
    _check(status, answer, query)


@FUZZ
@given(raw=raw_query)
def test_raw_bytes_in_the_request_line(port: int, raw: bytes) -> None:
    """Unescaped bytes (spaces, CR, LF, NUL, non-ASCII) in the target: a refusal, not a drop."""
    status, answer = _exchange(port, _request("GET", b"/model?" + raw), b"")
    _check(status, answer, raw)


def test_the_model_still_answers_correctly_after_the_fuzzing(
    port: int, versions: Versions, frames: Frames, tracking_uri: str
) -> None:
    # A reload fuzzed with a real version number pins it; follow the alias again.
    reset = httpx.post(f"http://127.0.0.1:{port}/model/reload", headers=ADMIN_HEADERS, timeout=120)
    assert reset.status_code == 200, reset.text
    answer = httpx.post(f"http://127.0.0.1:{port}/predict", json=record(frames.holdout, 3))
    assert answer.status_code == 200
    expected = int(versions.forest.pipeline.predict(frames.holdout.iloc[3:4])[0])
    assert answer.json()["predictions"][0]["cover_type"] == expected
