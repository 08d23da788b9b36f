"""Everything the inference API asks MLflow: where an alias points, and a version made ready to
serve. Blocking calls (HTTP and disk); the API runs them in worker threads.

Artifacts come through the tracking server's proxy (mlflow-artifacts:/ URIs resolved against
the tracking URI), so this process needs no S3 credentials. Downloads go to a temporary folder
that is removed once the model is in memory: every reload would otherwise leave a copy in /tmp.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app import onnx_model
from app.inference.backends import Backend, OnnxBackend, SklearnBackend
from app.settings import InferenceSettings

log = logging.getLogger(__name__)

# Run params/tags that say what a version was trained on, most specific first. The pipeline's
# names come first; the others keep older or hand-made runs readable.
BATCH_KEYS = ("batch_count", "batches", "batches_used", "n_batches", "batches_covered")
ROW_KEYS = ("train_rows", "rows_used", "n_train_rows", "training_rows", "rows")


class RegistryError(Exception):
    """Base of the reasons a model could not be found or loaded; the message says why."""


class NotFound(RegistryError):
    """The model, version or alias does not exist (yet)."""


class InvalidRequest(RegistryError):
    """MLflow rejected the name, version or alias as malformed."""


class Unreachable(RegistryError):
    """MLflow did not answer (down, refusing, timing out, or failing on its side)."""


class LoadFailed(RegistryError):
    """The version exists but could not be made ready to serve."""


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: str
    run_id: str
    # How it was asked for: "alias production" or "version 3".
    loaded_from: str
    tags: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class LoadedModel:
    """One registered version, ready to answer. Immutable: a swap replaces the whole object,
    so a request that took a reference keeps a consistent model until it finishes."""

    ref: VersionRef
    backend: Backend
    backend_reason: str
    loaded_at: datetime
    metrics: dict[str, float] = field(default_factory=dict)
    trained_batches: int | None = None
    trained_rows: int | None = None
    training_info: dict[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.ref.version


def release_freed_memory() -> None:
    """Hand freed heap back to the OS. Loading a model allocates several times its final size
    (protobuf parsing, onnxruntime building its trees) and a swap frees a whole model; glibc
    keeps such memory otherwise: a 200-tree forest's process stays about 700 MiB larger."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def configure_mlflow_client(settings: InferenceSettings) -> None:
    """MLflow's HTTP client reads its retry and timeout policy (and its telemetry switch) only
    from the environment.
    Called once by the process entry point (not by create_app, so tests and other code in the
    same interpreter keep their own policy); values set by the operator win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.mlflow_http_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.mlflow_http_timeout_seconds))
    # MLflow's client reports usage to its maintainers by default; a serving process has no
    # business calling out (and on the VM nothing outside answers).
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _classify(exc: Exception, what: str) -> RegistryError:
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, RestException):
        code = exc.error_code
        if code == "RESOURCE_DOES_NOT_EXIST" or (
            code == "INVALID_PARAMETER_VALUE" and "not found" in exc.message.lower()
        ):
            return NotFound(f"{what}: {exc.message}")
        if code == "INVALID_PARAMETER_VALUE":
            return InvalidRequest(f"{what}: {exc.message}")
        return Unreachable(f"{what}: MLflow answered {code}: {exc.message}")
    if isinstance(exc, MlflowException):
        return Unreachable(f"{what}: {_short(exc.message)}")
    return Unreachable(f"{what}: {type(exc).__name__}: {_short(str(exc))}")


def _files_missing(exc: Exception) -> bool:
    # MLflow's artifact download wraps each file's HTTP 404 into one MlflowException text.
    text = str(exc)
    return "RESOURCE_DOES_NOT_EXIST" in text or "404 Client Error" in text


def _short(message: str) -> str:
    # urllib3's messages repeat the URL and the pool; the cause at the end is what matters.
    cause = re.search(r"Caused by \w+\((?:.*?: )?(.*)\)\)?$", message)
    if cause:
        return f"{message.split(' failed with exception')[0]} failed: {cause.group(1)}"[:400]
    return message[:400]


def _as_int(value: str) -> int | None:
    value = value.strip()
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if re.fullmatch(r"-?\d+\.0*", value):
        return int(float(value))
    # "1,2,3" or "[1, 2, 3]": a list of batch numbers.
    items = [v for v in re.split(r"[\s,\[\]]+", value) if v]
    if items and all(v.isdigit() for v in items):
        return len(items)
    return None


def _training_facts(
    params: dict[str, str], tags: dict[str, str]
) -> tuple[int | None, int | None, dict[str, str]]:
    info = {
        k: v
        for k, v in {**params, **tags}.items()
        if not k.startswith(("mlflow.", "onnx_")) and re.search(r"batch|rows", k, re.IGNORECASE)
    }

    def first(keys: tuple[str, ...]) -> int | None:
        for key in keys:
            if key in info and (number := _as_int(info[key])) is not None:
                return number
        return None

    return first(BATCH_KEYS), first(ROW_KEYS), info


class ModelRegistry:
    """MLflow calls for one model name. Thread-safe: MlflowClient holds no per-call state."""

    def __init__(self, settings: InferenceSettings) -> None:
        from mlflow.tracking import MlflowClient

        self.settings = settings
        self.name = settings.model_name
        self._uri = settings.mlflow_tracking_uri
        self._client = MlflowClient(tracking_uri=self._uri, registry_uri=self._uri)

    def resolve(self, *, alias: str | None = None, version: str | None = None) -> VersionRef:
        """The registered version an alias points to, or an explicit version."""
        if (alias is None) == (version is None):
            raise ValueError("give exactly one of alias or version")
        what = f"{self.name}@{alias}" if alias else f"{self.name} version {version}"
        try:
            if alias is not None:
                found = self._client.get_model_version_by_alias(self.name, alias)
            else:
                found = self._client.get_model_version(self.name, str(version))
        except Exception as exc:  # noqa: BLE001 - classified into our own errors
            raise _classify(exc, what) from exc
        source = f"alias {alias}" if alias else f"version {version}"
        return VersionRef(
            self.name, str(found.version), str(found.run_id), source, dict(found.tags or {})
        )

    def load(self, ref: VersionRef) -> LoadedModel:
        """Download and prepare `ref` for serving, choosing the backend (see module doc)."""
        what = f"{self.name} version {ref.version}"
        try:
            run = self._client.get_run(ref.run_id)
        except Exception as exc:  # noqa: BLE001
            raise _classify(exc, f"{what}: run {ref.run_id}") from exc
        params, tags = dict(run.data.params), dict(run.data.tags)
        # The pipeline tags both the run and the version; the version's word is the last.
        batches, rows, info = _training_facts(params, {**tags, **ref.tags})
        with tempfile.TemporaryDirectory(prefix="inference-model-") as tmp:
            backend, reason = self._backend(ref, tags, Path(tmp))
        release_freed_memory()
        return LoadedModel(
            ref=ref,
            backend=backend,
            backend_reason=reason,
            loaded_at=datetime.now(UTC),
            metrics={k: float(v) for k, v in run.data.metrics.items()},
            trained_batches=batches,
            trained_rows=rows,
            training_info=info,
        )

    def _backend(self, ref: VersionRef, tags: dict[str, str], tmp: Path) -> tuple[Backend, str]:
        choice = self.settings.backend
        if choice == "sklearn":
            return self._sklearn(ref, tmp), "INFERENCE_BACKEND=sklearn"
        onnx, why_not = self._onnx(ref, tags, tmp)
        if onnx is not None:
            return onnx, why_not
        if choice == "onnx":
            raise LoadFailed(f"INFERENCE_BACKEND=onnx but {why_not}")
        log.warning("%s version %s: serving sklearn: %s", self.name, ref.version, why_not)
        return self._sklearn(ref, tmp), f"sklearn because {why_not}"

    def _onnx(
        self, ref: VersionRef, tags: dict[str, str], tmp: Path
    ) -> tuple[OnnxBackend | None, str]:
        """The ONNX backend and why it is used, or None and why not."""
        status = tags.get("onnx_status")
        if status is not None and status != "ok":
            details = ", ".join(
                f"{k}={v}" for k, v in sorted(tags.items()) if k.startswith("onnx_")
            )
            return None, f"the pipeline did not log an ONNX form ({details})"
        try:
            names = {
                Path(f.path).name
                for f in self._client.list_artifacts(ref.run_id, onnx_model.ARTIFACT_DIR)
            }
        except Exception as exc:  # noqa: BLE001
            raise _classify(exc, f"listing artifacts of run {ref.run_id}") from exc
        if not {onnx_model.MODEL_FILE, onnx_model.VERIFICATION_FILE} <= names:
            return None, f"run {ref.run_id} has no {onnx_model.ARTIFACT_DIR}/ artifacts"
        try:
            folder = Path(
                self._client.download_artifacts(ref.run_id, onnx_model.ARTIFACT_DIR, str(tmp))
            )
        except Exception as exc:  # noqa: BLE001
            raise _classify(exc, f"downloading the ONNX form of run {ref.run_id}") from exc
        try:
            predictor = onnx_model.OnnxPredictor(
                (folder / onnx_model.MODEL_FILE).read_bytes(), self.settings.onnx_threads
            )
            verification = onnx_model.read_verification(folder / onnx_model.VERIFICATION_FILE)
            result = onnx_model.verify(predictor, verification)
            backend = OnnxBackend(predictor)
        except Exception as exc:  # noqa: BLE001 - a broken ONNX file means "serve sklearn"
            return None, f"its ONNX form failed to load or run: {type(exc).__name__}: {exc}"[:500]
        if result.n_rows == 0:
            return None, "the ONNX verification file has no rows"
        if result.n_mismatched_labels:
            return None, (
                f"the ONNX form disagreed with the sklearn labels on {result.n_mismatched_labels}"
                f" of {result.n_rows} verification rows"
            )
        return backend, (
            f"ONNX form reproduced the sklearn model's labels on all {result.n_rows} "
            "verification rows"
        )

    def _sklearn(self, ref: VersionRef, tmp: Path) -> SklearnBackend:
        import mlflow.sklearn
        from mlflow.artifacts import download_artifacts

        try:
            # Resolved here rather than through models:/ URIs, whose resolution reads the
            # process-wide registry URI instead of this client's.
            uri = self._client.get_model_version_download_uri(self.name, ref.version)
            local = download_artifacts(
                artifact_uri=uri, dst_path=str(tmp / "model"), tracking_uri=self._uri
            )
        except Exception as exc:  # noqa: BLE001
            error = _classify(exc, f"downloading {self.name} version {ref.version}")
            # The version exists (it was resolved): missing files are a broken store, which
            # a caller must hear as such (502), not as "no such version" (404).
            if isinstance(error, NotFound) or _files_missing(exc):
                raise LoadFailed(
                    f"{self.name} version {ref.version} could not be loaded: its model files "
                    f"are missing from the artifact store ({error})"
                ) from exc
            raise error from exc
        try:
            pipeline: Any = mlflow.sklearn.load_model(local)
            return SklearnBackend(pipeline)
        except Exception as exc:  # noqa: BLE001
            reason = f"{type(exc).__name__}: {exc}"[:400]
            raise LoadFailed(
                f"{self.name} version {ref.version} could not be loaded: {reason}"
            ) from exc
