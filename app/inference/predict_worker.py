"""A thread that runs small ONNX predictions for the event loop, several requests per call.

Why: for one row, ONNX Runtime's trees cost about as much as all of the HTTP work around them
(100-150 us for 700 trees against ~130 us for a bare Litestar request; docs/benchmarks.md).
Run on the event loop, they leave the second core idle. Here they run in one thread, which
ONNX Runtime lets go of the GIL while it predicts, so the loop parses, validates and answers
other requests meanwhile. Requests that queue up while a prediction runs are merged into the
next call: one thread hop and one wake-up of the loop for all of them, and the derived features
of several rows computed by numpy as one block.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

from app.covertype import FEATURE_COLUMNS
from app.inference.backends import Answers, Backend, Columns, answers

# At most this many rows go into one merged call: a burst of single rows is answered in one
# prediction, while a request never waits behind more than a couple of milliseconds of trees.
MAX_MERGED_ROWS = 64

# What _take_more returns when the queue is empty (None already means "stop").
_NOTHING = object()


class _Job(NamedTuple):  # a tuple: made once per request, on the event loop
    backend: Backend
    columns: Columns
    rows: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Answers]


class PredictionWorker:
    """Owns one daemon thread, started on first use; `close` ends it."""

    def __init__(self, max_merged_rows: int = MAX_MERGED_ROWS) -> None:
        self._max_rows = max_merged_rows
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    async def answers(self, backend: Backend, columns: Columns) -> Answers:
        """answers(backend, columns), run in the worker thread, maybe with other requests'."""
        self._ensure_started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answers] = loop.create_future()
        rows = len(columns[FEATURE_COLUMNS[0]])
        self._jobs.put(_Job(backend, columns, rows, loop, future))
        return await future

    def close(self) -> None:
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout=10)

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="onnx-predictions", daemon=True
                )
                self._thread.start()

    # --- in the worker thread ---------------------------------------------------------------

    def _serve(self) -> None:
        item = self._jobs.get()
        while item is not None:  # None: close() asked the thread to end
            batch, item = self._take_more(item)
            _run(batch)
            if item is _NOTHING:
                item = self._jobs.get()

    def _take_more(self, first: _Job) -> tuple[list[_Job], _Job | None | object]:
        """The jobs already queued behind `first` for the same model, up to the row limit; and
        the next item to handle: one that did not fit, None (stop), or _NOTHING."""
        batch, rows = [first], first.rows
        while rows < self._max_rows:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return batch, _NOTHING
            if (
                item is None
                or item.backend is not first.backend
                or rows + item.rows > self._max_rows
            ):
                return batch, item
            batch.append(item)
            rows += item.rows
        return batch, _NOTHING


def _merged(batch: Sequence[_Job]) -> Columns:
    if len(batch) == 1:
        return batch[0].columns
    return {
        c: tuple(itertools.chain.from_iterable(job.columns[c] for job in batch))
        for c in FEATURE_COLUMNS
    }


def _run(batch: list[_Job]) -> None:
    try:
        merged = answers(batch[0].backend, _merged(batch))
    except Exception as exc:  # noqa: BLE001 - handed to every request of the call
        _settle(batch, [exc] * len(batch))
        return
    if len(batch) == 1:
        _settle(batch, [merged])
        return
    bounds = list(itertools.accumulate((job.rows for job in batch), initial=0))
    parts: list[Answers | BaseException] = [
        Answers(merged.labels[start:stop], merged.probabilities[start:stop])
        for start, stop in itertools.pairwise(bounds)
    ]
    _settle(batch, parts)


def _settle(batch: list[_Job], outcomes: Sequence[Answers | BaseException]) -> None:
    # One wake-up per event loop (normally there is one), not one per request.
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any]]] = {}
    for job, outcome in zip(batch, outcomes, strict=True):
        by_loop.setdefault(job.loop, []).append((job, outcome))
    for loop, settled in by_loop.items():
        # RuntimeError: that loop has closed, so nobody waits for these answers.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_deliver, settled)


def _deliver(settled: list[tuple[_Job, Answers | BaseException]]) -> None:
    for job, outcome in settled:
        if job.future.done():  # the request was cancelled (client gone) meanwhile
            continue
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)
