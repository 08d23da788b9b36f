"""Every registered version of the model, read from MLflow's REST API.

The UI's venv carries no MLflow client: three public REST calls (registered-models/get,
model-versions/search, runs/get) give what the model page shows. Held-out scores come from the
version tags the pipeline writes (accuracy, macro_f1, promotion_decision, ...); a version
registered by other means falls back to its run's metrics of the same names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from app.settings import UiSettings
from ui.backend import BackendError, http_call, unreachable

SERVICE = "MLflow"
SCORE_KEYS = ("accuracy", "macro_f1")
# The REST API's largest page; paging covers the rest.
PAGE_SIZE = 1000


@dataclass(frozen=True)
class VersionSummary:
    version: int
    created_at: datetime | None
    run_id: str | None
    status: str
    aliases: tuple[str, ...]
    accuracy: float | None
    macro_f1: float | None
    # promoted / not_promoted / failed (the pipeline's tag), None when not decided by it.
    decision: str | None
    reason: str | None
    batches: int | None
    train_rows: int | None
    tags: dict[str, str] = field(repr=False, default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"


@dataclass(frozen=True)
class Registry:
    name: str
    # False: MLflow answered, but no model of that name is registered yet.
    exists: bool
    versions: tuple[VersionSummary, ...]
    aliases: dict[str, int]


class RegistryClient:
    def __init__(self, settings: UiSettings) -> None:
        self.base_url = settings.mlflow_tracking_uri.rstrip("/")
        self.name = settings.model_name
        self._timeout = (settings.http_connect_timeout, settings.http_read_timeout)
        # MLflow's basic-auth app: the UI's own read-only account.
        self._auth = (
            (settings.mlflow_username, settings.mlflow_password or "")
            if settings.mlflow_username
            else None
        )

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        return http_call(
            SERVICE,
            self.base_url,
            lambda: requests.get(
                f"{self.base_url}/api/2.0/mlflow/{path}",
                params=params,
                auth=self._auth,
                timeout=self._timeout,
            ),
        )

    def registry(self) -> Registry:
        """The model's versions (ascending) with their scores, decisions and aliases."""
        try:
            response = requests.get(
                f"{self.base_url}/api/2.0/mlflow/registered-models/get",
                params={"name": self.name},
                auth=self._auth,
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            raise unreachable(SERVICE, self.base_url, exc) from None
        if response.status_code == 404 and _error_code(response) == "RESOURCE_DOES_NOT_EXIST":
            return Registry(self.name, exists=False, versions=(), aliases={})
        model = http_call(SERVICE, self.base_url, lambda: response).get("registered_model", {})
        aliases = {a["alias"]: int(a["version"]) for a in model.get("aliases", [])}
        by_version: dict[int, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(version, []).append(alias)
        summaries = [
            self._summary(raw, tuple(sorted(by_version.get(int(raw["version"]), []))))
            for raw in self._search_versions()
        ]
        return Registry(
            self.name,
            exists=True,
            versions=tuple(sorted(summaries, key=lambda v: v.version)),
            aliases=aliases,
        )

    def _search_versions(self) -> list[dict[str, Any]]:
        if "'" in self.name:
            raise BackendError(SERVICE, f"cannot search for a model name with a quote: {self.name}")
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"filter": f"name='{self.name}'", "max_results": PAGE_SIZE}
        while True:
            page = self._get("model-versions/search", params)
            found.extend(page.get("model_versions", []))
            token = page.get("next_page_token")
            if not token:
                return found
            params = {**params, "page_token": token}

    def _run_metrics(self, run_id: str) -> dict[str, float]:
        run = self._get("runs/get", {"run_id": run_id}).get("run", {})
        return {m["key"]: float(m["value"]) for m in run.get("data", {}).get("metrics", [])}

    def _summary(self, raw: dict[str, Any], aliases: tuple[str, ...]) -> VersionSummary:
        tags = {t["key"]: t.get("value", "") for t in raw.get("tags", [])}
        scores = {key: _float(tags.get(key)) for key in SCORE_KEYS}
        run_id = raw.get("run_id") or None
        if run_id and any(value is None for value in scores.values()):
            metrics = self._run_metrics(run_id)
            scores = {
                key: scores[key] if scores[key] is not None else metrics.get(key) for key in scores
            }
        created = raw.get("creation_timestamp")
        return VersionSummary(
            version=int(raw["version"]),
            created_at=datetime.fromtimestamp(int(created) / 1000, UTC) if created else None,
            run_id=run_id,
            status=str(raw.get("status", "")),
            aliases=aliases,
            accuracy=scores["accuracy"],
            macro_f1=scores["macro_f1"],
            decision=tags.get("promotion_decision") or None,
            reason=tags.get("promotion_reason") or None,
            batches=_int(tags.get("batch_count")) or _batch_count(tags.get("batches")),
            train_rows=_int(tags.get("train_rows")),
            tags=tags,
        )


def _error_code(response: requests.Response) -> str | None:
    """MLflow's error_code; None for an answer that is not MLflow's (a wrong URL, a proxy)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error_code") if isinstance(body, dict) else None


def _float(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def _batch_count(value: str | None) -> int | None:
    """'1,2,3' (the pipeline's batches tag) -> 3."""
    if not value:
        return None
    items = [v for v in value.replace(" ", "").split(",") if v]
    return len(items) if all(v.isdigit() for v in items) else None
