"""The two ways a loaded model answers: its ONNX form (fast) or the sklearn pipeline itself.

Both take plain per-column sequences (one entry per row) and return labels and probabilities
spread over all 7 cover types, so the API never builds a DataFrame on the ONNX path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import pandas as pd

from app.covertype import CATEGORICAL_COLUMNS, COVER_TYPES, NUMERIC_COLUMNS
from app.onnx_model import OnnxPredictor

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

ALL_CLASSES: tuple[int, ...] = tuple(sorted(COVER_TYPES))

Columns = Mapping[str, Sequence[Any]]


class Backend(Protocol):
    name: str
    classes: tuple[int, ...]

    def predict(self, columns: Columns) -> tuple[np.ndarray, np.ndarray]:
        """(labels, probabilities): labels are class numbers; probabilities have one column per
        class in ALL_CLASSES (0 for a class the model never saw)."""
        ...


class Answers(NamedTuple):
    """What /predict answers, as plain Python values ready to encode: the class number of each
    row, and its probabilities (ALL_CLASSES order) rounded to 6 decimals."""

    labels: list[int]
    probabilities: list[list[float]]


def answers(backend: Backend, columns: Columns) -> Answers:
    """backend.predict as Answers. One numpy pass for all rows of the call: converting row by
    row would pay numpy's per-call cost on every request (app.inference.predict_worker merges
    small requests into one call for this too)."""
    labels, probabilities = backend.predict(columns)
    return Answers(labels.tolist(), np.round(probabilities.astype(np.float64), 6).tolist())


def _spread(classes: Sequence[int]) -> np.ndarray | None:
    """Where each of the model's classes goes in ALL_CLASSES; None when the model has them
    all, in order (the usual case, then nothing needs moving)."""
    unknown = set(classes) - set(ALL_CLASSES)
    if unknown:
        raise ValueError(f"model predicts classes {sorted(unknown)} outside 1..7")
    if tuple(classes) == ALL_CLASSES:
        return None
    return np.array([ALL_CLASSES.index(c) for c in classes], dtype=np.intp)


def _widen(probabilities: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
    if positions is None:
        return probabilities
    full = np.zeros((probabilities.shape[0], len(ALL_CLASSES)), dtype=probabilities.dtype)
    full[:, positions] = probabilities
    return full


class OnnxBackend:
    name = "onnx"

    def __init__(self, predictor: OnnxPredictor) -> None:
        self._predictor = predictor
        self.classes = predictor.classes
        self._positions = _spread(self.classes)

    def predict(self, columns: Columns) -> tuple[np.ndarray, np.ndarray]:
        labels, probabilities = self._predictor.run_columns(columns)
        return labels, _widen(probabilities, self._positions)


class SklearnBackend:
    name = "sklearn"

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._class_array = np.asarray(pipeline.classes_)
        self.classes = tuple(int(c) for c in self._class_array)
        self._positions = _spread(self.classes)

    def predict(self, columns: Columns) -> tuple[np.ndarray, np.ndarray]:
        # The pipeline was fitted on a DataFrame with these dtypes (the signature says so).
        data: dict[str, np.ndarray] = {
            c: np.asarray(columns[c], dtype=np.int64) for c in NUMERIC_COLUMNS
        }
        data |= {c: np.asarray(columns[c], dtype=object) for c in CATEGORICAL_COLUMNS}
        probabilities = self._pipeline.predict_proba(pd.DataFrame(data))
        # The same rule as the pipeline's own predict(): the most probable class.
        labels = self._class_array[probabilities.argmax(axis=1)]
        return labels, _widen(probabilities, self._positions)
