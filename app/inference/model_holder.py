"""The model being served, and the watcher that follows the registry alias.

`current` is replaced as a whole (one attribute assignment) and never mutated: a request reads
it once and answers every row with that object, so a swap in the middle of a request changes
nothing for it. A failed load leaves `current` alone and records why; /model then names the
version the alias points to, that it could not be loaded, and the version still serving
(`notice`), so an alias moved to a version whose artifacts are gone never takes the API down.

With several worker processes (INFERENCE_WORKERS), an explicit reload reaches only the process
that got the request. That process writes what it now serves from (alias or pinned version) to
the settings' target file, and every other process applies the same reload within
TARGET_CHECK_SECONDS, so a pin never answers from one version here and another there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import anyio.to_thread

from app.inference.registry import (
    LoadedModel,
    ModelRegistry,
    RegistryError,
    VersionRef,
    release_freed_memory,
)
from app.inference.schemas import ModelInfo
from app.settings import InferenceSettings

log = logging.getLogger(__name__)

# After a version fails to load, the watcher waits before trying that same version again,
# doubling up to this cap: a broken 400 MB model is not downloaded every few seconds.
MAX_RETRY_DELAY_SECONDS = 300.0
# How often a worker process looks at the shared target file (one stat call): how long the
# other processes may still answer from the previous target after an explicit reload.
TARGET_CHECK_SECONDS = 0.5


@dataclass
class _Failure:
    version: str
    count: int
    retry_at: float


class ModelHolder:
    def __init__(self, settings: InferenceSettings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.current: LoadedModel | None = None
        self.alias: str = settings.model_alias
        self.pinned_version: str | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.last_check_at: datetime | None = None
        # The version the followed alias pointed to when the watcher last asked.
        self.alias_version: str | None = None
        self._failure: _Failure | None = None
        # Why the last version that failed to load did (cleared by a successful swap).
        self._failure_reason: str | None = None
        self._lock = asyncio.Lock()
        # The shared target this process last applied or wrote (see _sync_target).
        self._target_seen: bytes | None = None

    # --- state changes ----------------------------------------------------------------------

    def _error(self, message: str) -> None:
        self.last_error, self.last_error_at = message, datetime.now(UTC)

    async def _swap(self, model: LoadedModel) -> None:
        previous = self.current
        self.current = model
        self.last_error = self.last_error_at = None
        self._failure = self._failure_reason = None
        log.info(
            "serving %s version %s (%s; backend %s: %s)%s",
            model.ref.name,
            model.version,
            model.ref.loaded_from,
            model.backend.name,
            model.backend_reason,
            f", replacing version {previous.version}" if previous else "",
        )
        if previous is not None:
            # The old model is garbage once the requests holding it finish; most often now.
            del previous
            await anyio.to_thread.run_sync(release_freed_memory)

    async def _load(self, ref: VersionRef) -> LoadedModel:
        # Loading blocks (downloads, unpickling, building the ONNX session): a worker thread
        # keeps the event loop answering requests with the old model meanwhile.
        return await anyio.to_thread.run_sync(self.registry.load, ref, abandon_on_cancel=True)

    async def _resolve(self, *, alias: str | None = None, version: str | None = None) -> VersionRef:
        return await anyio.to_thread.run_sync(
            lambda: self.registry.resolve(alias=alias, version=version), abandon_on_cancel=True
        )

    # --- the watcher --------------------------------------------------------------------------

    async def check(self) -> None:
        """One watcher round: load the alias's version if it is not the one being served.
        Never raises; problems go to last_error and the log."""
        async with self._lock:
            self.last_check_at = datetime.now(UTC)
            if self.pinned_version is not None:
                return
            try:
                ref = await self._resolve(alias=self.alias)
            except RegistryError as exc:
                self._error(str(exc))
                log.warning("watcher: %s", exc)
                return
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any surprise
                self._error(f"{type(exc).__name__}: {exc}")
                log.exception("watcher: unexpected error asking MLflow")
                return
            self.alias_version = ref.version
            if self.current is not None and self.current.version == ref.version:
                self.last_error = self.last_error_at = None
                return
            failure = self._failure
            if failure and failure.version == ref.version and time.monotonic() < failure.retry_at:
                return
            try:
                model = await self._load(ref)
            except Exception as exc:  # noqa: BLE001 - RegistryError, or a surprise while loading
                if not isinstance(exc, RegistryError):
                    log.exception("watcher: unexpected error loading version %s", ref.version)
                    exc = RegistryError(f"version {ref.version}: {type(exc).__name__}: {exc}")
                count = failure.count + 1 if failure and failure.version == ref.version else 1
                delay = min(self.settings.poll_interval_seconds * 2**count, MAX_RETRY_DELAY_SECONDS)
                self._failure = _Failure(ref.version, count, time.monotonic() + delay)
                self._failure_reason = str(exc)
                self._error(str(exc))
                log.warning("watcher: keeping %s: %s", self._serving(), exc)
                return
            await self._swap(model)

    async def run_watcher(self) -> None:
        if self.settings.target_file is None:
            while True:
                await self.check()
                await asyncio.sleep(self.settings.poll_interval_seconds)
        next_check = 0.0
        while True:
            await self._sync_target()
            if time.monotonic() >= next_check:
                await self.check()
                next_check = time.monotonic() + self.settings.poll_interval_seconds
            await asyncio.sleep(min(TARGET_CHECK_SECONDS, self.settings.poll_interval_seconds))

    # --- the target shared by the worker processes ----------------------------------------

    def _read_target(self) -> bytes | None:
        try:
            with open(self.settings.target_file or "", "rb") as target:
                return target.read()
        except FileNotFoundError:
            return None

    def _write_target(self) -> None:
        """Record this process's target for the others: atomically, so none reads half."""
        path = self.settings.target_file
        if path is None:
            return
        body = json.dumps(
            {"alias": self.alias, "version": self.pinned_version, "written_ns": time.time_ns()}
        ).encode()
        temporary = f"{path}.{os.getpid()}"
        with open(temporary, "wb") as target:
            target.write(body)
        os.replace(temporary, path)
        self._target_seen = body

    async def _sync_target(self) -> None:
        """Apply a reload another worker process made (never raises: failures are recorded
        like the watcher's, and the target is not tried again until it changes)."""
        body = self._read_target()
        if body is None or body == self._target_seen:
            return
        self._target_seen = body
        try:
            target = json.loads(body)
            await self.reload(alias=target["alias"], version=target["version"], share=False)
        except (RegistryError, ValueError, KeyError, TypeError) as exc:
            log.warning("keeping %s: another worker's reload did not apply here: %s",
                        self._serving(), exc)  # fmt: skip

    def _serving(self) -> str:
        return f"version {self.current.version}" if self.current else "no model"

    # --- explicit reloads ---------------------------------------------------------------------

    async def reload(
        self, *, alias: str | None = None, version: str | None = None, share: bool = True
    ) -> tuple[Literal["loaded", "unchanged"], LoadedModel]:
        """Load now. A version pins it (the watcher then waits until the next reload without
        one); an alias, or nothing (the configured alias), makes the watcher follow it.
        Raises RegistryError (after recording it) when nothing could be loaded. `share`: tell
        the API's other worker processes (the target file) once it has succeeded."""
        async with self._lock:
            self.last_check_at = datetime.now(UTC)
            try:
                if version is not None:
                    ref = await self._resolve(version=version)
                else:
                    ref = await self._resolve(alias=alias or self.settings.model_alias)
                current = self.current
                if current is not None and current.version == ref.version:
                    outcome: Literal["loaded", "unchanged"] = "unchanged"
                    model = current
                else:
                    model = await self._load(ref)
                    outcome = "loaded"
            except RegistryError as exc:
                self._error(str(exc))
                log.warning("reload: keeping %s: %s", self._serving(), exc)
                raise
            except Exception as exc:
                log.exception("reload: unexpected error; keeping %s", self._serving())
                error = RegistryError(f"{type(exc).__name__}: {exc}")
                self._error(str(error))
                raise error from exc
            if version is not None:
                self.pinned_version = ref.version
            else:
                self.pinned_version = None
                self.alias = alias or self.settings.model_alias
                self.alias_version = ref.version
            if outcome == "loaded":
                await self._swap(model)
            else:
                self.last_error = self.last_error_at = None
            if share:
                self._write_target()
            return outcome, model

    # --- what /model and /ready say -----------------------------------------------------------

    def waiting_reason(self) -> str:
        target = f"version {self.pinned_version}" if self.pinned_version else f"alias {self.alias}"
        why = f"; last error: {self.last_error}" if self.last_error else ""
        return (
            f"no model loaded yet: waiting for {self.settings.model_name} {target} in MLflow "
            f"({self.settings.mlflow_tracking_uri}), retrying every "
            f"{self.settings.poll_interval_seconds:g}s{why}"
        )

    def notice(self) -> str | None:
        """Set when the served version is not the one the followed alias points to, and why."""
        model, target = self.current, self.alias_version
        if self.pinned_version is not None or target is None:
            return None
        if model is not None and model.version == target:
            return None
        failure = self._failure
        why = (
            f", which could not be loaded ({self._failure_reason})"
            if failure is not None and failure.version == target and self._failure_reason
            else ", not loaded yet"
        )
        serving = f"still serving version {model.version}" if model else "no model is served"
        return f"alias {self.alias} points to version {target}{why}; {serving}"

    def info(self) -> ModelInfo:
        model = self.current
        return ModelInfo(
            name=self.settings.model_name,
            alias=self.alias,
            pinned_version=self.pinned_version,
            loaded=model is not None,
            version=model.version if model else None,
            loaded_from=model.ref.loaded_from if model else None,
            run_id=model.ref.run_id if model else None,
            loaded_at=model.loaded_at if model else None,
            backend=model.backend.name if model else None,
            backend_reason=model.backend_reason if model else None,
            metrics=dict(model.metrics) if model else {},
            trained_batches=model.trained_batches if model else None,
            trained_rows=model.trained_rows if model else None,
            training_info=dict(model.training_info) if model else {},
            alias_version=self.alias_version,
            notice=self.notice(),
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            last_check_at=self.last_check_at,
            poll_interval_seconds=self.settings.poll_interval_seconds,
            tracking_uri=self.settings.mlflow_tracking_uri,
        )
