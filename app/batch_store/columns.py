"""How the data contract's columns are named in the database.

The SQL columns are app/covertype.COLUMNS in lower case; this is the one place that says so.
"""

from __future__ import annotations

from typing import Final

from app.covertype import CATEGORICAL_COLUMNS, COLUMNS, NUMERIC_COLUMNS

SQL_NAMES: Final[dict[str, str]] = {name: name.lower() for name in COLUMNS}
SQL_COLUMNS: Final[tuple[str, ...]] = tuple(SQL_NAMES[name] for name in COLUMNS)
SQL_NUMERIC_COLUMNS: Final[tuple[str, ...]] = tuple(SQL_NAMES[name] for name in NUMERIC_COLUMNS)
SQL_CATEGORICAL_COLUMNS: Final[tuple[str, ...]] = tuple(
    SQL_NAMES[name] for name in CATEGORICAL_COLUMNS
)
