"""Client for the batch data API, ours or the course's original, as the DAG uses it.

Every call ends in one of three ways, which the DAG treats differently:
- NewBatch: a batch was delivered (its rows as received; ingestion validates each one, so a
  malformed row is kept aside instead of failing the whole batch);
- Exhausted: every batch has been served -- our API's 400 or the course server's Spanish 400
  ("Ya se recolectó toda la información minima necesaria"). A normal outcome: skip the run;
- a DataApiError subclass for everything else: timeouts, refused connections, 5xx, a body that
  is not the contract's JSON (wrong keys or types, or not one row of 13 values), and other
  4xx such as "Número de grupo inválido", which is a configuration mistake and must fail
  loudly rather than look like the end of the data.

Every call has a connect timeout, a read timeout (per wait for bytes) and a total deadline.
The client does not retry: the DAG's task retries (with backoff) decide that.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3

from app.covertype import COLUMNS
from app.settings import DataClientSettings

DATA_PATH = "/data"
RESTART_PATH = "/restart_data_generation"
MAX_BODY_BYTES = 64 * 1024 * 1024  # a full batch is about 0.5 MB
_CHUNK = 64 * 1024

# What a 400 detail says when every batch has been served, matched on lower-case,
# accent-free text: the course server's "Ya se recolectó toda la información minima
# necesaria", and our data API's "All 10 batches of group 3 have been served. ...".
EXHAUSTED_PATTERN = re.compile(
    r"ya se recolecto toda la informacion"
    r"|\ball\b[^.;]*\bbatch(?:es)?\b[^.;]*\bserved\b"
    r"|\bno more batches\b"
    r"|\bexhausted\b"
)
# Our data API also says it in machine-readable form, in the error body's "extra".
EXHAUSTED_EXTRA_KEY = "batches_served"


class DataApiError(RuntimeError):
    """The data API could not deliver a batch. `url` never contains credentials."""

    def __init__(self, message: str, url: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status_code = status_code


class DataApiTimeout(DataApiError):
    """Connecting, waiting for the response or reading it took too long."""


class DataApiUnavailable(DataApiError):
    """No HTTP conversation: connection refused or reset, name not resolved."""


class DataApiServerError(DataApiError):
    """HTTP 5xx: the server failed; retrying later may help."""


class DataApiRequestError(DataApiError):
    """HTTP 4xx other than exhaustion: our request is wrong (group number, URL); a retry will
    not help, the configuration must change."""


class DataApiProtocolError(DataApiError):
    """The response is not the contract's: not JSON, wrong keys or types, unexpected status."""


@dataclass(frozen=True)
class NewBatch:
    group_number: int
    batch_number: int
    rows: list[Any]  # as received; app.batch_store.store validates each row


@dataclass(frozen=True)
class Exhausted:
    detail: str


FetchResult: TypeAlias = NewBatch | Exhausted


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 60.0
    total: float = 120.0

    @classmethod
    def from_settings(cls, settings: DataClientSettings) -> Timeouts:
        return cls(settings.connect_timeout, settings.read_timeout, settings.total_timeout)


def safe_url(url: str) -> str:
    """`url` without user:password, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _normalise(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def is_exhausted_detail(detail: str) -> bool:
    """Whether a 400 detail says that every batch has been served."""
    return EXHAUSTED_PATTERN.search(_normalise(detail)) is not None


def _error_body(body: bytes) -> tuple[str, object]:
    """(detail, extra) of an error body: FastAPI and Litestar both put the message in
    `detail`, Litestar adds `extra`. Anything else: (the text, None)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500], None
    if isinstance(data, dict) and "detail" in data:
        detail = data["detail"]
        shown = detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)
        return shown, data.get("extra")
    return text[:500], None


def _detail(body: bytes) -> str:
    return _error_body(body)[0]


def _says_exhausted(body: bytes) -> tuple[bool, str]:
    detail, extra = _error_body(body)
    flagged = isinstance(extra, dict) and EXHAUSTED_EXTRA_KEY in extra
    return flagged or is_exhausted_detail(detail), detail


class DataApiClient:
    """A requests Session bound to one data API. Use as a context manager, or close()."""

    def __init__(
        self,
        base_url: str,
        timeouts: Timeouts | None = None,
        session: requests.Session | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"data API URL must be http(s)://host[:port], got {safe_url(base_url)}"
            )
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or Timeouts()
        self.session = session or requests.Session()

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> DataApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, group_number: int) -> tuple[int, bytes, str]:
        """(status, body, printable url). Transport failures become DataApiError."""
        if type(group_number) is not int or group_number < 1:
            raise ValueError(f"group_number must be an integer >= 1, got {group_number!r}")
        url = f"{self.base_url}{path}?group_number={group_number}"
        shown = safe_url(url)
        deadline = time.monotonic() + self.timeouts.total
        try:
            response = self.session.get(
                url,
                timeout=(self.timeouts.connect, self.timeouts.read),
                stream=True,
            )
            try:
                body = self._read_body(response, deadline, shown)
            finally:
                response.close()
        except requests.exceptions.ConnectTimeout as exc:
            raise DataApiTimeout(
                f"GET {shown}: no connection within {self.timeouts.connect:g}s", shown
            ) from exc
        except (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError) as exc:
            # urllib3's own error: the body is read from response.raw, outside requests.
            raise DataApiTimeout(
                f"GET {shown}: no response data within {self.timeouts.read:g}s", shown
            ) from exc
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise DataApiUnavailable(f"GET {shown}: connection failed: {exc}", shown) from exc
        return response.status_code, body, shown

    def _read_body(self, response: requests.Response, deadline: float, shown: str) -> bytes:
        # read1 returns whatever has arrived, so the deadline is checked between reads even
        # when a server trickles bytes too fast for read_timeout to notice.
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise DataApiTimeout(
                    f"GET {shown}: response not complete within {self.timeouts.total:g}s",
                    shown,
                    response.status_code,
                )
            chunk = response.raw.read1(_CHUNK, decode_content=True)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise DataApiProtocolError(
                    f"GET {shown}: response larger than {MAX_BODY_BYTES} bytes",
                    shown,
                    response.status_code,
                )
            chunks.append(chunk)

    def _raise_for_status(self, status: int, body: bytes, shown: str) -> None:
        if 200 <= status < 300:
            return
        detail = _detail(body)
        if 500 <= status < 600:
            raise DataApiServerError(f"GET {shown}: server error {status}: {detail}", shown, status)
        if 400 <= status < 500:
            raise DataApiRequestError(
                f"GET {shown}: request rejected with {status}: {detail}"
                " (check the data API URL and group number)",
                shown,
                status,
            )
        raise DataApiProtocolError(f"GET {shown}: unexpected status {status}", shown, status)

    def fetch_batch(self, group_number: int) -> FetchResult:
        status, body, shown = self._get(DATA_PATH, group_number)
        if status == 400:
            exhausted, detail = _says_exhausted(body)
            if exhausted:
                return Exhausted(detail)
        self._raise_for_status(status, body, shown)
        return _parse_batch(body, group_number, shown, status)

    def restart(self, group_number: int) -> Any:
        """Start the group's batches again; returns the server's JSON answer (or None)."""
        status, body, shown = self._get(RESTART_PATH, group_number)
        self._raise_for_status(status, body, shown)
        try:
            return json.loads(body) if body.strip() else None
        except ValueError:
            return None


def _parse_batch(body: bytes, group_number: int, shown: str, status: int) -> NewBatch:
    def bad(reason: str) -> DataApiProtocolError:
        return DataApiProtocolError(f"GET {shown}: malformed batch: {reason}", shown, status)

    try:
        data = json.loads(body)
    except ValueError as exc:
        snippet = body[:80].decode("utf-8", "replace")
        raise bad(f"body is not JSON ({exc}); starts with {snippet!r}") from exc
    if not isinstance(data, dict):
        raise bad(f"expected a JSON object, got {type(data).__name__}")
    missing = [key for key in ("group_number", "batch_number", "data") if key not in data]
    if missing:
        raise bad(f"missing key(s) {', '.join(missing)}")
    got_group, batch, rows = data["group_number"], data["batch_number"], data["data"]
    if type(got_group) is not int or got_group != group_number:
        raise bad(f"group_number is {got_group!r}, asked for {group_number}")
    if type(batch) is not int or batch < 0:
        raise bad(f"batch_number must be a non-negative integer, got {batch!r}")
    if not isinstance(rows, list):
        raise bad(f"data must be a list of rows, got {type(rows).__name__}")
    # Single bad rows are ingestion's business; a payload where no row has the contract's
    # shape means the server speaks another format.
    if rows and not any(isinstance(r, list) and len(r) == len(COLUMNS) for r in rows):
        raise bad(f"no row is a list of {len(COLUMNS)} values (first row: {rows[0]!r:.80})")
    return NewBatch(group_number=got_group, batch_number=batch, rows=rows)
