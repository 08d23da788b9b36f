"""The inference API: Litestar app, routes and the watcher's lifespan.

Routes: POST /predict, GET /model, POST /model/reload, GET /health, GET /ready; OpenAPI at
/schema (JSON at /schema/openapi.json). POST /model/reload needs the admin token, /predict an
API key only when INFERENCE_REQUIRE_API_KEY is true (app.inference.auth).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import operator
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio.to_thread
import msgspec
import numpy as np
from litestar import Controller, Litestar, MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ServiceUnavailableException,
    ValidationException,
)
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import Components, Operation
from litestar.params import Parameter

from app.covertype import COVER_TYPES, FEATURE_COLUMNS
from app.inference import auth
from app.inference.backends import Answers, Backend, answers
from app.inference.model_holder import ModelHolder
from app.inference.predict_worker import PredictionWorker
from app.inference.registry import (
    InvalidRequest,
    LoadedModel,
    ModelRegistry,
    NotFound,
    RegistryError,
    Unreachable,
    configure_mlflow_client,
)
from app.inference.schemas import (
    CLASS_NAMES,
    Health,
    ModelInfo,
    Prediction,
    PredictResponse,
    Readiness,
    ReloadResult,
    as_integer_schema,
    explain,
    predict_body_type,
)
from app.settings import InferenceSettings

# Up to this many rows an ONNX prediction goes to the PredictionWorker's thread, merged with
# other small requests (app.inference.predict_worker); larger ones, and the sklearn backend,
# run in anyio's worker threads.
WORKER_ROWS = 64
# From this many rows an ONNX prediction is split over INFERENCE_BATCH_THREADS worker threads
# at once: ONNX Runtime releases the GIL, so a 1,000-row batch uses the second core, while the
# thread hops cost more than they save on smaller requests.
SPLIT_ROWS = 256

_record_values = operator.attrgetter(*FEATURE_COLUMNS)
_ENCODER = msgspec.json.Encoder()


class BadGatewayException(HTTPException):
    """The registry has the version but it could not be made ready to serve."""

    status_code = 502


@dataclass(frozen=True)
class PredictInput:
    """What /predict needs besides the model, made once per app (the limit is a setting)."""

    decoder: msgspec.json.Decoder[Any]
    max_rows: int
    body_schema: dict[str, Any]
    batch_threads: int = 1
    worker: PredictionWorker = field(default_factory=PredictionWorker)


def _predict_input(max_rows: int, batch_threads: int = 1) -> PredictInput:
    body_type = predict_body_type(max_rows)
    # Inline the record schema: the body is decoded by our own decoder (see predict), so
    # Litestar does not know its type and would not register it as a component.
    (schema,), components = msgspec.json.schema_components(
        [body_type], ref_template="#/components/schemas/{name}"
    )
    record = as_integer_schema(components["FeatureRecord"])

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("$ref") == "#/components/schemas/FeatureRecord":
                return record
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return PredictInput(msgspec.json.Decoder(body_type), max_rows, inline(schema), batch_threads)


def _operation_with_body(body_schema: dict[str, Any]) -> type[Operation]:
    class PredictOperation(Operation):
        def to_schema(self) -> dict[str, Any]:
            schema = super().to_schema()
            schema["requestBody"] = {
                "required": True,
                "description": (
                    "One record, or a list of records, with exactly the 12 feature columns."
                ),
                "content": {"application/json": {"schema": body_schema}},
            }
            return schema

    return PredictOperation


def _columns(records: Any) -> dict[str, tuple[Any, ...]]:
    if isinstance(records, list):
        return dict(
            zip(FEATURE_COLUMNS, zip(*map(_record_values, records), strict=True), strict=True)
        )
    return {c: (v,) for c, v in zip(FEATURE_COLUMNS, _record_values(records), strict=True)}


async def _predict(
    backend: Backend, columns: dict[str, tuple[Any, ...]], predict_input: PredictInput
) -> Answers:
    rows = len(columns[FEATURE_COLUMNS[0]])
    threads = predict_input.batch_threads
    if backend.name == "onnx" and rows <= WORKER_ROWS:
        return await predict_input.worker.answers(backend, columns)
    if backend.name != "onnx" or threads <= 1 or rows < SPLIT_ROWS:
        return await anyio.to_thread.run_sync(answers, backend, columns)
    bounds = np.linspace(0, rows, threads + 1).astype(int).tolist()
    parts: list[Answers] = [Answers([], [])] * threads

    async def run(start: int, stop: int, slot: int) -> None:
        chunk = {c: v[start:stop] for c, v in columns.items()}
        parts[slot] = await anyio.to_thread.run_sync(answers, backend, chunk)

    async with anyio.create_task_group() as group:
        for slot, (start, stop) in enumerate(itertools.pairwise(bounds)):
            group.start_soon(run, start, stop, slot)
    return Answers(
        list(itertools.chain.from_iterable(p.labels for p in parts)),
        list(itertools.chain.from_iterable(p.probabilities for p in parts)),
    )


def _response(model: LoadedModel, answered: Answers) -> PredictResponse:
    predictions = [
        Prediction(
            cover_type=label,
            cover_type_name=COVER_TYPES[label],
            probabilities=dict(zip(CLASS_NAMES, row, strict=True)),
        )
        for label, row in zip(answered.labels, answered.probabilities, strict=True)
    ]
    return PredictResponse(
        model_name=model.ref.name,
        model_version=model.version,
        model_alias=model.ref.loaded_from.removeprefix("alias ")
        if model.ref.loaded_from.startswith("alias ")
        else None,
        backend=model.backend.name,
        predictions=predictions,
    )


def _holder(state: State) -> ModelHolder:
    return state.models  # type: ignore[no-any-return]


def prediction_controller(
    predict_input: PredictInput, settings: InferenceSettings | None = None
) -> type[Controller]:
    settings = settings or InferenceSettings()
    keyed = settings.require_api_key

    class PredictionController(Controller):
        path = "/predict"
        tags = ["prediction"]
        guards = auth.predict_guards(settings)

        @post(
            "/",
            status_code=200,
            operation_class=_operation_with_body(predict_input.body_schema),
            raises=[ValidationException, ServiceUnavailableException]
            + ([NotAuthorizedException, PermissionDeniedException] if keyed else []),
            security=auth.PREDICT_SECURITY if keyed else None,
            summary="Predict the cover type of one record or a list of records",
            description=(
                "Send one record (JSON object) or a list of 1 to "
                f"{predict_input.max_rows} records with the 12 feature columns. Each row gets "
                "its class number, class name and the probability of every class (keyed by "
                "class name). One model version answers the whole request. 400 names the row, "
                "field and reason of bad input; 503 means no model is loaded yet."
                + (
                    f" Needs an API key ({auth.API_KEY_HEADER}): 401 without, 403 with a wrong one."
                    if keyed
                    else ""
                )
            ),
        )
        async def predict(self, request: Request[Any, Any, State]) -> Response[PredictResponse]:
            body = await request.body()
            try:
                records = predict_input.decoder.decode(body)
            # msgspec raises UnicodeDecodeError, not DecodeError, for invalid UTF-8 inside a
            # string or key (found by fuzzing: it was a 500).
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                bad = explain(exc, body, predict_input.max_rows)
                raise ValidationException(detail=bad.detail(), extra=bad.extra()) from None
            # One reference for the whole request: a swap meanwhile does not affect it.
            model = _holder(request.app.state).current
            if model is None:
                raise ServiceUnavailableException(
                    detail=_holder(request.app.state).waiting_reason(),
                    headers={"Retry-After": "5"},
                )
            answered = await _predict(model.backend, _columns(records), predict_input)
            # Encoded here: Litestar passes bytes through, and its path for a returned struct
            # (serializer lookup, type encoders) cost twice its path for a Response.
            encoded = _ENCODER.encode(_response(model, answered))
            return Response(encoded, media_type=MediaType.JSON)  # type: ignore[arg-type]

    return PredictionController


class ModelController(Controller):
    path = "/model"
    tags = ["model"]

    @get("/", summary="The model being served and what the watcher last saw", sync_to_thread=False)
    def model(self, state: State) -> ModelInfo:
        return _holder(state).info()

    @post(
        "/reload",
        status_code=200,
        raises=[
            ValidationException,
            NotAuthorizedException,
            PermissionDeniedException,
            NotFoundException,
            ServiceUnavailableException,
            BadGatewayException,
        ],
        security=auth.ADMIN_SECURITY,
        guards=[auth.require_admin],
        summary="Load a version now",
        description=(
            "Needs the admin token (Authorization: Bearer): 401 without, 403 with another. "
            "Without parameters: load the version the configured alias points to and follow it. "
            "With `alias`: follow that alias instead. With `version`: load and pin that version "
            "(the watcher stops following an alias until the next reload without `version`). "
            "The old model keeps serving until the new one is ready, and if loading fails."
        ),
    )
    async def reload(
        self,
        state: State,
        version: Annotated[
            int | None, Parameter(ge=1, le=2**31 - 1, description="a version number")
        ] = None,
        alias: Annotated[
            str | None,
            Parameter(
                min_length=1,
                max_length=256,
                # MLflow's rule for alias names.
                pattern=r"^[A-Za-z0-9_-]+$",
                description="an alias: letters, digits, _ and -",
            ),
        ] = None,
    ) -> ReloadResult:
        if version is not None and alias is not None:
            raise ValidationException(
                detail="give version or alias, not both",
                extra=[
                    {
                        "key": "version",
                        "message": "give version or alias, not both",
                        "source": "query",
                    }
                ],
            )
        holder = _holder(state)
        try:
            outcome, _ = await holder.reload(
                alias=alias, version=None if version is None else str(version)
            )
        except NotFound as exc:
            raise NotFoundException(detail=str(exc)) from None
        except InvalidRequest as exc:
            raise ValidationException(detail=str(exc)) from None
        except Unreachable as exc:
            raise ServiceUnavailableException(detail=str(exc)) from None
        except RegistryError as exc:
            raise BadGatewayException(detail=str(exc)) from None
        return ReloadResult(outcome=outcome, model=holder.info())


@get("/health", tags=["service"], summary="The process is alive", sync_to_thread=False)
def health() -> Health:
    return Health(status="alive")


@get(
    "/ready",
    tags=["service"],
    summary="200 when a model is loaded, else 503",
    sync_to_thread=False,
    responses={
        503: ResponseSpec(
            data_container=Readiness, description="No model loaded yet; detail says why"
        )
    },
)
def ready(state: State) -> Response[Readiness]:
    holder = _holder(state)
    model = holder.current
    if model is None:
        return Response(
            Readiness(ready=False, version=None, detail=holder.waiting_reason()), status_code=503
        )
    return Response(
        Readiness(ready=True, version=model.version, detail=f"serving version {model.version}"),
        status_code=200,
    )


def create_app(
    settings: InferenceSettings | None = None, registry: ModelRegistry | None = None
) -> Litestar:
    settings = settings or InferenceSettings()
    holder = ModelHolder(settings, registry or ModelRegistry(settings))
    predict_input = _predict_input(settings.max_rows, settings.batch_threads)

    @contextlib.asynccontextmanager
    async def watcher(app: Litestar) -> AsyncIterator[None]:
        # The API is up at once; the first load happens in the background, so /health answers
        # and /predict says 503 (with the reason) until a model is ready.
        task = asyncio.create_task(holder.run_watcher(), name="model-watcher")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            predict_input.worker.close()

    return Litestar(
        route_handlers=[
            prediction_controller(predict_input, settings),
            ModelController,
            health,
            ready,
        ],
        state=State({"models": holder, auth.STATE_KEY: settings}),
        # A record is about 330 bytes of JSON; room for max_rows of them, 10 MB at least.
        request_max_body_size=max(10 * 2**20, settings.max_rows * 1024),
        lifespan=[watcher],
        logging_config=LoggingConfig(
            # Handlers are the process's business (app.inference.__main__); Litestar's default
            # queue handler would drop the last records when the process stops.
            configure_root_logger=False,
            loggers={"litestar": {"level": "INFO", "handlers": [], "propagate": True}},
            # A server error is logged with its traceback; a client mistake or "no model yet"
            # is answered, not logged.
            log_exceptions="always",
            disable_stack_trace={400, 401, 403, 404, 405, 413, 502, 503},
        ),
        openapi_config=OpenAPIConfig(
            title="Forest cover inference API",
            version="1.0.0",
            description=(
                f"Serves {settings.model_name}@{settings.model_alias} from the MLflow registry "
                "and follows the alias."
            ),
            path="/schema",
            components=Components(security_schemes=auth.SECURITY_SCHEMES),
        ),
    )


def app_from_environment() -> Litestar:
    """The app as each server process builds it (`python -m app.inference`, one per uvicorn
    worker): settings from the environment, logging to stderr (the journal)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = InferenceSettings()
    configure_mlflow_client(settings)
    return create_app(settings)
