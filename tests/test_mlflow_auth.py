"""MLflow's basic-auth app as the platform runs it (tests/mlflow_auth_server.py): user store in
PostgreSQL, NO_PERMISSIONS by default, accounts and grants made by the mlflow role's own script.

Anonymous requests get nothing; the inference API's account reads and cannot register, delete
or move an alias; the pipeline's account runs the whole training and promotion (the DAG's
register_and_promote) and cannot delete or grant; the script is idempotent and repairs drift
(admin password, service passwords, grant levels)."""

from __future__ import annotations

import base64
import json
import secrets
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psycopg2
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from app.settings import MlflowSettings
from tests.mlflow_auth_server import ADMIN, AUTH_DATABASE, MlflowAuthServer, mlflow_auth_server
from tests.servers import MySQLServer, PostgresServer, S3Server

SUFFIX = uuid.uuid4().hex[:8]
EXPERIMENT = f"forest_cover_auth_{SUFFIX}"
MODEL = f"forest-cover-auth-{SUFFIX}"
PIPELINE, INFERENCE, UI = "mlops-pipeline", "mlops-inference", "mlops-ui"


def _grants(level: str) -> list[dict[str, str]]:
    return [
        {"resource_type": "experiment", "resource": EXPERIMENT, "permission": level},
        {"resource_type": "registered_model", "resource": MODEL, "permission": level},
    ]


@pytest.fixture(scope="module")
def server(
    server_root: Path, mysql: MySQLServer, s3: S3Server, postgres: PostgresServer
) -> Iterator[MlflowAuthServer]:
    with mlflow_auth_server(server_root / "mlflow-auth", mysql, s3, postgres) as running:
        yield running


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    return {name: secrets.token_urlsafe(18) for name in (PIPELINE, INFERENCE, UI)}


def _spec(server: MlflowAuthServer, passwords: dict[str, str], **admin: str) -> dict[str, object]:
    return {
        "admin": {"username": ADMIN, "password": server.admin_password, **admin},
        "experiments": [EXPERIMENT],
        "registered_models": [MODEL],
        "users": [
            {"username": PIPELINE, "password": passwords[PIPELINE], "grants": _grants("EDIT")},
            {"username": INFERENCE, "password": passwords[INFERENCE], "grants": _grants("READ")},
            {"username": UI, "password": passwords[UI], "grants": _grants("READ")},
        ],
    }


@pytest.fixture(scope="module")
def accounts(server: MlflowAuthServer, passwords: dict[str, str]) -> dict[str, str]:
    first = server.apply_accounts(_spec(server, passwords))
    assert first["changed"] is True
    assert f"experiment {EXPERIMENT} created" in first["actions"]
    assert f"registered model {MODEL} created" in first["actions"]
    assert {f"user {u} created" for u in (PIPELINE, INFERENCE, UI)} <= set(first["actions"])
    # No secret in what the script prints (it lands in Ansible's output when changed).
    printed = json.dumps(first)
    assert not any(p in printed for p in [*passwords.values(), server.admin_password])
    # A second run finds everything in place: changed=0 on a repeat provisioning.
    again = server.apply_accounts(_spec(server, passwords))
    assert again == {"changed": False, "actions": []}
    return passwords


def _status(
    server: MlflowAuthServer,
    method: str,
    path: str,
    auth: tuple[str, str] | None = None,
    body: dict[str, object] | None = None,
) -> int:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    request = urllib.request.Request(
        f"{server.tracking_uri}{path}",
        method=method,
        headers=headers,
        data=None if body is None else json.dumps(body).encode(),
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def login(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201 - a function
    """login(user, password): MLflow's client sends them from now on (the env variables the
    services' env files set)."""

    def use(user: str, password: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)

    return use


def test_anonymous_requests_read_and_write_nothing(
    server: MlflowAuthServer, accounts: dict[str, str]
) -> None:
    assert _status(server, "GET", "/health") == 200
    for method, path, body in (
        ("GET", "/api/2.0/mlflow/experiments/search?max_results=1", None),
        ("GET", f"/api/2.0/mlflow/registered-models/get?name={MODEL}", None),
        ("POST", "/api/2.0/mlflow/experiments/create", {"name": f"anonymous-{SUFFIX}"}),
        ("POST", "/api/2.0/mlflow/registered-models/delete", {"name": MODEL}),
        ("GET", f"/api/2.0/mlflow-artifacts/artifacts?path={SUFFIX}", None),
    ):
        assert _status(server, method, path, body=body) == 401, (method, path)
        # A wrong password is no better than none.
        assert _status(server, method, path, (INFERENCE, "wrong-password-x"), body) == 401
    client = MlflowClient(server.tracking_uri)
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        client.search_experiments()


def test_the_user_store_is_the_postgresql_database(
    server: MlflowAuthServer, accounts: dict[str, str], postgres: PostgresServer
) -> None:
    conn = psycopg2.connect(postgres.dsn(AUTH_DATABASE))
    with conn.cursor() as cur:
        cur.execute("SELECT username FROM users ORDER BY username")
        users = [row[0] for row in cur.fetchall()]
    conn.close()
    assert users == sorted([ADMIN, PIPELINE, INFERENCE, UI])


def _train(settings: MlflowSettings, frames, candidates, batches: int):  # noqa: ANN001, ANN202
    from app.pipeline import RunMetadata, run_training

    train, holdout = frames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_training(
            train[train["batch_number"] <= batches].reset_index(drop=True),
            holdout,
            RunMetadata(group_number=1),
            mlflow_settings=settings,
            candidates=candidates,
        )


def test_the_pipeline_account_trains_registers_and_promotes_but_cannot_delete_or_grant(
    server: MlflowAuthServer,
    accounts: dict[str, str],
    login,  # noqa: ANN001
    covertype_frames: tuple[pd.DataFrame, pd.DataFrame],
    small_candidates,  # noqa: ANN001
) -> None:
    login(PIPELINE, accounts[PIPELINE])
    settings = MlflowSettings(
        tracking_uri=server.tracking_uri,
        experiment_name=EXPERIMENT,
        registered_model_name=MODEL,
        production_alias="production",
    )
    first = _train(settings, covertype_frames, small_candidates, batches=3)
    assert first.decision.promoted
    # The second run re-scores production (downloads it through the artifact proxy), then
    # registers its own version and moves the alias or tags why not.
    second = _train(settings, covertype_frames, small_candidates, batches=10)
    client = MlflowClient(server.tracking_uri, registry_uri=server.tracking_uri)
    alias = client.get_model_version_by_alias(MODEL, "production").version
    assert alias == (second.model_version if second.decision.promoted else first.model_version)

    auth = (PIPELINE, accounts[PIPELINE])
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|403"):
        client.delete_model_version(MODEL, first.model_version)
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|403"):
        client.delete_registered_model_alias(MODEL, "production")
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|403"):
        client.delete_registered_model(MODEL)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|403"):
        client.delete_experiment(experiment.experiment_id)
    grant = {
        "username": INFERENCE,
        "resource_type": "registered_model",
        "resource_id": MODEL,
        "permission": "MANAGE",
    }
    assert _status(server, "POST", "/api/3.0/mlflow/users/permissions/grant", auth, grant) == 403
    user = {"username": f"intruder-{SUFFIX}", "password": secrets.token_urlsafe(18)}
    assert _status(server, "POST", "/api/2.0/mlflow/users/create", auth, user) == 403
    assert client.get_model_version(MODEL, first.model_version).version == first.model_version


def test_the_inference_account_reads_and_downloads_but_cannot_change_anything(
    server: MlflowAuthServer,
    accounts: dict[str, str],
    login,  # noqa: ANN001
    covertype_frames: tuple[pd.DataFrame, pd.DataFrame],
    small_candidates,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    import mlflow

    client = MlflowClient(server.tracking_uri, registry_uri=server.tracking_uri)
    login(PIPELINE, accounts[PIPELINE])
    if not client.search_model_versions(f"name = '{MODEL}'"):
        settings = MlflowSettings(server.tracking_uri, EXPERIMENT, MODEL, "production")
        _train(settings, covertype_frames, small_candidates, batches=3)
    production = client.get_model_version_by_alias(MODEL, "production")

    experiment_id = client.get_run(production.run_id).info.experiment_id
    # As the inference API resolves models:/ URIs (conftest restores the globals after).
    mlflow.set_tracking_uri(server.tracking_uri)
    mlflow.set_registry_uri(server.tracking_uri)
    for user in (INFERENCE, UI):
        login(user, accounts[user])
        assert client.get_model_version_by_alias(MODEL, "production").version == production.version
        assert client.get_run(production.run_id).info.run_id == production.run_id
        # The artifact proxy checks the experiment: READ there lets serving download.
        local = mlflow.artifacts.download_artifacts(
            f"models:/{MODEL}/{production.version}",
            dst_path=str(tmp_path / user),
            tracking_uri=server.tracking_uri,
            registry_uri=server.tracking_uri,
        )
        assert (Path(local) / "MLmodel").exists()
        for change in (
            lambda: client.create_model_version(MODEL, production.source, production.run_id),
            lambda: client.set_registered_model_alias(MODEL, "production", production.version),
            lambda: client.delete_registered_model_alias(MODEL, "production"),
            lambda: client.delete_model_version(MODEL, production.version),
            lambda: client.set_model_version_tag(MODEL, production.version, "k", "v"),
            lambda: client.create_run(experiment_id),
        ):
            with pytest.raises(MlflowException, match="PERMISSION_DENIED|403"):
                change()
        # Nothing it was not granted: another experiment stays invisible.
        other = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
        assert _status(server, "GET", other, (user, accounts[user])) == 403
    assert client.get_model_version_by_alias(MODEL, "production").version == production.version


def test_provisioning_repairs_drift(server: MlflowAuthServer, accounts: dict[str, str]) -> None:
    spec = _spec(server, accounts)
    admin_auth = (ADMIN, server.admin_password)
    # A grant someone raised by hand goes back to the declared level.
    key = {"username": INFERENCE, "resource_type": "registered_model", "resource_id": MODEL}
    revoke = "/api/3.0/mlflow/users/permissions/revoke"
    assert _status(server, "POST", revoke, admin_auth, key) == 200
    grant = {**key, "permission": "MANAGE"}
    assert (
        _status(server, "POST", "/api/3.0/mlflow/users/permissions/grant", admin_auth, grant) == 200
    )
    # A service password changed by hand is reset.
    other = secrets.token_urlsafe(18)
    change = {"username": UI, "password": other}
    assert (
        _status(server, "PATCH", "/api/2.0/mlflow/users/update-password", admin_auth, change) == 200
    )
    fixed = server.apply_accounts(spec)
    assert fixed["changed"] is True
    assert f"user {UI}: password reset" in fixed["actions"]
    assert any(
        a.startswith(f"user {INFERENCE}: READ on registered_model") for a in fixed["actions"]
    )
    assert server.apply_accounts(spec)["changed"] is False

    # The admin's password in the secrets folder is new: set through update-password with
    # the one last provisioned.
    new_admin = secrets.token_urlsafe(18)
    rotated = server.apply_accounts(
        {**spec, "admin": {"username": ADMIN, "password": new_admin,
                           "previous_password": server.admin_password}}
    )  # fmt: skip
    assert "admin admin: password set through update-password" in rotated["actions"]
    whoami = "/api/2.0/mlflow/users/current"
    assert _status(server, "GET", whoami, (ADMIN, new_admin)) == 200
    assert _status(server, "GET", whoami, admin_auth) == 401
    # Nobody knows the old one any more: the user store itself is updated.
    newest = secrets.token_urlsafe(18)
    lost = server.apply_accounts({**spec, "admin": {"username": ADMIN, "password": newest}})
    assert any("in the user store" in a for a in lost["actions"])
    assert _status(server, "GET", whoami, (ADMIN, newest)) == 200
    # Back to the fixture's admin for the other tests.
    server.apply_accounts(
        {**spec, "admin": {"username": ADMIN, "password": server.admin_password,
                           "previous_password": newest}}
    )  # fmt: skip
    assert _status(server, "GET", whoami, admin_auth) == 200


def test_remembered_logins_end_when_the_password_changes(
    server: MlflowAuthServer, accounts: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The role turns on MLflow's login cache (a password hash costs 350-470 ms of CPU on the
    VM); a password changed through the API must still stop working at once."""
    from mlflow.server.auth.config import read_auth_config

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(server.auth_config))
    assert read_auth_config().auth_cache_ttl_seconds > 0, "the rendered settings turn it off"
    whoami = "/api/2.0/mlflow/users/current"
    old = (UI, accounts[UI])
    assert _status(server, "GET", whoami, old) == 200
    assert _status(server, "GET", whoami, old) == 200  # now served from the cache
    new = secrets.token_urlsafe(18)
    change = {"username": UI, "password": new}
    admin_auth = (ADMIN, server.admin_password)
    assert (
        _status(server, "PATCH", "/api/2.0/mlflow/users/update-password", admin_auth, change) == 200
    )
    assert _status(server, "GET", whoami, old) == 401
    assert _status(server, "GET", whoami, (UI, new)) == 200
    # Back to the declared password for the other tests.
    assert "password reset" in " ".join(server.apply_accounts(_spec(server, accounts))["actions"])
    assert _status(server, "GET", whoami, old) == 200
