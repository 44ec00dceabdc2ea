"""Real PostgreSQL and Redis for the test suite.

The tests talk to real services. This module finds them, or starts throwaway
ones from the installed binaries, and says plainly what is missing when it can
do neither. It never skips.

Resolution order, for each service:

1. ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` when set. They are trusted: if
   they do not answer, that is an error (no silent fallback).
2. The usual local server (PostgreSQL on 127.0.0.1:5432 as user ``postgres``,
   Redis on 127.0.0.1:6379), unless ``TEST_FORCE_THROWAWAY=1``.
3. A throwaway server in a temporary directory, started from ``initdb`` /
   ``pg_ctl`` or ``redis-server`` and stopped when the process exits.

With pytest-xdist, the controller calls :func:`ensure_services` from
``pytest_configure``; it exports the two URLs into ``os.environ`` before the
workers are spawned, so every worker shares the same servers (step 1).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import typing as t
import urllib.parse

#: Environment variable holding the PostgreSQL server URL (no database name needed).
DATABASE_ENV = "TEST_DATABASE_URL"
#: Environment variable holding the Redis URL.
REDIS_ENV = "TEST_REDIS_URL"
#: Set to ``1`` to skip probing the default ports and always start throwaway servers.
FORCE_ENV = "TEST_FORCE_THROWAWAY"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PG_PORT = 5432
DEFAULT_REDIS_PORT = 6379

_lock = threading.RLock()
_postgres_url: str | None = None
_redis_url: str | None = None
_notes: dict[str, str] = {}


class ServiceUnavailable(RuntimeError):
    """A service the tests need cannot be reached or started; the message says what to do."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((DEFAULT_HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> bool:
    """Poll until ``host:port`` accepts a TCP connection; ``False`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _forced() -> bool:
    return os.environ.get(FORCE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return "(no log)"


def summary() -> str:
    """One line per service saying which server is used and where it came from."""
    return (
        "\n".join(f"{name}: {note}" for name, note in sorted(_notes.items()))
        or "no services resolved"
    )


def ensure_services() -> dict[str, str]:
    """Resolve (or start) PostgreSQL and Redis and export their URLs.

    Call it once in the pytest controller (``pytest_configure`` when
    ``not hasattr(config, "workerinput")``). It sets ``TEST_DATABASE_URL`` and
    ``TEST_REDIS_URL`` in ``os.environ`` so that xdist workers and any
    subprocess inherit them. Throwaway servers started here stop when the
    controller exits.

    Raises :class:`ServiceUnavailable` with an actionable message.
    """
    return {DATABASE_ENV: postgres_url(), REDIS_ENV: redis_url()}


# --------------------------------------------------------------------------- PostgreSQL


def _server_url(url: str) -> str:
    """Strip the database name (path), query and fragment from a PostgreSQL URL."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0] or "postgresql"
    if scheme == "postgres":
        scheme = "postgresql"
    return urllib.parse.urlunsplit((scheme, parts.netloc, "", "", ""))


def database_url(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server at ``server_url``."""
    return f"{_server_url(server_url)}/{name}"


def _pg_connect(url: str, timeout: int = 3) -> t.Any:
    import psycopg2

    return psycopg2.connect(url, connect_timeout=timeout)


def _pg_check(server_url: str) -> str | None:
    """``None`` when we can log in to database ``postgres``, else the error text."""
    import psycopg2

    try:
        conn = _pg_connect(database_url(server_url, "postgres"))
    except (psycopg2.Error, OSError) as exc:
        return str(exc).strip() or type(exc).__name__
    conn.close()
    return None


def postgres_url() -> str:
    """The URL of a PostgreSQL server the tests may use, without a database name.

    For example ``postgresql://postgres@127.0.0.1:5432``. Cached per process and
    exported as ``TEST_DATABASE_URL`` so child processes share it.
    """
    global _postgres_url
    with _lock:
        if _postgres_url is None:
            _postgres_url = _resolve_postgres()
            os.environ[DATABASE_ENV] = _postgres_url
        return _postgres_url


def _resolve_postgres() -> str:
    configured = os.environ.get(DATABASE_ENV, "").strip()
    if configured:
        url = _server_url(configured)
        error = _pg_check(url)
        if error is not None:
            raise ServiceUnavailable(
                f"{DATABASE_ENV} is set to {_redact(url)} but PostgreSQL does not answer there "
                f"(connecting to database 'postgres'): {error}. Start that server, fix the URL, "
                f"or unset {DATABASE_ENV} to let the tests find or start one."
            )
        _notes["PostgreSQL"] = f"{_redact(url)} (from {DATABASE_ENV})"
        return url

    if not _forced():
        url = f"postgresql://postgres@{DEFAULT_HOST}:{DEFAULT_PG_PORT}"
        if _pg_check(url) is None:
            _notes["PostgreSQL"] = f"{url} (already running)"
            return url

    server = start_postgres()
    _notes["PostgreSQL"] = f"{server.url} (throwaway, data in {server.base_dir})"
    return server.url


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)


def find_pg_bindir() -> str | None:
    """The directory holding ``initdb`` and ``pg_ctl``, newest version first; ``None`` if absent.

    Looks at ``PG_BINDIR``, then PATH, then the usual package locations (Debian keeps them in
    ``/usr/lib/postgresql/<version>/bin``, off PATH).
    """
    candidates: list[str] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(os.environ["PG_BINDIR"])
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
    for pattern in (
        "/usr/lib/postgresql/*/bin",
        "/usr/pgsql-*/bin",
        "/usr/local/pgsql/bin",
        "/opt/homebrew/opt/postgresql*/bin",
        "/usr/local/opt/postgresql*/bin",
    ):
        candidates.extend(sorted(glob.glob(pattern), key=_version_key, reverse=True))
    for directory in candidates:
        if all(os.access(os.path.join(directory, exe), os.X_OK) for exe in ("initdb", "pg_ctl")):
            return directory
    return None


def _scratch_dir(prefix: str) -> str:
    """A new private temp directory whose parents other users can traverse (for root -> postgres)
    and whose path is short enough for a Unix socket inside it."""
    base = tempfile.gettempdir()
    parents_ok = all(os.stat(p).st_mode & 0o001 for p in _parents(os.path.realpath(base)))
    if len(base) > 60 or not parents_ok:
        base = "/tmp"
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def _parents(path: str) -> list[str]:
    out = [path]
    while path != os.path.dirname(path):
        path = os.path.dirname(path)
        out.append(path)
    return out


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as when we are root (initdb refuses to run as root)."""
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


class PostgresProcess:
    """A throwaway PostgreSQL cluster in a temporary directory (trust auth, fsync off).

    ``url`` is the server URL (superuser ``postgres``, no database name). ``stop()``
    shuts the server down and deletes its data; it is safe to call twice.
    """

    def __init__(self, port: int | None = None) -> None:
        bindir = find_pg_bindir()
        if bindir is None:
            raise ServiceUnavailable(
                f"PostgreSQL is not running on {DEFAULT_HOST}:{DEFAULT_PG_PORT} and no initdb "
                "binary was found (looked on PATH and in /usr/lib/postgresql/*/bin): "
                f"install postgresql (apt-get install postgresql) or set {DATABASE_ENV}."
            )
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = _unprivileged_user()
            if self._user is None:
                raise ServiceUnavailable(
                    "PostgreSQL's initdb refuses to run as root and there is no 'postgres' or "
                    "'nobody' account to run it as: create one (useradd --system postgres), "
                    f"run the tests as a normal user, or set {DATABASE_ENV}."
                )
        self.bindir = bindir
        self.port = port or free_port()
        self.base_dir = _scratch_dir("driftwise-pg-")
        self.data_dir = os.path.join(self.base_dir, "data")
        self.log_path = os.path.join(self.base_dir, "postgres.log")
        self.url = f"postgresql://postgres@{DEFAULT_HOST}:{self.port}"
        self._running = False
        if self._user is not None:
            os.chown(self.base_dir, self._user.pw_uid, self._user.pw_gid)
        atexit.register(self.stop)

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, LC_ALL="C", LANG="C")
        kwargs: dict[str, t.Any] = {}
        if self._user is not None:
            env.update(HOME=self.base_dir, USER=self._user.pw_name, LOGNAME=self._user.pw_name)
            kwargs.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        return subprocess.run(
            args,
            cwd=self.base_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )

    def start(self) -> t.Self:
        """Initialise the cluster (first time) and start it; waits until it accepts logins."""
        if self._running:
            return self
        bin_ = self.bindir
        if not os.path.isdir(self.data_dir):
            result = self._run(
                [
                    f"{bin_}/initdb",
                    "-D",
                    self.data_dir,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                timeout=120,
            )
            if result.returncode != 0:
                raise ServiceUnavailable(
                    f"initdb failed (exit {result.returncode}) in {self.data_dir}:\n"
                    f"{result.stdout}{result.stderr}"
                )
        options = (
            f"-p {self.port} -k {self.base_dir} -c listen_addresses={DEFAULT_HOST} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        result = self._run(
            [
                f"{bin_}/pg_ctl",
                "-D",
                self.data_dir,
                "-l",
                self.log_path,
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ],
            timeout=90,
        )
        if result.returncode != 0:
            raise ServiceUnavailable(
                f"pg_ctl start failed (exit {result.returncode}):\n{result.stdout}{result.stderr}\n"
                f"--- {self.log_path} ---\n{_tail(self.log_path)}"
            )
        self._running = True
        deadline = time.monotonic() + 30
        while (error := _pg_check(self.url)) is not None:
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceUnavailable(
                    f"throwaway PostgreSQL started but refuses logins: {error}"
                )
            time.sleep(0.1)
        return self

    def stop(self, remove: bool = True) -> None:
        """Stop the server (fast shutdown) and, unless ``remove=False``, delete its directory."""
        if self._running:
            self._running = False
            try:
                self._run(
                    [
                        f"{self.bindir}/pg_ctl",
                        "-D",
                        self.data_dir,
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        "30",
                        "stop",
                    ],
                    timeout=60,
                )
            except subprocess.TimeoutExpired:
                self._run(
                    [f"{self.bindir}/pg_ctl", "-D", self.data_dir, "-m", "immediate", "stop"],
                    timeout=30,
                )
        if remove:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> t.Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_postgres(port: int | None = None) -> PostgresProcess:
    """Start a throwaway PostgreSQL server; the caller stops it (or uses it in a ``with``)."""
    server = PostgresProcess(port)
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise


def create_database(server_url: str, name: str) -> str:
    """Drop database ``name`` if it exists (disconnecting its sessions) and create it empty.

    Returns the database's full URL. ``name`` must be a plain identifier.
    """
    _check_identifier(name)
    conn = _pg_connect(database_url(server_url, "postgres"), timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            _drop(cur, conn.server_version, name)
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return database_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, disconnecting its sessions."""
    _check_identifier(name)
    conn = _pg_connect(database_url(server_url, "postgres"), timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            _drop(cur, conn.server_version, name)
    finally:
        conn.close()


def _check_identifier(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain database name: {name!r}")


def _drop(cur: t.Any, server_version: int, name: str) -> None:
    if server_version >= 130000:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    cur.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    cur.execute(f'DROP DATABASE IF EXISTS "{name}"')


# --------------------------------------------------------------------------- Redis


def redis_db_url(url: str, db: int) -> str:
    """``url`` pointing at database index ``db`` (replaces any index already in the path)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{db}"))


def _redis_check(url: str) -> str | None:
    """``None`` when Redis at ``url`` answers PING, else the error text."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return str(exc).strip() or type(exc).__name__
    finally:
        client.close()
    return None


def redis_url() -> str:
    """The URL of a Redis server the tests may use, e.g. ``redis://127.0.0.1:6379``.

    Pick a database index with :func:`redis_db_url`. Cached per process and exported
    as ``TEST_REDIS_URL`` so child processes share it.
    """
    global _redis_url
    with _lock:
        if _redis_url is None:
            _redis_url = _resolve_redis()
            os.environ[REDIS_ENV] = _redis_url
        return _redis_url


def _resolve_redis() -> str:
    configured = os.environ.get(REDIS_ENV, "").strip()
    if configured:
        error = _redis_check(configured)
        if error is not None:
            raise ServiceUnavailable(
                f"{REDIS_ENV} is set to {_redact(configured)} but Redis does not answer PING "
                f"there: {error}. Start that server, fix the URL, or unset {REDIS_ENV} to let "
                "the tests find or start one."
            )
        _notes["Redis"] = f"{_redact(configured)} (from {REDIS_ENV})"
        return configured
    if not _forced():
        url = f"redis://{DEFAULT_HOST}:{DEFAULT_REDIS_PORT}"
        if _redis_check(url) is None:
            _notes["Redis"] = f"{url} (already running)"
            return url
    server = start_redis()
    _notes["Redis"] = f"{server.url} (throwaway)"
    return server.url


def find_redis_server() -> str | None:
    """Path of the ``redis-server`` binary, or ``None``."""
    found = shutil.which("redis-server")
    if found:
        return found
    for path in ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(path, os.X_OK):
            return path
    return None


class RedisProcess:
    """A throwaway ``redis-server`` on a fixed loopback port, with no persistence.

    ``stop()`` kills it; ``start()`` brings it back on the same port (empty), which
    lets fault tests take Redis away and give it back. Stopped at interpreter exit.
    """

    def __init__(self, port: int | None = None) -> None:
        binary = find_redis_server()
        if binary is None:
            raise ServiceUnavailable(
                f"Redis is not running on {DEFAULT_HOST}:{DEFAULT_REDIS_PORT} and no redis-server "
                f"binary was found on PATH: install redis (apt-get install redis-server) or set "
                f"{REDIS_ENV}."
            )
        self.binary = binary
        self.port = port or free_port()
        self.url = f"redis://{DEFAULT_HOST}:{self.port}"
        self.base_dir = _scratch_dir("driftwise-redis-")
        self.log_path = os.path.join(self.base_dir, "redis.log")
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self._cleanup)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> t.Self:
        """Start (or restart) the server on ``self.port``; waits until it answers PING."""
        if self.running:
            return self
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            DEFAULT_HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            self.base_dir,
            "--logfile",
            self.log_path,
        ]
        self._proc = subprocess.Popen(
            args,
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        error: str | None = "not started"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            error = _redis_check(self.url)
            if error is None:
                return self
            time.sleep(0.05)
        self.stop()
        raise ServiceUnavailable(
            f"redis-server on port {self.port} did not come up ({error}):\n{_tail(self.log_path)}"
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s). Safe to call when stopped."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def logs(self) -> str:
        """The server's log file."""
        return _tail(self.log_path, lines=10_000)

    def _cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> t.Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self._cleanup()


def start_redis(port: int | None = None) -> RedisProcess:
    """Start a throwaway Redis (on ``port`` or a free one) and return it running."""
    return RedisProcess(port).start()
