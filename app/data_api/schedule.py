"""Which batch each group is on: it advances by one when a request comes at least the interval
after the group's previous advance, as the course's own server does.

Time alone never moves a group: a client that stays away for an hour finds the batch after
the one it last saw, not the one an hour of wall-clock time would have reached, so it misses
nothing. A group starts at batch 1 on its first /data request. The progress is persisted on
every change, so a restarted process continues where it was. Wall-clock time is used on
purpose: it is the only clock that means the same thing before and after a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from app.data_api.state import GroupProgress, load_progress, save_progress

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
        self._groups = load_progress(state_file, n_groups, n_batches, interval_seconds, now=clock())

    def batch_index(self, group: int) -> int:
        """0-based batch to serve the group now, advancing it by at most one batch.

        Raises AllBatchesServed once a request comes an interval after the last batch began
        (so the last batch, like every other, is served for a whole interval).
        """
        now = self._clock()
        progress = self._groups.get(group)
        if progress is None:
            self._groups[group] = GroupProgress(batch_number=1, advanced_at=now)
            self._save()
            return 0
        if progress.exhausted:
            raise AllBatchesServed(group, self.n_batches)
        if now < progress.advanced_at:
            # The clock was set back: count the interval from now, or the group would stall
            # for as long as the clock jumped.
            self._groups[group] = GroupProgress(progress.batch_number, now)
            self._save()
        elif now - progress.advanced_at >= self.interval_seconds:
            if progress.batch_number >= self.n_batches:
                self._groups[group] = GroupProgress(progress.batch_number, now, exhausted=True)
                self._save()
                raise AllBatchesServed(group, self.n_batches)
            self._groups[group] = GroupProgress(progress.batch_number + 1, now)
            self._save()
        return self._groups[group].batch_number - 1

    def restart(self, group: int) -> None:
        """Forget the group's progress: its next request begins batch 1 again."""
        if self._groups.pop(group, None) is not None:
            self._save()

    def progress(self) -> dict[str, int | str]:
        """Per group: the batch it was last served, or 'not started' / 'all batches served'."""
        out: dict[str, int | str] = {}
        for group in range(1, self.n_groups + 1):
            progress = self._groups.get(group)
            if progress is None:
                out[str(group)] = "not started"
            elif progress.exhausted:
                out[str(group)] = "all batches served"
            else:
                out[str(group)] = progress.batch_number
        return out

    def _save(self) -> None:
        # Serving goes on if the disk fails (the in-memory state is right); only the progress
        # across a restart is at stake, and the log says so.
        try:
            save_progress(self.state_file, self._groups)
        except OSError:
            log.exception(
                "could not write state file %s: group progress will not survive a restart",
                self.state_file,
            )
