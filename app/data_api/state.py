"""The groups' progress on disk: the batch each group is on and when it moved there, so a
restart keeps its batch.

The file is tiny and written only when a group starts, advances or restarts, always
atomically (temp file + fsync + rename), so a crash leaves either the old or the new state.
A file that cannot be read or does not have the expected shape is set aside with one warning
and the service starts clean: a broken state file must never keep the service from starting.
Format 1 (each group's start time, from when batches followed the clock) is still read and
converted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_FORMAT = 2
_OLD_FORMAT = 1


class StateFileError(ValueError):
    """The state file exists but is unusable; the message says why."""


@dataclass(frozen=True)
class GroupProgress:
    """The batch a group is being served (1-based) and the wall-clock time it moved there;
    `exhausted` once a request came an interval after the last batch began."""

    batch_number: int
    advanced_at: float
    exhausted: bool = False


def load_progress(
    path: Path, n_groups: int, n_batches: int, interval_seconds: float, now: float
) -> dict[int, GroupProgress]:
    """Group number -> progress. Never raises for a bad file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        log.info("no state file at %s: every group starts at batch 1", path)
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        _set_aside(path, f"cannot be read ({exc})")
        return {}
    try:
        groups = parse_state(text, n_batches, interval_seconds, now)
    except StateFileError as exc:
        _set_aside(path, str(exc))
        return {}
    dropped = sorted(g for g in groups if not 1 <= g <= n_groups)
    if dropped:
        log.info("state file %s: ignoring groups %s outside 1..%d", path, dropped, n_groups)
    kept = {g: p for g, p in groups.items() if 1 <= g <= n_groups}
    return {g: _within(p, n_batches, path, g) for g, p in kept.items()}


def parse_state(
    text: str, n_batches: int, interval_seconds: float, now: float
) -> dict[int, GroupProgress]:
    try:
        doc: Any = json.loads(text)
    except ValueError as exc:
        raise StateFileError(f"is not valid JSON ({exc})") from exc
    version = doc.get("format") if isinstance(doc, dict) else None
    if version not in (STATE_FORMAT, _OLD_FORMAT):
        raise StateFileError(f"is not a format-{STATE_FORMAT} state document")
    groups = doc.get("groups")
    if not isinstance(groups, dict):
        raise StateFileError("has no 'groups' object")
    parsed: dict[int, GroupProgress] = {}
    for key, entry in groups.items():
        progress = (
            _parse_entry(entry)
            if version == STATE_FORMAT
            else _from_start(entry, n_batches, interval_seconds, now)
        )
        if not (key.isascii() and key.isdigit()) or progress is None:
            raise StateFileError(f"has an invalid entry for group {key!r}: {entry!r}"[:300])
        parsed[int(key)] = progress
    if version == _OLD_FORMAT:
        log.info(
            "state file is format %d (start times): each group continues on the batch the old "
            "clock rule gives now, and advances one batch per interval from there",
            _OLD_FORMAT,
        )
    return parsed


def _parse_entry(entry: object) -> GroupProgress | None:
    if not isinstance(entry, dict):
        return None
    batch, at, done = entry.get("batch_number"), entry.get("advanced_at"), entry.get("exhausted")
    if type(batch) is not int or batch < 1 or not _is_time(at) or type(done) is not bool:
        return None
    return GroupProgress(batch_number=batch, advanced_at=float(at), exhausted=done)


def _from_start(
    entry: object, n_batches: int, interval_seconds: float, now: float
) -> GroupProgress | None:
    """A format-1 entry (the group's start time) as the progress the old clock rule gives
    now: the best that can be known of it, since the old file never said what was served."""
    started_at = entry.get("started_at") if isinstance(entry, dict) else None
    if not _is_time(started_at):
        return None
    index = int(max(0.0, now - float(started_at)) // interval_seconds)
    if index >= n_batches:
        last = float(started_at) + (n_batches - 1) * interval_seconds
        return GroupProgress(batch_number=n_batches, advanced_at=last, exhausted=True)
    advanced_at = float(started_at) + index * interval_seconds
    return GroupProgress(batch_number=index + 1, advanced_at=advanced_at)


def _within(progress: GroupProgress, n_batches: int, path: Path, group: int) -> GroupProgress:
    # Fewer batches configured than the file knows of: the group has had them all.
    if progress.batch_number <= n_batches:
        return progress
    log.info(
        "state file %s: group %d was on batch %d of a longer dataset; with %d batches it has "
        "been served them all",
        path,
        group,
        progress.batch_number,
        n_batches,
    )
    return GroupProgress(n_batches, progress.advanced_at, exhausted=True)


def save_progress(path: Path, groups: dict[int, GroupProgress]) -> None:
    """Replace the state file atomically; a crash at any point leaves a whole file."""
    doc = {
        "format": STATE_FORMAT,
        "groups": {
            str(g): {
                "batch_number": p.batch_number,
                "advanced_at": p.advanced_at,
                "exhausted": p.exhausted,
            }
            for g, p in sorted(groups.items())
        },
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
