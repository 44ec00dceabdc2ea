"""The benchmarks' world: PostgreSQL, Redis, the emulator, the host app, workers and gunicorn.

:class:`Bench` starts what a run needs (a fresh PostgreSQL database, a throwaway Redis, the Slack
emulator in its own process), seeds orgs with real installations through the emulator's consent
flow, and starts worker and gunicorn processes on demand. Everything it started is stopped by
:meth:`Bench.close`, which also runs at interpreter exit.
"""
from __future__ import annotations

import atexit
import datetime as dt
import itertools
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import typing as t

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import services
from processes import Gunicorn, ManagedProcess, RQWorker, _gunicorn_isolation_args

from . import emulator as emu
from . import jobs
from .jobs import ERROR_TEXT

#: The queue of the package (kept literal so a refactor of the package cannot silently move it).
QUEUE = "driftwise_slack"
#: A channel rate so high that pacing never holds a post back (throughput benchmarks).
UNPACED = "100000 per second"
#: Final delivery statuses.
FINAL = ("sent", "skipped", "failed")


class Org(t.NamedTuple):
    """A seeded org with an installation: its id, slug, owner token, workspace and channels."""

    id: str
    slug: str
    token: str
    team: str
    channels: tuple[str, ...]


class EmulatorControl:
    """The emulator's control API."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()

    def fault(self, **rule: t.Any) -> None:
        self.http.post(f"{self.url}/_emulator/faults", json=rule, timeout=10).raise_for_status()

    def clear_faults(self) -> None:
        self.http.delete(f"{self.url}/_emulator/faults", timeout=10).raise_for_status()

    def configure(self, **options: t.Any) -> None:
        self.http.post(f"{self.url}/_emulator/config", json=options,
                       timeout=10).raise_for_status()

    def counts(self) -> dict[str, int]:
        """Exact calls per method since start (the log itself is not transferred)."""
        body = self.http.get(f"{self.url}/_emulator/calls", params={"method": "-"},
                             timeout=30).json()
        return t.cast(dict[str, int], body["counts"])

    def calls(self, method: str) -> list[dict[str, t.Any]]:
        body = self.http.get(f"{self.url}/_emulator/calls", params={"method": method},
                             timeout=60).json()
        return t.cast(list[dict[str, t.Any]], body["calls"])

    def messages(self, channel: str) -> list[dict[str, t.Any]]:
        body = self.http.get(f"{self.url}/_emulator/messages", params={"channel": channel},
                             timeout=60).json()
        return t.cast(list[dict[str, t.Any]], body["messages"])

    def consent(self, authorize_url: str, *, team: str, channel: str) -> str:
        """Approve the consent form as a person would; returns the redirect back to the host."""
        from urllib.parse import parse_qs, urlsplit

        query = {k: v[0] for k, v in parse_qs(urlsplit(authorize_url).query).items()}
        form = {**query, "team": team, "channel": channel, "action": "allow"}
        response = self.http.post(f"{self.url}/oauth/v2/authorize", data=form,
                                  allow_redirects=False, timeout=10)
        if response.status_code != 302:
            raise RuntimeError(f"consent failed: {response.status_code}")
        return response.headers["Location"]


class Bench:
    """One benchmark run's services, seed and processes."""

    def __init__(self, *, log: t.Callable[[str], None] = print,
                 emulator_server: str = "gunicorn", emulator_threads: int = 16) -> None:
        self.log = log
        self.scratch = tempfile.mkdtemp(prefix="dw-bench-")
        self.processes: list[ManagedProcess] = []
        self._closed = False
        self._run = f"{os.getpid()}-{int(time.time())}"
        self._seq = itertools.count(1)
        self.notes: dict[str, str] = {}
        #: Data one benchmark leaves for another (e.g. web worker memory from "api").
        self.extras: dict[str, t.Any] = {}
        atexit.register(self.close)

        self.pg_server = services.postgres_url()
        self.db_name = f"dw_bench_{os.getpid()}"
        self.database_url = services.create_database(self.pg_server, self.db_name)
        self.notes["PostgreSQL"] = _pg_version(self.database_url) + (
            ", already running on this machine" if "already running" in services.summary()
            else ", a throwaway server started by the run")
        self.redis_server = services.start_redis() if services.find_redis_server() else None
        self.redis_url = self.redis_server.url if self.redis_server else services.redis_db_url(
            services.redis_url(), 14)
        self.notes["Redis"] = _redis_version(self.redis_url) + (
            ", a throwaway server started by the run" if self.redis_server
            else ", already running on this machine")
        self.key = secrets.token_urlsafe(32)

        port = services.free_port()
        self.emulator_server = emulator_server
        if emulator_server == "gunicorn":
            # One process (the emulator's state is in memory), threads, HTTP keep-alive.
            self.emulator = self.spawn(ManagedProcess(
                [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", "1",
                 "--threads", str(emulator_threads), "--bind", f"127.0.0.1:{port}",
                 "--keep-alive", "30", "--backlog", "2048", "--log-level", "warning",
                 *_gunicorn_isolation_args(),
                 "--access-logfile", "/dev/null", "benchmarks.emulator:wsgi_app()"],
                log_dir=self.scratch, env={"PYTHONPATH": ROOT}), "emulator")
            self.emulator.wait_until(lambda: services.wait_for_port("127.0.0.1", port, 0.2)
                                     and _answers(f"http://127.0.0.1:{port}/_emulator/config"),
                                     timeout=30, message="emulator answering")
        else:
            self.emulator = self.spawn(ManagedProcess(
                [sys.executable, "-m", "benchmarks.emulator", "--port", str(port)],
                log_dir=self.scratch), "emulator")
            self.emulator.wait_for_log("emulator listening", timeout=30)
        self.emulator_url = f"http://127.0.0.1:{port}"
        self.slack = EmulatorControl(self.emulator_url)

        self.config: dict[str, t.Any] = {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "DRIFTWISE_ENCRYPTION_KEY": self.key,
            "SLACK_CLIENT_ID": "demo-client-id",
            "SLACK_CLIENT_SECRET": "demo-client-secret",
            "SLACK_API_URL": self.emulator_url + "/api/",
            "SLACK_AUTHORIZE_URL": self.emulator_url + "/oauth/v2/authorize",
            "SLACK_CALLBACK_RATE_LIMIT": "100000 per minute",
            "SLACK_CHANNEL_RATE": UNPACED,
            # One Slack message per delivery, as these benchmarks have always measured: the
            # conversation features (threads, edits, digests) are on only where a benchmark
            # says so (storm).
            "SLACK_THREADS": "off",
            "SLACK_DIGEST_MIN": "0",
            "DRIFTWISE_BASE_URL": "https://driftwise.bench",
        }
        self.app = self.make_app()
        self.orgs: list[Org] = []
        self.acme: Org | None = None

    # -- processes ------------------------------------------------------------------------

    def spawn(self, proc: ManagedProcess, name: str) -> t.Any:
        proc.name = name
        proc.stdout_path = os.path.join(proc.log_dir, f"{name}-{len(self.processes)}.out.log")
        proc.stderr_path = os.path.join(proc.log_dir, f"{name}-{len(self.processes)}.err.log")
        self.processes.append(proc)
        proc.start()
        return proc

    def env(self, **overrides: t.Any) -> dict[str, str | None]:
        """The environment of a worker or web process sharing this run's services."""
        env: dict[str, str | None] = {k: str(v) for k, v in self.config.items()}
        env.update({"DRIFTWISE_DEMO": None, "FLASK_DEBUG": None, "PYTHONPATH": ROOT})
        env.update({k: (None if v is None else str(v)) for k, v in overrides.items()})
        return env

    def start_workers(self, count: int, *, args: t.Sequence[str] | None = None,
                      env: t.Mapping[str, t.Any] | None = None, name: str = "worker",
                      timeout: float = 60.0) -> list[RQWorker]:
        """Start ``count`` worker processes and wait until all are registered in Redis."""
        from redis import Redis

        connection = Redis.from_url(self.redis_url)
        before = connection.scard("rq:workers")
        env = {jobs.MESSAGE_ENV: json.dumps(jobs.message()), **(env or {})}
        kwargs: dict[str, t.Any] = {"env": self.env(**env), "log_dir": self.scratch}
        if args is not None:
            kwargs["args"] = list(args)
        workers = [self.spawn(RQWorker(**kwargs), name) for _ in range(count)]
        deadline = time.monotonic() + timeout
        while connection.scard("rq:workers") < before + count:
            for worker in workers:
                if not worker.running:
                    raise RuntimeError(f"{name} exited:\n{worker.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}s did not register within {timeout:.0f}s")
            time.sleep(0.05)
        connection.close()
        return workers

    def stop(self, procs: t.Iterable[ManagedProcess]) -> None:
        for proc in procs:
            proc.stop(timeout=10)

    def gunicorn(self, *, workers: int = 2, app_module: str = "wsgi:app",
                 env: t.Mapping[str, t.Any] | None = None,
                 extra: t.Sequence[str] = ()) -> Gunicorn:
        """gunicorn with sync workers on a free loopback port, ready when /healthz answers."""
        args = ["--worker-class", "sync", "--access-logfile", "/dev/null",
                "--error-logfile", "-", "--log-level", "warning", "--timeout", "60",
                "--backlog", "2048", *extra]
        web = Gunicorn(app_module, env=self.env(**(env or {})), workers=workers,
                       extra_args=args, ready_path="/healthz", log_dir=self.scratch)
        return t.cast(Gunicorn, self.spawn(web, "gunicorn"))

    # -- the app, the seed ----------------------------------------------------------------

    def make_app(self, **overrides: t.Any) -> t.Any:
        from driftwise_slack.reference_host import create_app

        old = {k: os.environ.pop(k, None) for k in ("DRIFTWISE_DEMO",)}
        try:
            return create_app({**self.config, **overrides})
        finally:
            for k, v in old.items():
                if v is not None:
                    os.environ[k] = v

    def cli(self, *args: str) -> dict[str, t.Any]:
        result = self.app.test_cli_runner().invoke(args=["host", *args])
        if result.exit_code != 0:
            raise RuntimeError(f"host {' '.join(args)} failed: {result.output}")
        return t.cast(dict[str, t.Any], json.loads(result.output.strip().splitlines()[-1]))

    def seed(self, workspaces: int = emu.WORKSPACES) -> None:
        """Orgs on the Team plan, each with an owner and a real installation of its own
        workspace (the emulator's consent flow, the callback in the host), plus one for Acme."""
        self.cli("init-db")
        client = self.app.test_client()
        for i in range(workspaces):
            channels = tuple(emu.channel_id(i, j) for j in range(emu.CHANNELS))
            self.orgs.append(self._install(client, f"bench-{i:02d}", emu.team_id(i), channels))
        self.acme = self._install(client, "bench-acme", "T0ACME01", ("C0ALERTS",))

    def _install(self, client: t.Any, slug: str, team: str, channels: tuple[str, ...]) -> Org:
        org_id = str(self.cli("create-org", slug, "--plan", "team")["org_id"])
        token = str(self.cli("add-user", slug, f"owner@{slug}.test", "--role", "owner")["token"])
        started = client.post("/api/v2/webhooks/slack/install",
                              headers={"Authorization": f"Bearer {token}"})
        if started.status_code != 200:
            raise RuntimeError(f"install start failed: {started.get_data(as_text=True)}")
        location = self.slack.consent(started.get_json()["url"], team=team, channel=channels[0])
        from urllib.parse import urlsplit

        parts = urlsplit(location)
        done = client.get(parts.path + "?" + parts.query)
        if done.status_code != 302 or "slack=connected" not in done.headers["Location"]:
            raise RuntimeError(f"install of {slug} failed: {done.status_code}")
        return Org(org_id, slug, token, team, channels)

    # -- events and the queue -------------------------------------------------------------

    def event(self, org: Org, channel: str, *, name: str | None = None) -> t.Any:
        """A fresh scheduled-scan failure for ``org`` to ``channel`` (unique run id)."""
        from driftwise_slack.host import EventType, ScanEvent

        n = next(self._seq)
        return ScanEvent(type=EventType.SCHEDULED_SCAN_FAILED, org_id=org.id,
                         schedule_id=str(1000 + n % 50), schedule_name=name or f"nightly-{n % 50}",
                         channel=channel, run_id=f"{self._run}-{n}", error=ERROR_TEXT,
                         consecutive_failures=2, disable_after=3,
                         occurred_at=dt.datetime.now(dt.UTC))

    def spread(self, count: int) -> list[tuple[Org, str]]:
        """``count`` (org, channel) pairs round-robin over every seeded org and channel."""
        pairs = [(org, ch) for org in self.orgs for ch in org.channels]
        return [pairs[i % len(pairs)] for i in range(count)]

    def dispatch(self, events: t.Iterable[t.Any]) -> list[float]:
        """Dispatch each event in-process (own transaction each); returns each call's seconds."""
        from driftwise_slack.dispatch import dispatch
        from driftwise_slack.runtime import get_runtime

        durations: list[float] = []
        with self.app.app_context():
            runtime = get_runtime(self.app)
            for event in events:
                start = time.perf_counter()
                # What SlackIntegration.dispatch does: one Deps per call, then the use-case.
                dispatch(runtime.deps(), event)
                durations.append(time.perf_counter() - start)
        return durations

    def bot_token(self, org: Org) -> str:
        """The org's bot token, decrypted with the app's vault (for the baselines only)."""
        from driftwise_slack.runtime import get_runtime

        row = self.sql("SELECT token_sealed FROM slack_installations WHERE org_id = :org",
                       org=org.id)[0]
        token: str = get_runtime(self.app).vault.open(row[0], org_id=org.id, team_id=org.team)
        return token

    def queue_bulk(self, pairs: t.Sequence[tuple[Org, str]], *, batch: int = 500) -> None:
        """Queue a backlog through the public ``dispatch(event, session=...)``: ``batch`` events
        per host transaction, each job queued after its commit. Faster than one transaction per
        event (the dispatch benchmark times that case) and uses nothing but the package's API."""
        from driftwise_slack.dispatch import dispatch
        from driftwise_slack.runtime import get_runtime

        with self.app.app_context():
            runtime = get_runtime(self.app)
            session = runtime.session()
            try:
                for i, (org, channel) in enumerate(pairs, 1):
                    dispatch(runtime.deps(session), self.event(org, channel),
                             in_caller_transaction=True)
                    if i % batch == 0:
                        session.commit()
                session.commit()
            finally:
                runtime.remove_session()

    def redis(self) -> t.Any:
        from redis import Redis

        return Redis.from_url(self.redis_url)

    def sql(self, statement: str, **params: t.Any) -> list[t.Any]:
        import sqlalchemy as sa

        with self.app.app_context():
            from driftwise_slack.runtime import get_runtime

            with get_runtime(self.app).engine.begin() as conn:
                result = conn.execute(sa.text(statement), params)
                return list(result) if result.returns_rows else []

    def statuses(self) -> dict[str, int]:
        return {row[0]: int(row[1]) for row in self.sql(
            "SELECT status, count(*) FROM slack_deliveries GROUP BY status")}

    def clean(self) -> None:
        """Between rounds (no worker running): empty Redis, the deliveries and the faults."""
        connection = self.redis()
        connection.flushdb()
        connection.close()
        self.sql("DELETE FROM slack_deliveries")
        self.slack.clear_faults()
        self.slack.configure(per_second=None)

    def wait(self, predicate: t.Callable[[], t.Any], *, timeout: float, interval: float = 0.02,
             what: str = "condition", procs: t.Sequence[ManagedProcess] = ()) -> t.Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            for proc in procs:
                if not proc.running:
                    raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not met within {timeout:.0f}s")
            time.sleep(interval)

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self.processes):
            try:
                proc.stop(timeout=10)
            except Exception as exc:  # noqa: BLE001  (keep stopping the others)
                print(f"could not stop {proc.name}: {exc}", file=sys.stderr)
        try:
            from driftwise_slack.reference_host.runtime import get_host as host_state
            from driftwise_slack.runtime import get_runtime

            with self.app.app_context():
                get_runtime(self.app).engine.dispose()
                host_state().db.dispose()
        except Exception as exc:  # noqa: BLE001  (the database is dropped with FORCE anyway)
            print(f"could not close the app's connections: {exc}", file=sys.stderr)
        try:
            services.drop_database(self.pg_server, self.db_name)
        except Exception as exc:  # noqa: BLE001  (report, never hide)
            print(f"could not drop benchmark database {self.db_name}: {exc}", file=sys.stderr)
        if self.redis_server is not None:
            self.redis_server.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _pg_version(url: str) -> str:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            values = []
            for setting in ("server_version", "fsync", "synchronous_commit"):
                cur.execute(f"SHOW {setting}")
                row = cur.fetchone()
                values.append(str(row[0]) if row else "?")
            return f"{values[0]} (fsync {values[1]}, synchronous_commit {values[2]})"
    finally:
        conn.close()


def _redis_version(url: str) -> str:
    from redis import Redis

    client = Redis.from_url(url)
    try:
        return str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()
