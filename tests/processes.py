"""Run the real processes (gunicorn, the RQ worker) from tests.

Each helper starts its process with this interpreter (``sys.executable``, so the
virtualenv's packages are used), in the repository root, with stdout and stderr
going to log files (in a temporary directory removed at exit unless ``log_dir``
is given). ``logs()`` reads them back; failures include the log tail so
a broken start explains itself. Processes still running at interpreter exit are
stopped.

Both helpers are context managers::

    with Gunicorn(env={"DATABASE_URL": url}) as web:
        requests.get(web.url + "/slack/openapi.json")
"""

from __future__ import annotations

import atexit
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing as t
import urllib.error
import urllib.request

from services import free_port, wait_for_port

#: The repository root: processes run here so ``wsgi`` is importable.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_live: set[ManagedProcess] = set()
_scratch_dirs: list[str] = []


def _merge_env(env: t.Mapping[str, str | None] | None, inherit: bool) -> dict[str, str]:
    merged = dict(os.environ) if inherit else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    merged["PYTHONUNBUFFERED"] = "1"
    for key, value in (env or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    return merged


class ManagedProcess:
    """A child process with log files, a polite stop and helpers to wait on it.

    ``env`` is laid over ``os.environ`` (``inherit_env=False`` starts from PATH
    only); a value of ``None`` removes that variable.
    """

    name = "process"

    def __init__(
        self,
        args: t.Sequence[str],
        *,
        env: t.Mapping[str, str | None] | None = None,
        cwd: str | None = None,
        inherit_env: bool = True,
        log_dir: str | None = None,
    ) -> None:
        self.args = list(args)
        self.env = _merge_env(env, inherit_env)
        self.cwd = cwd or REPO_ROOT
        if log_dir is None:
            log_dir = tempfile.mkdtemp(prefix=f"driftwise-{self.name}-")
            _scratch_dirs.append(log_dir)
        self.log_dir = log_dir
        os.makedirs(self.log_dir, exist_ok=True)
        self.stdout_path = os.path.join(self.log_dir, f"{self.name}.stdout.log")
        self.stderr_path = os.path.join(self.log_dir, f"{self.name}.stderr.log")
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle

    def start(self) -> t.Self:
        """Start the process (in its own session, so stop() can reach its children)."""
        if self.running:
            return self
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        _live.add(self)
        return self

    @property
    def pid(self) -> int:
        """The process id (raises if never started)."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self, sig: int = signal.SIGKILL, *, group: bool = False) -> None:
        """Send ``sig`` to the process (``group=True``: to its whole process group)."""
        if not self.running:
            return
        try:
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and return its exit code."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL to the whole group after ``timeout`` seconds. Idempotent."""
        _live.discard(self)
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # Anything left in the group (workers, a work-horse) goes too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            proc.wait(timeout=timeout)
        return proc.returncode

    def __enter__(self) -> t.Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- logs and waiting

    def stdout(self) -> str:
        return _read(self.stdout_path)

    def stderr(self) -> str:
        return _read(self.stderr_path)

    def logs(self) -> str:
        """stdout then stderr, as text."""
        return self.stdout() + self.stderr()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def wait_until(
        self,
        predicate: t.Callable[[], t.Any],
        timeout: float = 30.0,
        interval: float = 0.05,
        message: str = "condition",
    ) -> t.Any:
        """Poll ``predicate`` until it returns something truthy; return that value.

        Raises ``TimeoutError`` (with the log tail) after ``timeout`` seconds, or
        ``RuntimeError`` if the process exits first.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if not self.running:
                raise RuntimeError(
                    f"{self.name} exited with {self.returncode} while waiting for {message}:\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{message} not met after {timeout:.0f}s; "
                    f"{self.name} log tail:\n{self.log_tail()}"
                )
            time.sleep(interval)

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        """Wait until ``text`` appears in stdout or stderr."""
        self.wait_until(lambda: text in self.logs(), timeout, message=f"log line {text!r}")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def _gunicorn_isolation_args() -> list[str]:
    """Flags that keep parallel gunicorns apart.

    Newer gunicorn opens a control socket at a fixed path in ``$HOME``; two test
    servers at once would fight over it, so it is turned off where it exists.
    """
    try:
        from gunicorn.config import KNOWN_SETTINGS
    except ImportError:
        return []
    flags = {flag for setting in KNOWN_SETTINGS for flag in (setting.cli or [])}
    return ["--no-control-socket"] if "--no-control-socket" in flags else []


class Gunicorn(ManagedProcess):
    """``gunicorn`` serving ``app_module`` on 127.0.0.1.

    Ready when the port accepts connections and, unless ``ready_path`` is ``None``,
    a GET of ``ready_path`` gets any HTTP answer (a 404 counts): gunicorn binds the
    port before its workers import the app, so an open port alone would hide an
    app that fails to import. ``url`` is ``http://127.0.0.1:<port>``. Starting raises
    ``RuntimeError`` with the log tail when gunicorn exits or is not ready within
    ``timeout`` seconds.
    """

    name = "gunicorn"

    def __init__(
        self,
        app_module: str = "wsgi:app",
        env: t.Mapping[str, str | None] | None = None,
        workers: int = 2,
        port: int | None = None,
        extra_args: t.Sequence[str] = (),
        *,
        timeout: float = 30.0,
        ready_path: str | None = "/",
        **kwargs: t.Any,
    ) -> None:
        self.ready_path = ready_path
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = timeout
        args = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(workers),
            *_gunicorn_isolation_args(),
            *extra_args,
            app_module,
        ]
        super().__init__(args, env=env, **kwargs)

    def start(self) -> t.Self:
        if self.running:
            return self
        super().start()
        try:
            self.wait_until(
                self._ready,
                timeout=self.start_timeout,
                message=f"gunicorn answering on port {self.port}",
            )
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"gunicorn did not start: {exc}") from None
        return self

    def _ready(self) -> bool:
        if not wait_for_port("127.0.0.1", self.port, timeout=0.2):
            return False
        if self.ready_path is None:
            return True
        try:
            with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
        except (OSError, http.client.HTTPException):
            return False
        return True


class RQWorker(ManagedProcess):
    """The RQ worker process: ``python -m flask --app wsgi slack worker`` by default.

    ``args`` are what follows ``python -m``. It is started but not waited on; use
    ``wait_for_log`` or ``wait_until`` for readiness the test cares about.
    """

    name = "rq-worker"

    def __init__(
        self,
        env: t.Mapping[str, str | None] | None = None,
        args: t.Sequence[str] = ("flask", "--app", "wsgi", "slack", "worker"),
        **kwargs: t.Any,
    ) -> None:
        super().__init__([sys.executable, "-m", *args], env=env, **kwargs)


@atexit.register
def _stop_all() -> None:
    for proc in list(_live):
        proc.stop(timeout=5)
    for path in _scratch_dirs:
        shutil.rmtree(path, ignore_errors=True)
