"""The MLflow server the pipeline talks to, configured as on the VM: MySQL backend (utf8mb4),
artifacts proxied to S3, Host header allow-list."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.mlflow_server import BACKEND_DATABASE, MlflowServer


def _get(server: MlflowServer, path: str, host: str) -> int:
    request = urllib.request.Request(f"{server.tracking_uri}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_only_the_allowed_host_headers_are_served(mlflow_server: MlflowServer):
    path = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(mlflow_server, path, f"127.0.0.1:{mlflow_server.port}") == 200
    assert _get(mlflow_server, path, f"localhost:{mlflow_server.port}") == 200
    assert _get(mlflow_server, path, "mlflow.attacker.example") == 403
    # Health stays open to any Host, so probes need no special header.
    assert _get(mlflow_server, "/health", "mlflow.attacker.example") == 200


def test_backend_is_the_utf8mb4_mysql_database(mlflow_server: MlflowServer, mysql):
    conn = mysql.connect(BACKEND_DATABASE)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT default_character_set_name FROM information_schema.schemata"
            " WHERE schema_name = %s",
            (BACKEND_DATABASE,),
        )
        assert cur.fetchone()[0] == "utf8mb4"
        cur.execute("SHOW TABLES")
        tables = {row[0] for row in cur.fetchall()}
    conn.close()
    assert {"experiments", "runs", "registered_models", "model_versions"} <= tables

    # Non-ASCII survives the round trip (a latin1 schema mangles it silently).
    client = MlflowClient(mlflow_server.tracking_uri)
    name = "forêt_couverture_✓"
    experiment_id = client.create_experiment(name)
    assert client.get_experiment(experiment_id).name == name


def test_server_stops_and_starts_with_its_data(mlflow_server: MlflowServer):
    client = MlflowClient(mlflow_server.tracking_uri)
    experiment_id = client.create_experiment("survives-a-restart")
    with mlflow_server.outage():
        assert not mlflow_server.running
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{mlflow_server.tracking_uri}/health", timeout=2)
    assert mlflow_server.health()
    assert client.get_experiment(experiment_id).name == "survives-a-restart"
