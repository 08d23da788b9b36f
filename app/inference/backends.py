"""The two ways a loaded model answers: its ONNX form (fast) or the sklearn pipeline itself.

Both take plain per-column sequences (one entry per row) and return labels and probabilities
spread over all 7 cover types, so the API never builds a DataFrame on the ONNX path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

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


def _spread(classes: Sequence[int]) -> np.ndarray:
    unknown = set(classes) - set(ALL_CLASSES)
    if unknown:
        raise ValueError(f"model predicts classes {sorted(unknown)} outside 1..7")
    return np.array([ALL_CLASSES.index(c) for c in classes], dtype=np.intp)


def _widen(probabilities: np.ndarray, positions: np.ndarray) -> np.ndarray:
    if len(positions) == len(ALL_CLASSES) and (positions == np.arange(len(ALL_CLASSES))).all():
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
