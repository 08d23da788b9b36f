"""Which batch each group is on: batch = time since the group's first request // interval + 1.

Groups start on their first /data request, not when the process starts, and their start times
are persisted so a restarted process continues where it was. Wall-clock time is used on
purpose: it is the only clock that means the same thing before and after a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from app.data_api.state import load_starts, save_starts

log = logging.getLogger(__name__)


class AllBatchesServed(Exception):
    """The group has been through every batch; only a restart brings it back to batch 1."""

    def __init__(self, group: int, n_batches: int) -> None:
        super().__init__(f"group {group} has been served all {n_batches} batches")
        self.group = group
        self.n_batches = n_batches


class Schedule:
    def __init__(
        self,
        *,
        state_file: Path,
        n_groups: int,
        n_batches: int,
        interval_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_file = state_file
        self.n_groups = n_groups
        self.n_batches = n_batches
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._starts = load_starts(state_file, n_groups)

    def batch_index(self, group: int) -> int:
        """0-based batch the group is on now; starts the group if this is its first request."""
        now = self._clock()
        started_at = self._starts.get(group)
        if started_at is None:
            started_at = self._starts[group] = now
            self._save()
        # A clock set backwards must not yield a batch before the first.
        index = int(max(0.0, now - started_at) // self.interval_seconds)
        if index >= self.n_batches:
            raise AllBatchesServed(group, self.n_batches)
        return index

    def restart(self, group: int) -> None:
        """Forget the group's start: its next request begins batch 1 again."""
        if self._starts.pop(group, None) is not None:
            self._save()

    def progress(self) -> dict[str, int | str]:
        """Per group: current batch number, or 'not started' / 'all batches served'."""
        now = self._clock()
        out: dict[str, int | str] = {}
        for group in range(1, self.n_groups + 1):
            started_at = self._starts.get(group)
            if started_at is None:
                out[str(group)] = "not started"
                continue
            index = int(max(0.0, now - started_at) // self.interval_seconds)
            out[str(group)] = index + 1 if index < self.n_batches else "all batches served"
        return out

    def _save(self) -> None:
        # Serving goes on if the disk fails (the in-memory state is right); only the progress
        # across a restart is at stake, and the log says so.
        try:
            save_starts(self.state_file, self._starts)
        except OSError:
            log.exception(
                "could not write state file %s: group progress will not survive a restart",
                self.state_file,
            )
