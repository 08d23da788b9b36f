"""Fixtures for the NiceGUI front end's tests.

- `ui_user`: NiceGUI's own simulated user (nicegui.testing.user_simulation, what the `user`
  fixture of nicegui.testing.user_plugin wraps), running ui/__main__.py as the main file, so
  the tests exercise the same entry point and settings the unit runs. Each test says which
  backends the UI sees; anything it does not name points at a closed port (a backend that is
  down), never at a default address where some other service might answer.
- `served`: the real thing behind the UI, once per session: two versions trained and
  registered by the pipeline's own code (app.pipeline.run_training) in the real MLflow server,
  and `python -m app.inference` serving alias production as its own process.
- `batches_store`: a fresh batches_db with two groups' batches ingested by
  app.batch_store.store, read by the UI through a role that may only SELECT the two views.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pandas as pd
import psycopg2
import pytest
import pytest_asyncio
from nicegui.storage import Storage
from nicegui.testing import User, user_simulation

from tests.servers import PostgresServer
from tests.test_inference.support import api_process, wait_until
from tests.test_ui.support import (
    ALIAS,
    MAIN_FILE,
    SEE_RETRIES,
    UI_PASSWORD,
    UI_USERNAME,
    UI_VARIABLES,
    BatchesStore,
    Served,
    all_down_env,
    sample_rows,
)

StartUser = Callable[..., Awaitable[User]]


async def log_in(user: User, path: str = "/login") -> None:
    """Log in through the login page, as a person does: `path` is where the user was going
    (the UI sends an anonymous request to /login?redirect_to=...)."""
    await user.open(path)
    await user.should_see(marker="login")
    user.find(marker="login-username").type(UI_USERNAME)
    user.find(marker="login-password").type(UI_PASSWORD)
    user.find(marker="login").click()
    await user.should_see(marker="logout", retries=SEE_RETRIES)


@pytest_asyncio.fixture
async def ui_user(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> AsyncIterator[StartUser]:
    """`await ui_user(INFERENCE_API_URL=...)` -> a simulated user of the app started with
    those settings (the rest: backends down), logged in through the login page
    (`login=False`: anonymous). Like NiceGUI's `user` fixture, the test fails if the app
    logged an ERROR (an exception in a page or handler)."""
    # The sessions' server-side storage (app.storage.user), not the repository's .nicegui/.
    monkeypatch.setattr(Storage, "path", tmp_path / "nicegui")

    async with AsyncExitStack() as stack:

        async def start(*, login: bool = True, **env: str) -> User:
            for name in UI_VARIABLES:
                monkeypatch.delenv(name, raising=False)
            for name, value in {**all_down_env(), **env}.items():
                monkeypatch.setenv(name, value)
            user = await stack.enter_async_context(user_simulation(main_file=MAIN_FILE))
            if login:
                await log_in(user)
            return user

        yield start
    errors = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.get_records("call")
        if r.levelno >= logging.ERROR
    ]
    assert not errors, f"the app logged errors: {errors}"


# --- the inference API and MLflow, for real ----------------------------------------------------


def _train_versions(tracking_uri: str, name: str, frames) -> tuple[str, str]:  # noqa: ANN001
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from app.pipeline import RunMetadata, run_training
    from app.pipeline.candidates import default_candidates
    from app.settings import MlflowSettings

    train, holdout = frames
    settings = MlflowSettings(
        tracking_uri=tracking_uri,
        experiment_name=f"ui-tests-{name}",
        registered_model_name=name,
        production_alias=ALIAS,
    )
    forest = default_candidates(
        ["random_forest"],
        seed=1,
        n_jobs=1,
        overrides={"random_forest": {"n_estimators": 10, "max_depth": 14}},
    )
    # So regularized it predicts little more than the majority class: never promoted.
    weak = default_candidates(
        ["logistic_regression"],
        seed=1,
        n_jobs=1,
        overrides={"logistic_regression": {"C": 1e-5, "max_iter": 50}},
    )
    first = run_training(
        train[train["batch_number"] <= 4].reset_index(drop=True),
        holdout,
        RunMetadata(group_number=1),
        mlflow_settings=settings,
        candidates=forest,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        second = run_training(
            train, holdout, RunMetadata(group_number=1), mlflow_settings=settings, candidates=weak
        )
    assert first.decision.promoted and not second.decision.promoted
    return first.model_version, second.model_version


@pytest.fixture(scope="session")
def served(
    mlflow_server,  # noqa: ANN001 - tests.mlflow_server.MlflowServer
    covertype_frames: tuple[pd.DataFrame, pd.DataFrame],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    name = f"forest-cover-ui-{uuid.uuid4().hex[:8]}"
    promoted, rejected = _train_versions(mlflow_server.tracking_uri, name, covertype_frames)
    log = tmp_path_factory.mktemp("ui-inference-api") / "inference-api.log"
    env = {
        "MLFLOW_TRACKING_URI": mlflow_server.tracking_uri,
        "MLFLOW_REGISTERED_MODEL": name,
        "MLFLOW_PRODUCTION_ALIAS": ALIAS,
        # Only the reload button (or a restart) moves it: the reload test relies on it.
        "INFERENCE_POLL_SECONDS": "3600",
        "INFERENCE_ACCESS_LOG": "true",
    }
    with api_process(env, log) as url:
        wait_until(
            lambda: httpx.get(f"{url}/ready", timeout=10).status_code == 200,
            "the inference API to load the production version",
            timeout=180,
        )
        yield Served(mlflow_server.tracking_uri, name, url, log, promoted, rejected)


# --- batches_db ---------------------------------------------------------------------------------

READER = "ui_test_reader"


def reader_dsn(postgres: PostgresServer, dsn: str) -> str:
    """A role that may only SELECT the two statistics views of this database."""
    database = dsn.rsplit("/", 1)[1]
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER,))
        if cur.fetchone() is None:
            cur.execute(f"CREATE ROLE {READER} LOGIN")
        cur.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {READER}')
        cur.execute(f"GRANT USAGE ON SCHEMA public TO {READER}")
        cur.execute(f"GRANT SELECT ON batch_statistics, batch_totals TO {READER}")
    conn.close()
    return postgres.dsn(database, user=READER)


@pytest.fixture
def batches_store(batches_dsn: str, postgres: PostgresServer) -> BatchesStore:
    """Group 1: batches 1 and 2 (batch 2 fetched twice, the second time with 3 broken rows);
    group 2: batch 1 only."""
    from app.batch_store.migrations import apply_migrations
    from app.batch_store.store import store_batch

    apply_migrations(batches_dsn)
    rows = sample_rows()
    broken = [list(r) for r in rows[400:403]]
    broken[0][0] = "99999"  # Elevation out of range
    broken[1][10] = "Atlantis"  # unknown Wilderness_Area
    broken[2] = broken[2][:5]  # too few fields
    deliveries = [
        (1, 1, rows[0:400]),
        (1, 2, rows[400:700]),
        (1, 2, rows[400:450] + broken),
        (2, 1, rows[700:900]),
    ]
    for group, batch, delivered in deliveries:
        store_batch(batches_dsn, group, batch, delivered)
    return BatchesStore(batches_dsn, reader_dsn(postgres, batches_dsn), deliveries)
