"""app.inference.predict_worker: small requests merged into one prediction, each answered
with its own rows, errors handed to every request of the call. No model or server needed:
the backends here answer from the input (class = Elevation % 7 + 1)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from app.covertype import FEATURE_COLUMNS
from app.inference.backends import ALL_CLASSES, Answers, Columns
from app.inference.predict_worker import PredictionWorker


class EchoBackend:
    """Answers class Elevation % 7 + 1 with probability 1; records each call's row count. The
    first call waits for `release`, so requests sent meanwhile queue up behind it."""

    name = "onnx"
    classes = ALL_CLASSES

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def predict(self, columns: Columns) -> tuple[np.ndarray, np.ndarray]:
        self.started.set()
        self.release.wait(10)
        elevation = np.asarray(columns["Elevation"], dtype=np.int64)
        self.calls.append(len(elevation))
        if self.fail:
            raise RuntimeError("the model broke")
        labels = elevation % 7 + 1
        probabilities = np.zeros((len(labels), 7), dtype=np.float32)
        probabilities[np.arange(len(labels)), labels - 1] = 1.0
        return labels, probabilities


def columns(*elevations: int) -> Columns:
    return {
        c: tuple(elevations) if c == "Elevation" else (0,) * len(elevations)
        for c in FEATURE_COLUMNS
    }


def expected(*elevations: int) -> Answers:
    labels = [e % 7 + 1 for e in elevations]
    return Answers(labels, [[1.0 if k == label else 0.0 for k in ALL_CLASSES] for label in labels])


async def _queued_behind_first(
    backend: EchoBackend, worker: PredictionWorker, later: list[Columns]
) -> list:
    first = asyncio.create_task(worker.answers(backend, columns(2000)))
    await asyncio.to_thread(backend.started.wait, 10)
    rest = [asyncio.create_task(worker.answers(backend, c)) for c in later]
    await asyncio.sleep(0.05)  # all of them in the queue before the first call returns
    backend.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_requests_queued_meanwhile_share_one_call_and_get_their_own_rows() -> None:
    backend, worker = EchoBackend(), PredictionWorker(max_merged_rows=64)
    later = [columns(2001), columns(2002, 2003, 2004), columns(2005)]
    try:
        results = asyncio.run(_queued_behind_first(backend, worker, later))
    finally:
        worker.close()
    assert backend.calls == [1, 5]
    assert results == [expected(2000), expected(2001), expected(2002, 2003, 2004), expected(2005)]


def test_a_call_never_exceeds_the_row_limit() -> None:
    backend, worker = EchoBackend(), PredictionWorker(max_merged_rows=4)
    later = [columns(2001, 2002), columns(2003, 2004), columns(2005)]
    try:
        results = asyncio.run(_queued_behind_first(backend, worker, later))
    finally:
        worker.close()
    assert backend.calls == [1, 4, 1]
    assert results[3] == expected(2005)


def test_an_error_reaches_every_request_of_the_call() -> None:
    backend, worker = EchoBackend(fail=True), PredictionWorker()
    try:
        results = asyncio.run(_queued_behind_first(backend, worker, [columns(1), columns(2)]))
    finally:
        worker.close()
    assert len(results) == 3
    assert all(isinstance(r, RuntimeError) and str(r) == "the model broke" for r in results)


def test_close_ends_the_thread_and_a_later_request_starts_another() -> None:
    backend, worker = EchoBackend(), PredictionWorker()
    backend.release.set()
    assert asyncio.run(worker.answers(backend, columns(7))) == expected(7)
    worker.close()
    assert not any(t.name == "onnx-predictions" and t.is_alive() for t in threading.enumerate())
    try:
        assert asyncio.run(worker.answers(backend, columns(8))) == expected(8)
    finally:
        worker.close()


@pytest.mark.parametrize("rows", [1, 3])
def test_models_are_never_mixed_in_one_call(rows: int) -> None:
    first, second, worker = EchoBackend(), EchoBackend(), PredictionWorker()
    second.release.set()

    async def both() -> list:
        a = asyncio.create_task(worker.answers(first, columns(1)))
        await asyncio.to_thread(first.started.wait, 10)
        b = asyncio.create_task(worker.answers(second, columns(*range(10, 10 + rows))))
        c = asyncio.create_task(worker.answers(first, columns(2)))
        await asyncio.sleep(0.05)
        first.release.set()
        return await asyncio.gather(a, b, c)

    try:
        results = asyncio.run(both())
    finally:
        worker.close()
    assert first.calls == [1, 1] and second.calls == [rows]
    assert results == [expected(1), expected(*range(10, 10 + rows)), expected(2)]
