"""The HTTP face of the batch data provider (Litestar), compatible with the course's API."""

# No `from __future__ import annotations` here: the handlers' parameter annotations carry the
# configured group range and must be evaluated where they are defined, inside create_app.

import importlib.metadata
import logging
import random
from typing import Annotated, Any

import msgspec
from litestar import Litestar, MediaType, Request, Response, get
from litestar.exceptions import ClientException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.params import QueryParameter

from app.covertype import COLUMNS
from app.data_api.dataset import Dataset, load_dataset
from app.data_api.responses import data_body
from app.data_api.schedule import AllBatchesServed, Schedule
from app.settings import DataApiSettings

log = logging.getLogger(__name__)

NAME = "forest-cover-data-api"
GROUP_PARAM = "group_number"


class DataBatch(msgspec.Struct):
    """What GET /data returns (documentation only: the body is assembled from bytes)."""

    group_number: int
    batch_number: int
    data: list[list[str]]


class RestartDone(msgspec.Struct):
    ok: bool
    group_number: int
    detail: str


class ErrorBody(msgspec.Struct):
    """Litestar's error shape; `extra` names the parameter and the allowed values."""

    status_code: int
    detail: str
    extra: dict[str, Any] | list[dict[str, Any]] | None = None


class AllBatchesServedError(ClientException):
    # A ClientException subclass (class-level status 400) so Litestar's logging treats it as
    # the client-side condition it is rather than as a server error.
    pass


def _version() -> str:
    try:
        return importlib.metadata.version("forest-cover-mlops")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown (not installed)"


class BatchService:
    """What the endpoints do, apart from HTTP: the schedule, one sampler per group, the info
    document."""

    def __init__(self, settings: DataApiSettings, dataset: Dataset) -> None:
        self.settings = settings
        self.dataset = dataset
        self.schedule = Schedule(
            state_file=settings.state_file,
            n_groups=settings.n_groups,
            n_batches=settings.n_batches,
            interval_seconds=settings.interval_seconds,
        )
        # One generator per group: with a seed, a group's samples depend only on the seed, the
        # group and how many requests it made, not on what other groups did in between.
        self.rngs = {g: _group_rng(settings.seed, g) for g in range(1, settings.n_groups + 1)}

    def data(self, group_number: int) -> bytes:
        try:
            index = self.schedule.batch_index(group_number)
        except AllBatchesServed as exc:
            restart = f"/restart_data_generation?{GROUP_PARAM}={group_number}"
            raise AllBatchesServedError(
                detail=(
                    f"All {exc.n_batches} batches of group {group_number} have been served. "
                    f"Call GET {restart} to start the group again from batch 1."
                ),
                extra={
                    GROUP_PARAM: group_number,
                    "batches_served": exc.n_batches,
                    "restart": restart,
                },
            ) from None
        batch = self.dataset.batches[index]
        return data_body(batch, self.rngs[group_number], group_number, index + 1)

    def restart(self, group_number: int) -> RestartDone:
        self.schedule.restart(group_number)
        self.rngs[group_number] = _group_rng(self.settings.seed, group_number)
        log.info("group %d restarted", group_number)
        return RestartDone(
            ok=True,
            group_number=group_number,
            detail=f"Group {group_number} starts again at batch 1 with its next /data request.",
        )

    def info(self) -> dict[str, Any]:
        settings, dataset, n_groups = self.settings, self.dataset, self.settings.n_groups
        return {
            "name": NAME,
            "version": _version(),
            "description": (
                "Covertype rows in contiguous batches; each /data request returns a random "
                "tenth of the group's current batch."
            ),
            "dataset": {
                "file": dataset.path.name,
                "rows": dataset.n_rows,
                "columns": list(COLUMNS),
            },
            "groups": n_groups,
            "batches": settings.n_batches,
            "interval_seconds": settings.interval_seconds,
            "batch_sizes": dataset.batch_sizes,
            "rows_per_response": dataset.rows_per_response,
            "group_progress": self.schedule.progress(),
            # Templates, not links: a GET on the restart URL restarts the group.
            "endpoints": {
                "data": f"/data?{GROUP_PARAM}={{1..{n_groups}}}",
                "restart": f"/restart_data_generation?{GROUP_PARAM}={{1..{n_groups}}}",
            },
            "links": {
                "health": "/health",
                "docs": "/schema/swagger",
                "redoc": "/schema/redoc",
                "openapi": "/schema/openapi.json",
            },
        }

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "rows": self.dataset.n_rows, "batches": self.settings.n_batches}


def _error_specs(n_groups: int) -> tuple[ResponseSpec, ResponseSpec]:
    """The documented 400 answers: a bad group, and a bad group or every batch served."""
    allowed = f"an integer from 1 to {n_groups}"
    bad_group = ResponseSpec(
        data_container=ErrorBody,
        description=f"{GROUP_PARAM} is missing or not {allowed}.",
        generate_examples=False,
    )
    bad_group_or_done = ResponseSpec(
        data_container=ErrorBody,
        description=(
            f"{GROUP_PARAM} is missing or not {allowed}; or every batch of the group has been "
            "served (the detail says so and how to restart)."
        ),
        generate_examples=False,
    )
    return bad_group, bad_group_or_done


def _route_handlers(service: BatchService) -> list[HTTPRouteHandler]:
    """Thin handlers around the service. They are made here because the group parameter's
    documented range is the configured number of groups."""
    settings, n_groups = service.settings, service.settings.n_groups
    group_param = QueryParameter(
        name=GROUP_PARAM,
        ge=1,
        le=n_groups,
        description=f"Your group, an integer from 1 to {n_groups}.",
    )
    bad_group, bad_group_or_done = _error_specs(n_groups)
    data_description = (
        f"Rows in the order {', '.join(COLUMNS)}, values as strings. A group starts at batch 1 "
        "with its first request and moves on by one batch when a request comes at least "
        f"{settings.interval_seconds:g} s after its previous move, so a client that was away "
        f"misses no batch. A request that long after the last of the {settings.n_batches} "
        "batches began gets 400 until /restart_data_generation is called."
    )

    @get(
        "/data",
        media_type=MediaType.JSON,
        summary="A random tenth of the group's current batch",
        description=data_description,
        responses={400: bad_group_or_done},
    )
    async def data(group_number: Annotated[int, group_param]) -> Response[DataBatch]:
        return Response(service.data(group_number), media_type=MediaType.JSON)

    @get(
        "/restart_data_generation",
        summary="Start the group again from batch 1",
        description="The group's next /data request starts batch 1 and its interval clock.",
        responses={400: bad_group},
    )
    async def restart(group_number: Annotated[int, group_param]) -> RestartDone:
        return service.restart(group_number)

    @get("/", summary="What this service serves and where its documentation is")
    async def info() -> dict[str, Any]:
        return service.info()

    @get("/health", summary="Liveness: the dataset is loaded and requests are served")
    async def health() -> dict[str, Any]:
        return service.health()

    return [data, restart, info, health]


def create_app(settings: DataApiSettings, dataset: Dataset | None = None) -> Litestar:
    """Build the app. `dataset` lets callers that already loaded the file pass it in."""
    if dataset is None:
        dataset = load_dataset(settings.dataset_path, settings.n_batches)
    n_groups = settings.n_groups

    def group_validation_error(request: Request, exc: ValidationException) -> Response[Any]:
        return _group_validation_error(request, exc, n_groups)

    return Litestar(
        route_handlers=_route_handlers(BatchService(settings, dataset)),
        exception_handlers={ValidationException: group_validation_error},
        openapi_config=OpenAPIConfig(
            title="Forest cover batch data API",
            version=_version(),
            description=(
                "Serves the Covertype dataset in batches, compatible with the course's API. "
                f"{n_groups} groups progress independently."
            ),
            render_plugins=[SwaggerRenderPlugin(), RedocRenderPlugin()],
        ),
        logging_config=LoggingConfig(
            # Our own loggers and uvicorn's go to the root logger set up by __main__.
            configure_root_logger=False,
            log_exceptions="always",
            # Client errors are answered, not failures worth a traceback.
            disable_stack_trace={400, 404, 405},
        ),
    )


def _group_rng(seed: int | None, group: int) -> random.Random:
    # Without a seed, random.Random() seeds itself from os.urandom.
    return random.Random() if seed is None else random.Random(f"data-api:{seed}:{group}")


def _shown(value: str) -> str:
    # The value as the client sent it, but not all of it: a 100 kB query string must not come
    # back twice (detail and extra) in the answer, or in a log line.
    limit = 40
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} chars)"


def _group_validation_error(
    request: Request, exc: ValidationException, n_groups: int
) -> Response[Any]:
    """Say which parameter is wrong and what it accepts, in Litestar's own error shape."""
    about_group = GROUP_PARAM in str(exc.detail) or any(
        isinstance(item, dict) and item.get("key") == GROUP_PARAM for item in (exc.extra or [])
    )
    if not about_group:
        return Response(
            {"status_code": 400, "detail": exc.detail, "extra": exc.extra},
            status_code=400,
            media_type=MediaType.JSON,
        )
    raw = request.query_params.getall(GROUP_PARAM, [])
    got = f"got {_shown(raw[-1])}" if raw else "it is missing"
    message = f"{GROUP_PARAM} must be an integer from 1 to {n_groups}; {got}"
    return Response(
        {
            "status_code": 400,
            "detail": message,
            "extra": [
                {
                    "key": GROUP_PARAM,
                    "source": "query",
                    "message": message,
                    "allowed": {"minimum": 1, "maximum": n_groups},
                }
            ],
        },
        status_code=400,
        media_type=MediaType.JSON,
    )
