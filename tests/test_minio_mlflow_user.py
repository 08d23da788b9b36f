"""MLflow's own MinIO user (role minio, tasks/users.yml): on a real MinIO, with the real `mc`
built by scripts/build-minio.sh, the role's own script (files/minio_user.py) and its own
policy template, fed the spec the role feeds it.

What is checked: the user can do what MLflow's artifact store needs in its bucket and nothing
else (no other bucket, no new bucket, no admin API); the script changes nothing on a second
run, applies a rotated secret, and repairs a changed policy, an extra policy and a disabled
user; the secret never appears on any command line (every mc argv is recorded, and the
process list is watched while the script runs); and a real MLflow server stores and serves
artifacts with only this user's keys.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import jinja2
import pytest
import yaml
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import REPO_ROOT
from tests.servers import MinioServer, MySQLServer, free_port, s3_server

ROLE = REPO_ROOT / "ansible" / "roles" / "minio"
SCRIPT = (ROLE / "files" / "minio_user.py").read_text()
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
GROUP_VARS = yaml.safe_load((REPO_ROOT / "ansible" / "group_vars" / "all" / "main.yml").read_text())
# The names the playbook uses: the bucket of group_vars, the user and policy of the role.
BUCKET = GROUP_VARS["mlops_s3_bucket"]
USER = GROUP_VARS["minio_mlflow_user"]
POLICY = DEFAULTS["minio_mlflow_policy"]
OTHER_BUCKET = "not-mlflows"


def mc_binary() -> Path:
    """mc: $MC_BINARY, else the one scripts/build-minio.sh built beside the server."""
    if os.environ.get("MC_BINARY"):
        return Path(os.environ["MC_BINARY"])
    found = subprocess.run(
        [REPO_ROOT / "scripts" / "build-minio.sh", "--print"], capture_output=True, text=True
    )
    if found.returncode != 0:
        pytest.skip("no mc binary: run scripts/build-minio.sh (make test does) or set MC_BINARY")
    return Path(found.stdout.split()[1])


def policy_document(bucket: str = BUCKET) -> dict:
    """The role's policy template, rendered as the role's template lookup renders it."""
    text = (ROLE / "templates" / "mlflow-artifacts-policy.json.j2").read_text()
    return json.loads(jinja2.Template(text).render(minio_mlflow_bucket=bucket))


@dataclass
class Setup:
    server: MinioServer
    base: Path
    argv_log: Path

    @property
    def mc_argvs(self) -> list[list[str]]:
        """Every command line mc was started with, by the script or by the wrapper."""
        if not self.argv_log.exists():
            return []
        records = self.argv_log.read_bytes().split(b"\0\n")
        return [r.decode().split("\0") for r in records if r]

    def root_mc(self, *args: str) -> dict:
        done = subprocess.run(
            [self.base / "mlops-mc", "--json", *args], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    def client(self, secret: str):  # noqa: ANN201 - boto3 client
        return boto3.client(
            "s3",
            endpoint_url=self.server.endpoint_url,
            aws_access_key_id=USER,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )


@pytest.fixture(scope="module")
def setup(server_root: Path) -> Iterator[Setup]:
    """A MinIO of its own, its buckets made as provisioning makes them (root), and the two mc
    commands of the role's spec: mlops-mc (as root, alias local) and mc itself. Both go
    through a shim that records mc's argv, then runs the real mc."""
    base = server_root / "minio-mlflow-user"
    with s3_server(base, access_key="mlops-admin", secret_key=secrets.token_urlsafe(30)) as server:
        mc = mc_binary()
        argv_log = base / "mc-argv.log"
        shim = base / "mc"
        shim.write_text(
            "#!/bin/sh\n"
            f"printf '%s\\0' \"$@\" >>'{argv_log}'; printf '\\n' >>'{argv_log}'\n"
            f"exec '{mc}' \"$@\"\n"
        )
        shim.chmod(0o700)
        # The role's wrapper (templates/mlops-mc.sh.j2) in this test's terms: the root
        # credentials in mc's environment as MC_HOST_local, a private config folder.
        (base / "mc-root").mkdir(mode=0o700, exist_ok=True)
        wrapper = base / "mlops-mc"
        wrapper.write_text(
            "#!/bin/sh\n"
            f'MC_HOST_local="http://{server.access_key}:{server.secret_key}@127.0.0.1:{server.port}"\n'
            "export MC_HOST_local\n"
            f"exec '{shim}' --config-dir '{base / 'mc-root'}' --quiet \"$@\"\n"
        )
        wrapper.chmod(0o700)
        root = server.client()
        for bucket in (BUCKET, OTHER_BUCKET):
            root.create_bucket(Bucket=bucket)
        root.put_object(Bucket=OTHER_BUCKET, Key="private.txt", Body=b"not MLflow's")
        yield Setup(server=server, base=base, argv_log=argv_log)


def ensure_user(setup: Setup, secret: str, policy: dict | None = None) -> list[str]:
    """Run the role's script with the spec tasks/users.yml gives it; what it changed. The
    process list is watched all the while for the secret."""
    spec = {
        "admin": [str(setup.base / "mlops-mc")],
        "alias": "local",
        "mc": [str(setup.base / "mc"), "--quiet"],
        "endpoint": setup.server.endpoint_url,
        "user": USER,
        "secret": secret,
        "policy_name": POLICY,
        "policy": policy or policy_document(),
        "bucket": BUCKET,
    }
    seen: list[str] = []
    done_event = threading.Event()

    def watch() -> None:
        needle = secret.encode()
        while not done_event.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    if needle in cmdline.read_bytes():
                        seen.append(str(cmdline))
                except OSError:
                    pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT], input=json.dumps(spec), capture_output=True, text=True
        )
    finally:
        done_event.set()
        watcher.join()
    assert secret not in done.stdout + done.stderr, "the script printed the secret"
    assert not seen, f"the secret was on a command line: {seen}"
    assert all(secret not in arg for argv in setup.mc_argvs for arg in argv), setup.mc_argvs
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["changed"]


def sorted_lists(policy: dict) -> dict:
    statements = [
        {k: sorted(v) if isinstance(v, list) else v for k, v in s.items()}
        for s in policy["Statement"]
    ]
    return {**policy, "Statement": statements}


def error_code(call, **kwargs) -> str:  # noqa: ANN001 - a boto3 client method
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return str(caught.value.response["Error"]["Code"])


def admin_api(endpoint: str, access_key: str, secret: str) -> tuple[int, str]:
    """GET /minio/admin/v3/info signed as mc signs it (SigV4 with the payload's hash): the HTTP
    status and the error code."""
    url = f"{endpoint}/minio/admin/v3/info"
    request = AWSRequest(method="GET", url=url)
    S3SigV4Auth(Credentials(access_key, secret), "s3", "us-east-1").add_auth(request)
    try:
        with urllib.request.urlopen(  # noqa: S310 - loopback only
            urllib.request.Request(url, headers=dict(request.headers)), timeout=30
        ) as answer:
            return int(answer.status), ""
    except urllib.error.HTTPError as exc:
        return int(exc.code), str(json.loads(exc.read() or b"{}").get("Code", ""))


def test_the_policy_names_only_the_bucket() -> None:
    statements = policy_document("some-bucket")["Statement"]
    resources = {r for s in statements for r in s["Resource"]}
    assert resources == {"arn:aws:s3:::some-bucket", "arn:aws:s3:::some-bucket/*"}
    assert all(s["Effect"] == "Allow" for s in statements)
    assert {a for s in statements for a in s["Action"]} == {
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:ListBucket",
        "s3:GetBucketLocation",
        "s3:ListMultipartUploadParts",
        "s3:AbortMultipartUpload",
    }


def test_the_user_reaches_its_bucket_and_nothing_else(setup: Setup) -> None:
    # From nothing, whichever test ran before on this server.
    for what in (["user", "remove", "local", USER], ["policy", "remove", "local", POLICY]):
        subprocess.run([setup.base / "mlops-mc", "admin", *what], capture_output=True)
    secret = secrets.token_urlsafe(30)
    changed = ensure_user(setup, secret)
    assert changed == ["policy created", "user created", "policy attached"], changed
    assert setup.root_mc("admin", "user", "info", "local", USER)["policyName"] == POLICY

    s3 = setup.client(secret)
    s3.put_object(Bucket=BUCKET, Key="run/artifacts/model.pkl", Body=b"weights")
    assert s3.get_object(Bucket=BUCKET, Key="run/artifacts/model.pkl")["Body"].read() == b"weights"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="run/")["Contents"]
    assert [o["Key"] for o in listed] == ["run/artifacts/model.pkl"]
    s3.get_bucket_location(Bucket=BUCKET)
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="run/big.bin")["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key="run/big.bin", UploadId=upload, PartNumber=1, Body=b"x")
    parts = s3.list_parts(Bucket=BUCKET, Key="run/big.bin", UploadId=upload)["Parts"]
    assert [p["PartNumber"] for p in parts] == [1]
    s3.abort_multipart_upload(Bucket=BUCKET, Key="run/big.bin", UploadId=upload)
    s3.delete_object(Bucket=BUCKET, Key="run/artifacts/model.pkl")
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="run/")["KeyCount"] == 0

    # MinIO lists only the buckets a user may use: never the other one.
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} <= {BUCKET}
    assert error_code(s3.create_bucket, Bucket="mlops-new-bucket") == "AccessDenied"
    assert error_code(s3.get_object, Bucket=OTHER_BUCKET, Key="private.txt") == "AccessDenied"
    assert error_code(s3.list_objects_v2, Bucket=OTHER_BUCKET) == "AccessDenied"
    assert error_code(s3.put_object, Bucket=OTHER_BUCKET, Key="x", Body=b"x") == "AccessDenied"
    assert error_code(s3.delete_bucket, Bucket=BUCKET) == "AccessDenied"
    policy = json.dumps(policy_document())
    assert error_code(s3.put_bucket_policy, Bucket=BUCKET, Policy=policy) == "AccessDenied"
    # The admin API: refused to the user, answered to root with the same signing code.
    endpoint = setup.server.endpoint_url
    assert admin_api(endpoint, USER, secret) == (403, "AccessDenied")
    assert admin_api(endpoint, setup.server.access_key, setup.server.secret_key) == (200, "")


def test_a_second_run_changes_nothing_and_a_rotated_secret_is_applied(setup: Setup) -> None:
    secret = secrets.token_urlsafe(30)
    ensure_user(setup, secret)
    assert ensure_user(setup, secret) == []

    rotated = secrets.token_urlsafe(30)
    assert ensure_user(setup, rotated) == ["secret set"]
    assert ensure_user(setup, rotated) == []
    assert setup.client(rotated).list_objects_v2(Bucket=BUCKET)["KeyCount"] >= 0
    old = setup.client(secret)
    assert error_code(old.list_objects_v2, Bucket=BUCKET) == "SignatureDoesNotMatch"
    info = setup.root_mc("admin", "user", "info", "local", USER)
    assert (info["policyName"], info["userStatus"]) == (POLICY, "enabled")


def test_drift_is_repaired(setup: Setup) -> None:
    secret = secrets.token_urlsafe(30)
    ensure_user(setup, secret)
    # Someone widened the policy, attached another and disabled the user.
    wider = policy_document()
    wider["Statement"][1]["Resource"].append(f"arn:aws:s3:::{OTHER_BUCKET}/*")
    assert ensure_user(setup, secret, policy=wider) == ["policy updated"]
    setup.root_mc("admin", "policy", "attach", "local", "readwrite", "--user", USER)
    setup.root_mc("admin", "user", "disable", "local", USER)

    changed = ensure_user(setup, secret)
    assert changed == ["policy updated", "user enabled", "detached readwrite"], changed
    info = setup.root_mc("admin", "user", "info", "local", USER)
    assert (info["policyName"], info["userStatus"]) == (POLICY, "enabled")
    current = setup.root_mc("admin", "policy", "info", "local", POLICY)["policyInfo"]["Policy"]
    # MinIO keeps the document with each statement's actions sorted.
    assert sorted_lists(current) == sorted_lists(policy_document())
    s3 = setup.client(secret)
    assert error_code(s3.get_object, Bucket=OTHER_BUCKET, Key="private.txt") == "AccessDenied"
    assert ensure_user(setup, secret) == []


def test_the_secret_reaches_mc_only_on_stdin_and_in_its_environment(setup: Setup) -> None:
    """ensure_user checks every recorded mc argv and the process list for the secret; here:
    the two calls that carry it (setting it, and the check as the user) were among them."""
    setup.argv_log.unlink(missing_ok=True)
    secret = secrets.token_urlsafe(30)
    changed = ensure_user(setup, secret)
    assert {"user created", "secret set"} & set(changed), changed
    argvs = setup.mc_argvs
    assert any(argv[-5:] == ["admin", "user", "add", "local", USER] for argv in argvs), argvs
    assert any("ls" in argv and argv[-1].startswith("check/") for argv in argvs), argvs
    assert all(secret not in " ".join(argv) for argv in argvs)


def test_mlflow_stores_and_serves_artifacts_with_only_this_user(
    setup: Setup, mysql: MySQLServer, tmp_path: Path, server_root: Path
) -> None:
    from mlflow.tracking import MlflowClient

    from tests.mlflow_server import MlflowServer

    secret = secrets.token_urlsafe(30)
    ensure_user(setup, secret)
    password = secrets.token_urlsafe(18)
    mysql.create_database("mlflow_minio_user", "mlflow_minio_user", password)
    server = MlflowServer(
        port=free_port(),
        backend_store_uri=mysql.url(
            "mlflow_minio_user", user="mlflow_minio_user", password=password
        ),
        base=server_root / "mlflow-minio-user",
        # What /etc/mlops/mlflow.env gives the server: this user's keys, not root's.
        s3_env={
            "MLFLOW_S3_ENDPOINT_URL": setup.server.endpoint_url,
            "AWS_ACCESS_KEY_ID": USER,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
        },
        artifacts_destination=f"s3://{BUCKET}",
    )
    server.start()
    try:
        client = MlflowClient(server.tracking_uri)
        run = client.create_run(client.create_experiment("minio-mlflow-user"))
        (tmp_path / "note.txt").write_text("through the proxy, as user mlflow")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"), artifact_path="notes")
        assert [a.path for a in client.list_artifacts(run.info.run_id, "notes")] == [
            "notes/note.txt"
        ]
        (tmp_path / "back").mkdir()
        local = client.download_artifacts(run.info.run_id, "notes/note.txt", str(tmp_path / "back"))
        assert Path(local).read_text() == "through the proxy, as user mlflow"
        keys = [
            o["Key"]
            for o in setup.server.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])
        ]
        assert any(k.endswith(f"{run.info.run_id}/artifacts/notes/note.txt") for k in keys), keys
    finally:
        server.stop()
