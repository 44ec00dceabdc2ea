"""The test-suite helpers themselves: real PostgreSQL, real Redis, real processes."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import urllib.request
import uuid

import psycopg2
import pytest
import redis

import services
from processes import Gunicorn, RQWorker


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def test_postgres_is_reachable_and_create_database_gives_a_fresh_database() -> None:
    server = services.postgres_url()
    assert "/" not in server.split("://", 1)[1], "server URL carries no database name"
    name = _unique("dw_services")
    url = services.create_database(server, name)
    try:
        assert url == f"{server}/{name}"
        conn = psycopg2.connect(url)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("CREATE TABLE leftover (id int)")
                cur.execute("SELECT current_database()")
                assert cur.fetchone() == (name,)
        finally:
            conn.close()
        # A session still open on the database must not stop create_database from recreating it.
        holder = psycopg2.connect(url)
        try:
            assert services.create_database(server, name) == url
        finally:
            holder.close()
        conn = psycopg2.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass('leftover')")
                assert cur.fetchone() == (None,)
        finally:
            conn.close()
    finally:
        services.drop_database(server, name)


def test_create_database_rejects_names_that_are_not_plain_identifiers() -> None:
    with pytest.raises(ValueError):
        services.create_database(services.postgres_url(), 'x"; DROP DATABASE postgres; --')


def test_redis_answers_ping() -> None:
    client = redis.Redis.from_url(services.redis_db_url(services.redis_url(), 15))
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_redis_db_url_replaces_the_index() -> None:
    assert services.redis_db_url("redis://127.0.0.1:6379", 3) == "redis://127.0.0.1:6379/3"
    assert services.redis_db_url("redis://h:1/0", 5) == "redis://h:1/5"


def test_start_redis_can_be_stopped_and_restarted_on_the_same_port() -> None:
    server = services.start_redis()
    client = redis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1)
    try:
        port = server.port
        assert client.set("k", "v") and client.ping()
        server.stop()
        assert not server.running
        with pytest.raises(redis.ConnectionError):
            client.ping()
        server.start()
        assert server.port == port and server.url.endswith(f":{port}")
        assert client.ping() is True
        assert client.get("k") is None, "a restarted throwaway Redis starts empty"
    finally:
        client.close()
        server.stop()


def test_free_port_returns_a_bindable_port() -> None:
    port = services.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_configured_but_unreachable_database_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        services.DATABASE_ENV, f"postgresql://postgres@127.0.0.1:{services.free_port()}"
    )
    with pytest.raises(
        services.ServiceUnavailable, match="TEST_DATABASE_URL is set to .* does not answer"
    ):
        services._resolve_postgres()


def test_configured_but_unreachable_redis_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(services.REDIS_ENV, f"redis://127.0.0.1:{services.free_port()}")
    with pytest.raises(
        services.ServiceUnavailable, match="TEST_REDIS_URL is set to .* does not answer"
    ):
        services._resolve_redis()


def test_missing_binaries_are_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "find_pg_bindir", lambda: None)
    monkeypatch.setattr(services, "find_redis_server", lambda: None)
    with pytest.raises(
        services.ServiceUnavailable, match=r"no initdb binary was found.*apt-get install postgresql"
    ):
        services.PostgresProcess()
    with pytest.raises(
        services.ServiceUnavailable, match=r"no redis-server.*apt-get install redis-server"
    ):
        services.RedisProcess()


@pytest.mark.slow
def test_throwaway_postgres_starts_from_the_installed_binaries() -> None:
    """The path CI takes when no server is running (as root it runs as the postgres user)."""
    with services.start_postgres() as server:
        url = services.create_database(server.url, "dw_throwaway")
        conn = psycopg2.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW fsync")
                assert cur.fetchone() == ("off",)
        finally:
            conn.close()
        base_dir = server.base_dir
    assert not os.path.exists(base_dir), "stop() removes the data directory"


@pytest.mark.slow
def test_gunicorn_helper_serves_and_collects_logs(tmp_path: os.PathLike[str]) -> None:
    app = os.path.join(tmp_path, "tiny_app.py")
    with open(app, "w") as fh:
        fh.write(
            textwrap.dedent("""
            import sys
            def app(environ, start_response):
                print("served", environ["PATH_INFO"], file=sys.stderr, flush=True)
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"hello " + environ.get("HTTP_X_NAME", "?").encode()]
        """)
        )
    with Gunicorn("tiny_app:app", env={"GREETING": "x"}, workers=1, cwd=str(tmp_path)) as web:
        request = urllib.request.Request(web.url + "/ping", headers={"X-Name": "slack"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.read() == b"hello slack"
        web.wait_for_log("served /ping", timeout=10)
    assert not web.running
    assert "Booting worker" in web.logs()
    assert "Control socket" not in web.logs(), "parallel servers must not share a control socket"


@pytest.mark.slow
def test_gunicorn_helper_reports_a_broken_app_with_its_log() -> None:
    with pytest.raises(RuntimeError, match="(?s)gunicorn did not start.*no_such_module"):
        Gunicorn("no_such_module:app", workers=1, timeout=15).start()


@pytest.mark.slow
def test_rq_worker_helper_runs_a_worker_process() -> None:
    url = services.redis_db_url(services.redis_url(), 14)
    worker = RQWorker(args=["rq.cli", "worker", "--url", url, "--burst", _unique("q")])
    with worker:
        assert worker.pid > 0
        assert worker.wait(timeout=30) == 0, worker.logs()
    assert "Listening on" in worker.logs() or "burst" in worker.logs().lower()
    assert sys.executable in worker.args
