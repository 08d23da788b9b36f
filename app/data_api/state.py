"""The groups' progress on disk: when each group started, so a restart keeps its batch.

The file is tiny and written only when a group starts or restarts, always atomically (temp
file + fsync + rename), so a crash leaves either the old or the new state. A file that cannot
be read or does not have the expected shape is set aside with one warning and the service
starts clean: a broken state file must never keep the service from starting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_FORMAT = 1


class StateFileError(ValueError):
    """The state file exists but is unusable; the message says why."""


def load_starts(path: Path, n_groups: int) -> dict[int, float]:
    """Group number -> start time (Unix seconds). Never raises for a bad file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        log.info("no state file at %s: every group starts at batch 1", path)
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        _set_aside(path, f"cannot be read ({exc})")
        return {}
    try:
        starts = parse_state(text)
    except StateFileError as exc:
        _set_aside(path, str(exc))
        return {}
    dropped = sorted(g for g in starts if not 1 <= g <= n_groups)
    if dropped:
        log.info("state file %s: ignoring groups %s outside 1..%d", path, dropped, n_groups)
    return {g: t for g, t in starts.items() if 1 <= g <= n_groups}


def parse_state(text: str) -> dict[int, float]:
    try:
        doc: Any = json.loads(text)
    except ValueError as exc:
        raise StateFileError(f"is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise StateFileError(f"is not a format-{STATE_FORMAT} state document")
    groups = doc.get("groups")
    if not isinstance(groups, dict):
        raise StateFileError("has no 'groups' object")
    starts: dict[int, float] = {}
    for key, entry in groups.items():
        started_at = entry.get("started_at") if isinstance(entry, dict) else None
        if not (key.isascii() and key.isdigit() and _is_time(started_at)):
            raise StateFileError(f"has an invalid entry for group {key!r}: {entry!r}"[:300])
        starts[int(key)] = float(started_at)
    return starts


def save_starts(path: Path, starts: dict[int, float]) -> None:
    """Replace the state file atomically; a crash at any point leaves a whole file."""
    doc = {
        "format": STATE_FORMAT,
        "groups": {str(g): {"started_at": t} for g, t in sorted(starts.items())},
    }
    data = json.dumps(doc, indent=1).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename itself is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _set_aside(path: Path, reason: str) -> None:
    # Keep the bad file for a human to look at, out of the way of the next atomic write.
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    try:
        os.replace(path, aside)
        where = f"moved to {aside}"
    except OSError as exc:
        where = f"could not be moved aside ({exc.strerror})"
    log.warning(
        "state file %s %s; it was %s and every group starts afresh at batch 1",
        path,
        reason,
        where,
    )
