"""Connections to batches_db, and DSNs made safe to print."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TypeAlias

import psycopg2
import psycopg2.extensions

Connection: TypeAlias = psycopg2.extensions.connection
DsnOrConnection: TypeAlias = str | Connection

# A hung server must not hang an Airflow task forever; libpq's default is to wait indefinitely.
DEFAULT_CONNECT_TIMEOUT = 10
APPLICATION_NAME = "mlops-batch-store"

_URL_PASSWORD = re.compile(r"(://[^:/@]*):[^@]*@")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced, for log lines and error messages."""
    return _KEYWORD_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", dsn))


def connect(dsn: str) -> Connection:
    params = psycopg2.extensions.parse_dsn(dsn)
    extra: dict[str, object] = {}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    if "application_name" not in params:
        extra["application_name"] = APPLICATION_NAME
    return psycopg2.connect(dsn, **extra)


@contextlib.contextmanager
def connection(target: DsnOrConnection) -> Iterator[Connection]:
    """A connection for `target`: a new one (closed afterwards) for a DSN, else the one given."""
    if isinstance(target, str):
        conn = connect(target)
        try:
            yield conn
        finally:
            conn.close()
    else:
        yield target
