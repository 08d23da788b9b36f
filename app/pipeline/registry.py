"""Registered model `forest-cover`: new versions, and the rule that moves alias `production`.

The alias is the only pointer anyone serves from. It moves only when this module has scored
the version it points to *now* (which may be one a user chose by hand in the MLflow UI) on the
same held-out rows as the challenger and the challenger wins under app.pipeline.selection.
Every other outcome, including an exception at any step, leaves it where it was.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import mlflow.sklearn
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from app.pipeline.evaluate import MB, Scores, score, serialized_size
from app.pipeline.selection import compare

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

DECISION_TAG = "promotion_decision"
REASON_TAG = "promotion_reason"
COMPARED_TAG = "promotion_compared_to_version"
PROMOTED = "promoted"
NOT_PROMOTED = "not_promoted"
FAILED = "failed"


class PromotionError(RuntimeError):
    """Promotion could not be decided or carried out; the alias was left where it was."""


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    reason: str
    version: str
    # The version the alias pointed to when the decision was made (None: no alias yet).
    compared_to: str | None
    challenger: Scores
    production: Scores | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def current_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version the alias points to now, or None when the alias or the model is absent."""
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    # Asking for the alias directly answers INVALID_PARAMETER_VALUE when it is unset, which
    # cannot be told apart from a real error; the model's alias map can.
    version = registered.aliases.get(alias)
    if version is None:
        return None
    return client.get_model_version(name, str(version))


def register(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    version = mlflow.register_model(model_uri, name, tags=tags)
    log.info("registered %s version %s from %s", name, version.version, model_uri)
    return version


@dataclass(frozen=True)
class _Rescored:
    scores: Scores
    size_bytes: int


def _rescore(name: str, version: str, holdout: pd.DataFrame) -> _Rescored:
    """Load a registered version and score it on these rows. Its logged metrics are not
    used: they were measured on an older, smaller held-out set."""
    with tempfile.TemporaryDirectory(prefix="mlflow-rescore-") as tmp:
        # A registry load downloads the model; keeping it in our own temp dir means it is
        # removed afterwards instead of piling up in /tmp.
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))
        model: Any
        if "sklearn" in Model.load(local / "MLmodel").flavors:
            model = mlflow.sklearn.load_model(str(local))
            size = serialized_size(model)
        else:
            # A version registered by hand from another flavor still gets a fair comparison.
            model = mlflow.pyfunc.load_model(str(local))
            size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        return _Rescored(score(model, holdout), size)


def _set_tags(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _try_set_tags(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    """Record a failure on the version when the server still answers; the error that caused
    it is what gets raised either way."""
    try:
        _set_tags(client, name, version, tags)
    except Exception:  # noqa: BLE001
        log.warning("could not tag version %s of %s with %s", version, name, tags)


def decide_and_promote(
    client: MlflowClient,
    *,
    name: str,
    alias: str,
    version: str,
    challenger: Scores,
    challenger_bytes: int,
    holdout: pd.DataFrame,
    metric: str,
    margin: float,
    max_bytes: int,
) -> PromotionDecision:
    incumbent = current_version(client, name, alias)
    incumbent_version = incumbent.version if incumbent is not None else None
    production: _Rescored | None = None

    if str(incumbent_version) == str(version):
        # A retried step whose first attempt moved the alias (or a user who chose this
        # version already): it is production, nothing to move or re-tag.
        return PromotionDecision(
            promoted=True,
            reason=f"alias {alias!r} already points to this version",
            version=str(version),
            compared_to=str(version),
            challenger=challenger,
            production=None,
        )
    if challenger_bytes > max_bytes:
        promote, reason = (
            False,
            f"model is {challenger_bytes / MB:.2f} MB, over the {max_bytes / MB:.2f} MB cap",
        )
    elif incumbent is None:
        promote, reason = True, f"no version had alias {alias!r}"
    else:
        try:
            production = _rescore(name, str(incumbent_version), holdout)
        except Exception as exc:
            reason = f"could not re-score production version {incumbent_version}: {exc}"[:4000]
            _try_set_tags(client, name, version, {DECISION_TAG: FAILED, REASON_TAG: reason})
            raise PromotionError(reason) from exc
        verdict = compare(
            challenger.get(metric),
            challenger_bytes,
            production.scores.get(metric),
            production.size_bytes,
            metric=metric,
            margin=margin,
        )
        promote = verdict.wins
        reason = f"against production version {incumbent_version} re-scored now: {verdict.reason}"

    tags = {DECISION_TAG: PROMOTED if promote else NOT_PROMOTED, REASON_TAG: reason}
    if incumbent_version is not None:
        tags[COMPARED_TAG] = str(incumbent_version)
    if production is not None:
        tags[f"promotion_production_{metric}"] = f"{production.scores.get(metric):.6f}"
        tags[f"promotion_challenger_{metric}"] = f"{challenger.get(metric):.6f}"
        tags["promotion_holdout_rows"] = str(production.scores.rows)

    if promote:
        now = current_version(client, name, alias)
        now_version = now.version if now is not None else None
        if str(now_version) != str(incumbent_version):
            # Someone moved the alias while we were scoring: their choice stands.
            promote = False
            tags[DECISION_TAG] = NOT_PROMOTED
            tags[REASON_TAG] = (
                f"alias {alias!r} moved from version {incumbent_version} to {now_version} "
                "while this version was being evaluated; the manual choice is kept"
            )

    _set_tags(client, name, version, tags)
    if promote:
        try:
            client.set_registered_model_alias(name, alias, version)
        except Exception as exc:
            failed = {DECISION_TAG: FAILED, REASON_TAG: f"moving the alias failed: {exc}"[:4000]}
            _try_set_tags(client, name, version, failed)
            raise PromotionError(f"moving alias {alias!r} to version {version} failed") from exc
        log.info("alias %s of %s -> version %s (%s)", alias, name, version, reason)
    else:
        log.info("version %s of %s not promoted: %s", version, name, tags[REASON_TAG])
    return PromotionDecision(
        promoted=promote,
        reason=tags[REASON_TAG],
        version=str(version),
        compared_to=str(incumbent_version) if incumbent_version is not None else None,
        challenger=challenger,
        production=production.scores if production is not None else None,
    )
