"""`python -m app.batch_store migrate|status`: the schema commands Ansible and operators run.

The DSN comes from BATCHES_DB_DSN only (never the command line, where `ps` would show a
password). Output is one JSON object on stdout, so Ansible can tell "changed" from "ok":
{"applied": [1], "current": 1}.
"""

from __future__ import annotations

import argparse
import json
import sys

import psycopg2

from app.batch_store.db import redact_dsn
from app.batch_store.migrations import (
    MigrationError,
    applied_versions,
    apply_migrations,
    discover,
)
from app.settings import BatchStoreSettings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.batch_store", description=__doc__)
    parser.add_argument(
        "command",
        choices=("migrate", "status"),
        help="migrate: apply pending schema files; status: list applied and pending versions",
    )
    args = parser.parse_args(argv)
    try:
        dsn = BatchStoreSettings().dsn
        if args.command == "migrate":
            applied = apply_migrations(dsn)
            current = max(applied_versions(dsn), default=0)
            print(json.dumps({"applied": applied, "current": current}))
        else:
            done = applied_versions(dsn)
            waiting = [m.version for m in discover() if m.version not in done]
            print(json.dumps({"applied": done, "pending": waiting}))
    except (MigrationError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except psycopg2.Error as exc:
        where = redact_dsn(BatchStoreSettings().dsn)
        print(f"error: cannot use the batch store at {where}: {str(exc).strip()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
