"""The test harness itself: each throwaway server really serves its protocol."""

from __future__ import annotations

import secrets

import psycopg2

from tests.servers import MySQLServer, PostgresServer, S3Server


def test_postgres_accepts_sql(postgres: PostgresServer) -> None:
    dsn = postgres.create_database("harness_check")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SHOW server_version_num")
        assert int(cur.fetchone()[0]) >= 130000
        cur.execute("SELECT current_database()")
        assert cur.fetchone()[0] == "harness_check"


def test_mysql_database_is_utf8mb4(mysql: MySQLServer) -> None:
    password = secrets.token_urlsafe(12)
    mysql.create_database("mlflow_db_check", "mlflowuser", password)
    import pymysql

    conn = pymysql.connect(
        host="127.0.0.1",
        port=mysql.port,
        user="mlflowuser",
        password=password,
        database="mlflow_db_check",
    )
    with conn.cursor() as cur:
        cur.execute("SELECT @@character_set_database, VERSION()")
        charset, version = cur.fetchone()
        cur.execute("CREATE TABLE t (name VARCHAR(20))")
        cur.execute("INSERT INTO t VALUES (%s)", ("Árbol 🌲",))
        cur.execute("SELECT name FROM t")
        assert cur.fetchone()[0] == "Árbol 🌲"
    conn.close()
    assert charset == "utf8mb4"
    assert version


def test_s3_round_trip(s3: S3Server) -> None:
    client = s3.client()
    client.create_bucket(Bucket="harness-check")
    client.put_object(Bucket="harness-check", Key="a/b.txt", Body=b"forest")
    assert client.get_object(Bucket="harness-check", Key="a/b.txt")["Body"].read() == b"forest"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="harness-check")["Contents"]]
    assert keys == ["a/b.txt"]
