"""The registered model: new versions from a run's champion, and the rule that moves the
production alias (names: MLFLOW_REGISTERED_MODEL, MLFLOW_PRODUCTION_ALIAS).

The alias is the only pointer anyone serves from. It moves only when this module has scored
the version it points to *now* (which may be one a user chose by hand in the MLflow UI) on the
same held-out rows as the challenger and the challenger wins under app.pipeline.selection.
Every other outcome, including an exception at any step, leaves it where it was.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import mlflow.sklearn
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from app.pipeline import tracking
from app.pipeline.evaluate import MB, Scores, score, serialized_size
from app.pipeline.features import check_frame
from app.pipeline.selection import compare
from app.settings import MlflowSettings, TrainingSettings

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from app.pipeline.evaluate import Evaluation
    from app.pipeline.run import TrainedRun

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


class UnservableError(Exception):
    """MLflow and the artifact store answered, but the version's model is not there or does
    not load: nobody can serve it, so it must not keep the alias from a servable challenger.
    Anything else (a refused connection, a 5xx) is an outage, not this."""


def _is_missing(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    if isinstance(exc, MlflowException):
        return exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)
    response = getattr(exc, "response", None)  # requests' HTTPError from the artifact proxy
    return getattr(response, "status_code", None) == 404


def _download(name: str, version: str, tmp: str) -> Path:
    try:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))
    except Exception as exc:
        if _is_missing(exc):
            raise UnservableError(f"its artifacts are missing from the store ({exc})") from exc
        raise
    # The proxy lists what the bucket holds: deleted objects download as an empty folder.
    if not (local / "MLmodel").is_file():
        raise UnservableError("its artifacts are missing from the store (no MLmodel file)")
    return local


def _load(local: Path) -> tuple[Any, int]:
    try:
        if "sklearn" in Model.load(local / "MLmodel").flavors:
            model = mlflow.sklearn.load_model(str(local))
            return model, serialized_size(model)
        # A version registered by hand from another flavor still gets a fair comparison.
        size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        return mlflow.pyfunc.load_model(str(local)), size
    except Exception as exc:
        raise UnservableError(f"its model does not load ({type(exc).__name__}: {exc})") from exc


def _rescore(name: str, version: str, holdout: pd.DataFrame) -> _Rescored:
    """Load a registered version and score it on these rows. Its logged metrics are not
    used: they were measured on an older, smaller held-out set. Raises UnservableError when
    the version cannot be served, and anything else when a server is down."""
    with tempfile.TemporaryDirectory(prefix="mlflow-rescore-") as tmp:
        # A registry load downloads the model; keeping it in our own temp dir means it is
        # removed afterwards instead of piling up in /tmp.
        model, size = _load(_download(name, version, tmp))
        try:
            scores = score(model, holdout)
        except Exception as exc:
            raise UnservableError(f"it does not score on the held-out rows ({exc})") from exc
        return _Rescored(scores, size)


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


@dataclass(frozen=True)
class PromotionRule:
    """What a challenger must do to take the alias (app.pipeline.selection.compare)."""

    metric: str
    margin: float
    max_bytes: int

    @classmethod
    def of(cls, settings: TrainingSettings) -> PromotionRule:
        return cls(settings.metric, settings.promotion_margin, int(settings.max_model_mb * MB))


@dataclass
class _Verdict:
    promote: bool
    reason: str
    tags: dict[str, str]
    production: _Rescored | None = None


def _fail(client: MlflowClient, name: str, version: str, reason: str, exc: Exception) -> NoReturn:
    reason = reason[:4000]
    _try_set_tags(client, name, version, {DECISION_TAG: FAILED, REASON_TAG: reason})
    raise PromotionError(reason) from exc


def _replace_unservable(
    client: MlflowClient, name: str, version: str, incumbent: str, why: str, holdout: pd.DataFrame
) -> _Verdict:
    """Production cannot be served: the challenger takes the alias if it can be, proven by
    loading it back from the registry and scoring it like production would have been."""
    log.warning("production version %s of %s is unservable: %s", incumbent, name, why)
    _try_set_tags(client, name, incumbent, {"unservable_reason": why[:4000]})
    try:
        _rescore(name, version, holdout)
    except UnservableError as own:
        reason = f"production version {incumbent} is unservable ({why}), and so is this one ({own})"
        return _Verdict(False, reason, {})
    except Exception as exc:  # noqa: BLE001 - an outage: leave the alias alone
        _fail(client, name, version, f"could not load this version back: {exc}", exc)
    reason = f"production version {incumbent} is unservable ({why}); this version is servable"
    return _Verdict(True, reason, {"promotion_replaced_unservable": incumbent})


def _judge(
    client: MlflowClient,
    name: str,
    alias: str,
    version: str,
    incumbent: str | None,
    challenger: Scores,
    challenger_bytes: int,
    holdout: pd.DataFrame,
    rule: PromotionRule,
) -> _Verdict:
    if challenger_bytes > rule.max_bytes:
        cap = f"model is {challenger_bytes / MB:.2f} MB, over the {rule.max_bytes / MB:.2f} MB cap"
        return _Verdict(False, cap, {})
    if incumbent is None:
        return _Verdict(True, f"no version had alias {alias!r}", {})
    try:
        production = _rescore(name, incumbent, holdout)
    except UnservableError as exc:
        return _replace_unservable(client, name, version, incumbent, str(exc), holdout)
    except Exception as exc:  # noqa: BLE001 - an outage: leave the alias alone
        _fail(
            client, name, version, f"could not re-score production version {incumbent}: {exc}", exc
        )
    metric = rule.metric
    verdict = compare(
        challenger.get(metric),
        challenger_bytes,
        production.scores.get(metric),
        production.size_bytes,
        metric=metric,
        margin=rule.margin,
    )
    tags = {
        f"promotion_production_{metric}": f"{production.scores.get(metric):.6f}",
        f"promotion_challenger_{metric}": f"{challenger.get(metric):.6f}",
        "promotion_holdout_rows": str(production.scores.rows),
    }
    reason = f"against production version {incumbent} re-scored now: {verdict.reason}"
    return _Verdict(verdict.wins, reason, tags, production)


def _move_alias(
    client: MlflowClient, name: str, alias: str, version: str, incumbent: str | None
) -> str | None:
    """Point the alias at the version unless someone moved it meanwhile; returns why not."""
    now = current_version(client, name, alias)
    now_version = str(now.version) if now is not None else None
    if now_version != incumbent:
        return (
            f"alias {alias!r} moved from version {incumbent} to {now_version} "
            "while this version was being evaluated; the manual choice is kept"
        )
    try:
        client.set_registered_model_alias(name, alias, version)
    except Exception as exc:  # noqa: BLE001
        _fail(client, name, version, f"moving the alias failed: {exc}", exc)
    return None


def decide_and_promote(
    client: MlflowClient,
    *,
    name: str,
    alias: str,
    version: str,
    challenger: Scores,
    challenger_bytes: int,
    holdout: pd.DataFrame,
    rule: PromotionRule,
) -> PromotionDecision:
    current = current_version(client, name, alias)
    incumbent = str(current.version) if current is not None else None
    if incumbent == str(version):
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
    verdict = _judge(
        client, name, alias, str(version), incumbent, challenger, challenger_bytes, holdout, rule
    )
    if verdict.promote:
        moved_meanwhile = _move_alias(client, name, alias, str(version), incumbent)
        if moved_meanwhile:
            verdict.promote, verdict.reason = False, moved_meanwhile
    tags = {
        **verdict.tags,
        DECISION_TAG: PROMOTED if verdict.promote else NOT_PROMOTED,
        REASON_TAG: verdict.reason,
    }
    if incumbent is not None:
        tags[COMPARED_TAG] = incumbent
    _set_tags(client, name, str(version), tags)
    if verdict.promote:
        log.info("alias %s of %s -> version %s (%s)", alias, name, version, verdict.reason)
    else:
        log.info("version %s of %s not promoted: %s", version, name, verdict.reason)
    return PromotionDecision(
        promoted=verdict.promote,
        reason=verdict.reason,
        version=str(version),
        compared_to=incumbent,
        challenger=challenger,
        production=verdict.production.scores if verdict.production is not None else None,
    )


# --- registration: the champion of a run becomes a version, then the rule above decides ---


@dataclass(frozen=True)
class Registration:
    """What register_and_promote did: the decision, the version and the seconds it took."""

    decision: PromotionDecision
    version: str
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return self.decision.to_dict() | {"timings": self.timings}


def _existing_version(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The version already registered from this champion run (a retried step), if any."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def _register_champion(client: MlflowClient, name: str, run: TrainedRun) -> ModelVersion:
    """A new version from the run's champion, once: a retried step finds it registered."""
    version = _existing_version(client, name, run.champion_run_id)
    if version is not None:
        return version
    tags = {
        **run.tags(),
        "candidate": run.champion,
        "parent_run_id": run.parent_run_id,
        "accuracy": f"{run.accuracy:.6f}",
        "macro_f1": f"{run.macro_f1:.6f}",
        "model_size_bytes": str(run.size_bytes),
    }
    return register(run.model_uri, name, tags=tags)


def _challenger(run: TrainedRun, holdout: pd.DataFrame, known: _Rescored | None) -> _Rescored:
    """The champion's scores on these held-out rows and its size: as given by a caller that
    trained it in this process, else from the logged model (what the registry serves)."""
    if known is None:
        with tempfile.TemporaryDirectory(prefix="mlflow-challenger-") as tmp:
            model = mlflow.sklearn.load_model(run.model_uri, dst_path=tmp)
        known = _Rescored(score(model, holdout), serialized_size(model))
    if known.scores.rows != run.holdout_rows:
        log.warning(
            "held-out rows changed since training (%d -> %d); both models are scored on "
            "the %d rows given now",
            run.holdout_rows,
            known.scores.rows,
            known.scores.rows,
        )
    return known


def register_and_promote(
    run: TrainedRun,
    holdout: pd.DataFrame,
    *,
    mlflow_settings: MlflowSettings | None = None,
    training_settings: TrainingSettings | None = None,
    challenger: Evaluation | None = None,
) -> Registration:
    """Register the run's champion and move the alias only if it wins (decide_and_promote).

    Both it and production are scored on `holdout`, so they are judged on the same rows even
    when this runs in another process than training did (pass `challenger` when it did not).
    Safe to retry: a champion run is registered once."""
    mlflow_settings = mlflow_settings or MlflowSettings()
    settings = training_settings or TrainingSettings()
    check_frame(holdout, "holdout")
    name = mlflow_settings.registered_model_name
    known = _Rescored(challenger.scores, challenger.size_bytes) if challenger else None
    timings: dict[str, float] = {}
    with tracking.session(mlflow_settings.tracking_uri) as client:
        step = time.perf_counter()
        version = str(_register_champion(client, name, run).version)
        timings["register"] = time.perf_counter() - step
        step = time.perf_counter()
        scored = _challenger(run, holdout, known)
        decision = decide_and_promote(
            client,
            name=name,
            alias=mlflow_settings.production_alias,
            version=version,
            challenger=scored.scores,
            challenger_bytes=scored.size_bytes,
            holdout=holdout,
            rule=PromotionRule.of(settings),
        )
        timings["promote"] = time.perf_counter() - step
        for key, value in {
            "model_version": version,
            DECISION_TAG: PROMOTED if decision.promoted else NOT_PROMOTED,
            REASON_TAG: decision.reason[:5000],
        }.items():
            client.set_tag(run.parent_run_id, key, value)
    return Registration(decision, version, timings)
