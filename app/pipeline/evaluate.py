"""Fit a candidate and measure it on the held-out rows: quality, cost and size."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from app.covertype import COVER_TYPES
from app.pipeline.features import batches_in, split_xy

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

LABELS: list[int] = sorted(COVER_TYPES)
# Rows predicted one at a time for the latency figure; the median damps scheduler noise.
LATENCY_ROWS = 25
MB = 1_000_000


@dataclass(frozen=True)
class Scores:
    """Quality on one set of held-out rows; what promotion compares."""

    accuracy: float
    macro_f1: float
    rows: int

    def get(self, metric: str) -> float:
        return float(getattr(self, metric))


@dataclass(frozen=True)
class Evaluation:
    candidate: str
    scores: Scores
    per_class_f1: dict[int, float]
    # Rows: true class, columns: predicted class, both in LABELS order.
    confusion: list[list[int]]
    fit_seconds: float
    predict_row_ms: float
    predict_batch_seconds: float
    size_bytes: int
    train_rows: int
    batches: list[int]

    @property
    def size_mb(self) -> float:
        return self.size_bytes / MB

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow; per-class F1 as f1_class_<n>."""
        out = {
            "accuracy": self.scores.accuracy,
            "macro_f1": self.scores.macro_f1,
            "fit_seconds": self.fit_seconds,
            "predict_row_ms": self.predict_row_ms,
            "predict_batch_seconds": self.predict_batch_seconds,
            "predict_ms_per_1k_rows": 1000 * 1000 * self.predict_batch_seconds / self.scores.rows,
            "model_size_bytes": float(self.size_bytes),
            "model_size_mb": self.size_mb,
            "train_rows": float(self.train_rows),
            "holdout_rows": float(self.scores.rows),
            "batches": float(len(self.batches)),
        }
        out.update({f"f1_class_{label}": f1 for label, f1 in self.per_class_f1.items()})
        return out


def fit(pipeline: Pipeline, train: pd.DataFrame) -> float:
    """Fit in place; returns wall seconds."""
    x, y = split_xy(train)
    started = time.perf_counter()
    pipeline.fit(x, y)
    return time.perf_counter() - started


def serialized_size(model: Any) -> int:
    """Bytes of the cloudpickle form, the one MLflow stores and every registry load reads."""
    return len(cloudpickle.dumps(model))


def score(model: Any, holdout: pd.DataFrame) -> Scores:
    x, y = split_xy(holdout)
    predicted = model.predict(x)
    return _scores(y, predicted)


def _scores(y: Any, predicted: Any) -> Scores:
    return Scores(
        accuracy=float(accuracy_score(y, predicted)),
        macro_f1=float(f1_score(y, predicted, labels=LABELS, average="macro", zero_division=0)),
        rows=len(y),
    )


def _row_latency_ms(model: Any, x: pd.DataFrame) -> float:
    timings = []
    for i in range(min(LATENCY_ROWS, len(x))):
        row = x.iloc[i : i + 1]
        started = time.perf_counter()
        model.predict(row)
        timings.append(time.perf_counter() - started)
    return 1000 * statistics.median(timings)


def evaluate(
    name: str,
    model: Pipeline,
    fit_seconds: float,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
) -> Evaluation:
    x, y = split_xy(holdout)
    started = time.perf_counter()
    predicted = model.predict(x)
    batch_seconds = time.perf_counter() - started
    per_class = f1_score(y, predicted, labels=LABELS, average=None, zero_division=0)
    matrix = confusion_matrix(y, predicted, labels=LABELS)
    return Evaluation(
        candidate=name,
        scores=_scores(y, predicted),
        per_class_f1={
            label: float(f) for label, f in zip(LABELS, np.asarray(per_class), strict=True)
        },
        confusion=matrix.astype(int).tolist(),
        fit_seconds=fit_seconds,
        predict_row_ms=_row_latency_ms(model, x),
        predict_batch_seconds=batch_seconds,
        size_bytes=serialized_size(model),
        train_rows=len(train),
        batches=batches_in(train),
    )
