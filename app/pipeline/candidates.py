"""The candidate models: each one Pipeline(features, [scaler,] model), seeded.

Defaults were chosen on the course's 10 batches (58,100 rows, 80 % train) for held-out
accuracy at a small serialized size and a fit that keeps a whole pipeline run under a minute
on 2 cores (benchmarks/train_bench.py measures them). A 200-tree forest pickles to hundreds of
MB there; a few fully grown trees keep the forests under the size cap for a point of accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from app.pipeline.features import (
    TERRAIN_STEP,
    Encoding,
    TerrainFeatures,
    build_features,
    categorical_indices,
)
from app.terrain import DERIVED_NAMES, NUMERIC_DERIVED_NAMES

MODEL_STEP = "model"


@dataclass(frozen=True)
class Candidate:
    """A named model recipe; build() gives a fresh, unfitted pipeline."""

    name: str
    make_model: Callable[..., BaseEstimator]
    params: Mapping[str, Any] = field(default_factory=dict)
    scale: bool = False
    encoding: Encoding = "one_hot"
    # Derived features (app.terrain) added in front of the column layout; () adds none.
    derived: tuple[str, ...] = ()

    def build(self) -> Pipeline:
        steps: list[tuple[str, Any]] = []
        if self.derived:
            steps.append((TERRAIN_STEP, TerrainFeatures(self.derived)))
        steps.append(("features", build_features(self.encoding, self.derived)))
        if self.scale:
            steps.append(("scale", StandardScaler()))
        steps.append((MODEL_STEP, self.make_model(**self.params)))
        return Pipeline(steps)

    def with_params(self, **overrides: Any) -> Candidate:
        known = set(self.make_model().get_params())
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"candidate {self.name!r} has no parameter(s) {', '.join(unknown)}")
        return Candidate(
            self.name,
            self.make_model,
            {**self.params, **overrides},
            self.scale,
            self.encoding,
            self.derived,
        )


def _recipes(seed: int, n_jobs: int) -> dict[str, Candidate]:
    boosting = {
        "learning_rate": 0.2,
        "max_iter": 100,
        "max_leaf_nodes": 255,
        "min_samples_leaf": 5,
        "l2_regularization": 1.0,
        "early_stopping": False,
        "max_bins": 255,
        "random_state": seed,
    }
    return {
        # Library defaults underfit here (0.80 where a forest reaches 0.87): it needs more and
        # bigger trees, and some L2, without which multiclass boosting with many leaves
        # diverged (0.59) in our runs. No early stopping: it would hold out 10 % of the rows.
        # On the derived features and category codes (25 columns instead of 65 with one-hot)
        # a fit costs 2.5x less, which pays for more and bigger trees. On that layout 255 bins
        # cost no more CPU than 63 and, with rate 0.2 and leaves of 5+ rows, scored 0.927
        # against 0.919 (docs/benchmarks.md, "Boosting re-tuned"). Fewer, bigger trees rather
        # than more rounds: a single-row ONNX predict walks every tree, and 100 rounds of 255
        # leaves cost a third of 200 rounds of 127 for the same accuracy.
        "hist_gradient_boosting": Candidate(
            "hist_gradient_boosting",
            HistGradientBoostingClassifier,
            boosting,
            encoding="codes",
            derived=DERIVED_NAMES,
        ),
        # Category codes with native categorical splits: not in the default set, because
        # skl2onnx mistranslates categorical splits (see app.pipeline.features).
        "hist_gradient_boosting_native": Candidate(
            "hist_gradient_boosting_native",
            HistGradientBoostingClassifier,
            {**boosting, "categorical_features": categorical_indices(NUMERIC_DERIVED_NAMES)},
            encoding="ordinal",
            derived=NUMERIC_DERIVED_NAMES,
        ),
        # Fully grown trees score best; the tree count is what keeps them small at 10 batches
        # (on the codes layout a RandomForest tree is about 1.1 MB, an ExtraTrees tree 2.8 MB).
        "extra_trees": Candidate(
            "extra_trees",
            ExtraTreesClassifier,
            {"n_estimators": 8, "n_jobs": n_jobs, "random_state": seed},
            encoding="codes",
            derived=DERIVED_NAMES,
        ),
        "random_forest": Candidate(
            "random_forest",
            RandomForestClassifier,
            {"n_estimators": 12, "n_jobs": n_jobs, "random_state": seed},
            encoding="codes",
            derived=DERIVED_NAMES,
        ),
        # A linear model needs the categories one-hot; the derived distances help it too.
        "logistic_regression": Candidate(
            "logistic_regression",
            LogisticRegression,
            {"max_iter": 300, "random_state": seed},
            scale=True,
            derived=NUMERIC_DERIVED_NAMES,
        ),
    }


CANDIDATE_NAMES: tuple[str, ...] = tuple(_recipes(0, 1))


def parse_overrides(raw: str) -> dict[str, dict[str, Any]]:
    """TRAINING_PARAM_OVERRIDES: a JSON object {candidate: {param: value}}."""
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TRAINING_PARAM_OVERRIDES is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
        raise ValueError("TRAINING_PARAM_OVERRIDES must be a JSON object of objects")
    return parsed


def default_candidates(
    names: Sequence[str] | str,
    *,
    seed: int,
    n_jobs: int,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Candidate]:
    """The named recipes in the given order, with per-candidate parameter overrides."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    recipes = _recipes(seed, n_jobs)
    unknown = [n for n in (*names, *(overrides or {})) if n not in recipes]
    if unknown:
        raise ValueError(
            f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(CANDIDATE_NAMES)}"
        )
    if not names:
        raise ValueError("no candidates to train")
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names repeat: {', '.join(names)}")
    return [recipes[n].with_params(**(overrides or {}).get(n, {})) for n in names]


def prepare_for_serving(pipeline: Pipeline) -> Pipeline:
    """The inference API predicts a few rows per request: thread fan-out per call only adds
    latency (a 200-tree forest: 22 ms single-row with n_jobs=1), so fitted models predict
    single-threaded."""
    model = pipeline.named_steps[MODEL_STEP]
    if "n_jobs" in model.get_params():
        model.set_params(n_jobs=1)
    return pipeline
