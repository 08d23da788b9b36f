# Make MLflow's basic-auth accounts what the spec says, through the server's REST API.
# Usage: python mlflow_accounts.py < spec.json   (stdin: secrets never reach argv or a log)
#
# Spec: {"url": ..., "admin": {"username", "password", "previous_password"?},
#        "auth_database_uri"?: ..., "experiments": [names], "registered_models": [names],
#        "users": [{"username", "password",
#                   "grants": [{"resource_type": "experiment"|"registered_model",
#                               "resource": <experiment or model name>, "permission"}]}]}
# Prints one JSON line without secrets: {"changed": bool, "actions": [...]}.
#
# - The admin's password becomes spec's: already right, nothing; else PATCH
#   /api/2.0/mlflow/users/update-password as the admin with previous_password (the value last
#   provisioned); when nobody knows the old one any more, the user store is updated directly
#   (auth_database_uri), which is the only way left without a second admin.
# - Experiments and registered models are created by the admin when missing, so a service
#   account never owns them (their creator gets MANAGE).
# - Users are created, or their password reset by the admin, when it does not log in.
# - Grants: /api/3.0/mlflow/users/permissions/get gives the effective level; a different one
#   is revoked and granted again (MLflow 3.17 has no update for a user's grant).
# Standard library only: it runs in the server's venv and in the tests' one.
from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

TIMEOUT = 60


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any], what: str) -> None:
        super().__init__(
            f"{what}: HTTP {status} {body.get('error_code', '')} {body.get('message', '')}"
        )
        self.status = status
        self.code = body.get("error_code")


class Api:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def call(
        self,
        method: str,
        path: str,
        auth: tuple[str, str],
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request = urllib.request.Request(
            f"{self.url}{path}{query}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                answer = json.loads(raw or b"{}")
            except ValueError:
                answer = {"message": raw[:200].decode(errors="replace")}
            raise ApiError(
                exc.code, answer if isinstance(answer, dict) else {}, f"{method} {path}"
            ) from None
        return json.loads(raw or b"{}") if raw.strip() else {}

    def logs_in(self, username: str, password: str) -> bool:
        try:
            self.call("GET", "/api/2.0/mlflow/users/current", (username, password))
        except ApiError as exc:
            if exc.status == 401:
                return False
            raise
        return True


def ensure_admin(api: Api, spec: dict[str, Any], actions: list[str]) -> tuple[str, str]:
    admin = spec["admin"]
    name, password = admin["username"], admin["password"]
    if api.logs_in(name, password):
        return name, password
    previous = admin.get("previous_password")
    if previous and previous != password and api.logs_in(name, previous):
        api.call(
            "PATCH",
            "/api/2.0/mlflow/users/update-password",
            (name, previous),
            body={"username": name, "password": password, "current_password": previous},
        )
        actions.append(f"admin {name}: password set through update-password")
    elif spec.get("auth_database_uri"):
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore()
        store.init_db(spec["auth_database_uri"])
        store.update_user(name, password=password)
        actions.append(f"admin {name}: password set in the user store (the old one is unknown)")
    else:
        raise SystemExit(f"admin {name} does not log in and no user store was given")
    if not api.logs_in(name, password):
        raise SystemExit(f"admin {name} still does not log in after the password change")
    return name, password


def experiment_id(api: Api, admin: tuple[str, str], name: str, actions: list[str]) -> str:
    try:
        found = api.call(
            "GET", "/api/2.0/mlflow/experiments/get-by-name", admin, {"experiment_name": name}
        )
        return str(found["experiment"]["experiment_id"])
    except ApiError as exc:
        if exc.code != "RESOURCE_DOES_NOT_EXIST":
            raise
    created = api.call("POST", "/api/2.0/mlflow/experiments/create", admin, body={"name": name})
    actions.append(f"experiment {name} created")
    return str(created["experiment_id"])


def ensure_model(api: Api, admin: tuple[str, str], name: str, actions: list[str]) -> None:
    try:
        api.call("GET", "/api/2.0/mlflow/registered-models/get", admin, {"name": name})
        return
    except ApiError as exc:
        if exc.code != "RESOURCE_DOES_NOT_EXIST":
            raise
    api.call("POST", "/api/2.0/mlflow/registered-models/create", admin, body={"name": name})
    actions.append(f"registered model {name} created")


def ensure_user(api: Api, admin: tuple[str, str], user: dict[str, Any], actions: list[str]) -> None:
    name, password = user["username"], user["password"]
    # The usual case, one request: the user logs in, so it exists with this password.
    if api.logs_in(name, password):
        return
    try:
        api.call("GET", "/api/2.0/mlflow/users/get", admin, {"username": name})
    except ApiError as exc:
        if exc.code != "RESOURCE_DOES_NOT_EXIST":
            raise
        api.call(
            "POST",
            "/api/2.0/mlflow/users/create",
            admin,
            body={"username": name, "password": password},
        )
        actions.append(f"user {name} created")
        return
    # An admin changing another user's password needs no current_password.
    api.call(
        "PATCH",
        "/api/2.0/mlflow/users/update-password",
        admin,
        body={"username": name, "password": password},
    )
    actions.append(f"user {name}: password reset")


def ensure_grant(
    api: Api,
    admin: tuple[str, str],
    username: str,
    resource_type: str,
    resource_id: str,
    permission: str,
    actions: list[str],
) -> None:
    key = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
    now = api.call("GET", "/api/3.0/mlflow/users/permissions/get", admin, key)
    if now.get("permission") == permission:
        return
    try:
        api.call("POST", "/api/3.0/mlflow/users/permissions/revoke", admin, body=key)
    except ApiError as exc:
        if exc.code != "RESOURCE_DOES_NOT_EXIST":
            raise
    api.call(
        "POST",
        "/api/3.0/mlflow/users/permissions/grant",
        admin,
        body={**key, "permission": permission},
    )
    actions.append(
        f"user {username}: {permission} on {resource_type} {resource_id}"
        f" (was {now.get('permission')})"
    )


def ensure_account(
    api: Api,
    admin: tuple[str, str],
    user: dict[str, Any],
    experiments: dict[str, str],
    actions: list[str],
) -> None:
    ensure_user(api, admin, user, actions)
    for grant in user.get("grants", []):
        kind, resource = grant["resource_type"], grant["resource"]
        if kind == "experiment":
            resource = experiments.get(resource) or experiment_id(api, admin, resource, actions)
        ensure_grant(api, admin, user["username"], kind, resource, grant["permission"], actions)


def apply(spec: dict[str, Any]) -> list[str]:
    api = Api(spec["url"])
    actions: list[str] = []
    admin = ensure_admin(api, spec, actions)
    experiments = {
        name: experiment_id(api, admin, name, actions) for name in spec.get("experiments", [])
    }
    for name in spec.get("registered_models", []):
        ensure_model(api, admin, name, actions)
    # Every authenticated request costs the server a password hash (0.4-0.7 s measured on a
    # busy 2-core machine): the accounts are checked side by side, not one after another.
    with ThreadPoolExecutor(max_workers=4) as pool:
        checks = [
            pool.submit(ensure_account, api, admin, user, experiments, actions)
            for user in spec.get("users", [])
        ]
        for check in checks:
            check.result()
    return actions


def main() -> None:
    actions = apply(json.load(sys.stdin))
    print(json.dumps({"changed": bool(actions), "actions": actions}))


if __name__ == "__main__":
    main()
