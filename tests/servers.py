"""Throwaway real servers for the tests: PostgreSQL, a MySQL-compatible server, MinIO, Redis.

Each runs from the Debian packages' binaries in its own temporary directory on a free loopback
port and is stopped (and its directory removed) when the test session ends. PostgreSQL and
MariaDB refuse to run as root, so as root they run as the packages' own system users.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


class ServerStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    check: Callable[[], bool], what: str, timeout: float = 60.0, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise ServerStartError(f"{what} did not come up within {timeout:.0f}s\n{tail}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run_as(user: str | None) -> dict[str, object]:
    """subprocess kwargs that drop root to `user` (no-op when not root)."""
    if user is None or os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None or os.geteuid() != 0:
        return
    pw = pwd.getpwnam(user)
    for p in [path, *path.rglob("*")]:
        os.chown(p, pw.pw_uid, pw.pw_gid)


def _postgres_bindir() -> Path:
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if found:
        return found[-1].parent
    which = shutil.which("initdb")
    if which:
        return Path(which).resolve().parent
    raise ServerStartError(
        "PostgreSQL server binaries not found: install the Debian package 'postgresql'"
    )


@dataclass
class PostgresServer:
    port: int
    datadir: Path
    bindir: Path
    user: str = "postgres"

    def dsn(
        self, dbname: str = "postgres", user: str | None = None, password: str | None = None
    ) -> str:
        auth = user or self.user
        if password:
            auth += f":{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(self.dsn())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.dsn(name)


@contextlib.contextmanager
def postgres_server(base: Path) -> Iterator[PostgresServer]:
    bindir = _postgres_bindir()
    os_user = "postgres" if os.geteuid() == 0 else None
    base.mkdir(parents=True, exist_ok=True)
    datadir, sockdir, log = base / "data", base / "sock", base / "postgres.log"
    sockdir.mkdir()
    log.touch()
    _chown_tree(base, os_user)
    port = free_port()
    subprocess.run(
        [
            bindir / "initdb",
            "-D",
            datadir,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        **_run_as(os_user),
    )
    opts = (
        f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    )
    subprocess.run(
        [bindir / "pg_ctl", "-D", datadir, "-l", log, "-o", opts, "-w", "-t", "60", "start"],
        check=True,
        capture_output=True,
        **_run_as(os_user),
    )
    server = PostgresServer(port=port, datadir=datadir, bindir=bindir)
    try:
        yield server
    finally:
        subprocess.run(
            [bindir / "pg_ctl", "-D", datadir, "-m", "immediate", "stop"],
            capture_output=True,
            **_run_as(os_user),
        )


@dataclass
class MySQLServer:
    port: int
    socket: Path
    root_password: str

    def url(self, database: str, user: str = "root", password: str | None = None) -> str:
        pw = self.root_password if password is None and user == "root" else (password or "")
        return f"mysql+pymysql://{user}:{pw}@127.0.0.1:{self.port}/{database}?charset=utf8mb4"

    def connect(self, database: str | None = None):  # noqa: ANN201 - pymysql connection
        import pymysql

        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            password=self.root_password,
            database=database,
            charset="utf8mb4",
            autocommit=True,
        )

    def create_database(self, name: str, user: str, password: str) -> None:
        conn = self.connect()
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            cur.execute("CREATE USER IF NOT EXISTS %s@'127.0.0.1'", (user,))
            cur.execute("ALTER USER %s@'127.0.0.1' IDENTIFIED BY %s", (user, password))
            cur.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO %s@'127.0.0.1'", (user,))
        conn.close()


def _mysql_binaries() -> tuple[str, str]:
    server = shutil.which("mariadbd", path="/usr/sbin:/usr/bin") or shutil.which(
        "mysqld", path="/usr/sbin:/usr/bin"
    )
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if not server or not install:
        raise ServerStartError(
            "MariaDB/MySQL server binaries not found: install the Debian package 'mariadb-server'"
        )
    return server, install


@contextlib.contextmanager
def mysql_server(base: Path, root_password: str) -> Iterator[MySQLServer]:
    server_bin, install_bin = _mysql_binaries()
    os_user = "mysql" if os.geteuid() == 0 else None
    base.mkdir(parents=True, exist_ok=True)
    datadir, sock, log = base / "data", base / "mysqld.sock", base / "mysqld.log"
    datadir.mkdir()
    _chown_tree(base, os_user)
    port = free_port()
    common = [f"--datadir={datadir}"]
    subprocess.run(
        [
            install_bin,
            "--no-defaults",
            *common,
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        check=True,
        capture_output=True,
        **_run_as(os_user),
    )
    proc = subprocess.Popen(
        [
            server_bin,
            "--no-defaults",
            *common,
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={sock}",
            f"--pid-file={base / 'mysqld.pid'}",
            f"--log-error={log}",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_bin",
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-doublewrite=0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **_run_as(os_user),
    )
    try:
        wait_for(lambda: sock.exists() and port_open(port), "MariaDB", log=log)
        # A fresh datadir has a passwordless root on the socket only; give it a password for TCP.
        import pymysql

        conn = pymysql.connect(unix_socket=str(sock), user="root", autocommit=True)
        with conn.cursor() as cur:
            cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
            cur.execute("ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY %s", (root_password,))
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
        conn.close()
        yield MySQLServer(port=port, socket=sock, root_password=root_password)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self):  # noqa: ANN201 - boto3 client
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def env(self) -> dict[str, str]:
        """The variables an S3 client (MLflow's artifact proxy, boto3) reads."""
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


REPO = Path(__file__).resolve().parent.parent


def minio_binary() -> Path:
    """The MinIO server binary: $MINIO_BINARY, else the one scripts/build-minio.sh built and
    cached for this machine (`make test` builds it before pytest)."""
    if os.environ.get("MINIO_BINARY"):
        return Path(os.environ["MINIO_BINARY"])
    found = subprocess.run(
        [REPO / "scripts" / "build-minio.sh", "--print"], capture_output=True, text=True
    )
    if found.returncode != 0:
        raise ServerStartError(
            "no MinIO binary: run scripts/build-minio.sh (make test does) or set MINIO_BINARY"
        )
    return Path(found.stdout.split()[0])


@dataclass
class MinioServer(S3Server):
    """A real MinIO server process that a test may stop and start again on the same port
    and data folder (an outage, then recovery)."""

    datadir: Path = Path()
    log: Path = Path()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    def start(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "HOME": str(self.datadir.parent),
        }
        address = f"127.0.0.1:{self.port}"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [minio_binary(), "server", "--quiet", "--address", address, self.datadir],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        live = f"{self.endpoint_url}/minio/health/live"
        wait_for(lambda: _http_ok(live), "MinIO", log=self.log)

    def stop(self, sig: int = 15) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - loopback only
        return bool(answer.status == 200)


@contextlib.contextmanager
def s3_server(base: Path, access_key: str, secret_key: str) -> Iterator[MinioServer]:
    """A throwaway real MinIO (built from its Go module) in its own folder on a free port."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "data").mkdir(exist_ok=True)
    server = MinioServer(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key=access_key,
        secret_key=secret_key,
        datadir=base / "data",
        log=base / "minio.log",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def redis_binary() -> Path:
    """Debian's redis-server; as root on a Debian-family host, installed when missing (as
    scripts/build-minio.sh builds MinIO when there is none), the way `make test` runs."""
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(found).exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            timeout=600,
        )
    if not Path(found).exists():
        raise ServerStartError("redis-server not found: install the Debian package 'redis-server'")
    return Path(found)


@dataclass
class RedisServer:
    """A real redis-server (Debian's package) with a generated password, on a free loopback
    port. The password is only in its 0600 config file and in what url() hands back."""

    port: int
    password: str
    base: Path
    proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    @property
    def log(self) -> Path:
        return self.base / "redis.log"

    def start(self) -> None:
        conf = self.base / "redis.conf"
        conf.touch(mode=0o600)
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode yes\n"
            f'requirepass {self.password}\ndir {self.base}\nsave ""\nappendonly no\n'
            f"logfile {self.log}\ndaemonize no\n"
        )
        self.proc = subprocess.Popen(
            [redis_binary(), str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: port_open(self.port), "redis-server", timeout=30, log=self.log)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def redis_server(base: Path, password: str) -> Iterator[RedisServer]:
    """A throwaway redis-server in its own folder (Celery's broker in the executor test)."""
    base.mkdir(parents=True, exist_ok=True)
    server = RedisServer(port=free_port(), password=password, base=base)
    server.start()
    try:
        yield server
    finally:
        server.stop()
