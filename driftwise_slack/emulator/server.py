"""Serving the emulator: a threaded werkzeug server, in the foreground or in a daemon thread.

The access log names method, path and status only. werkzeug's own request log prints the query
string, which on the consent page carries the OAuth ``state`` and on redirects the ``code``.
"""
from __future__ import annotations

import logging
import socket
import threading
import typing as t

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .web_api import DROP_CONNECTION_KEY

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask

_access_log = logging.getLogger("driftwise_slack.emulator.access")


class DropConnection:
    """WSGI middleware that drops the connection when a view asked for it (fault ``disconnect``).

    It shuts the socket down and raises ``ConnectionError`` before any byte of the answer is
    sent; werkzeug's server treats that as a dropped connection and stays quiet. Under other
    servers (or the test client) the ``ConnectionError`` simply propagates.
    """

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> t.Iterable[bytes]:
        """Run the app; drop the connection instead of answering if it was asked to."""
        result = self.app(environ, start_response)
        if not environ.get(DROP_CONNECTION_KEY):
            return result
        close = getattr(result, "close", None)
        if close is not None:
            close()
        sock = environ.get("werkzeug.socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise ConnectionAbortedError("emulated disconnect")


class AccessLogHandler(WSGIRequestHandler):
    """Logs ``METHOD path status`` (no query string) to ``driftwise_slack.emulator.access``."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log one answered request without its query string."""
        _access_log.info("%s %s %s", self.command, self.path.split("?", 1)[0],
                         getattr(code, "value", code))


def make_emulator_server(app: Flask, host: str = "127.0.0.1", port: int = 0) -> BaseWSGIServer:
    """A threaded werkzeug server for ``app``; ``port=0`` picks a free port (see ``.port``)."""
    return make_server(host, port, app, threaded=True, request_handler=AccessLogHandler)


def serve_in_thread(app: Flask, host: str = "127.0.0.1",
                    port: int = 0) -> tuple[str, t.Callable[[], None]]:
    """Serve ``app`` (an emulator from ``create_app()``) from a daemon thread.

    Returns the base URL (``http://host:port``) and a ``stop`` callable that shuts the server
    down and closes its socket; calling ``stop`` twice is harmless. The server is listening when
    this returns.
    """
    server = make_emulator_server(app, host, port)
    thread = threading.Thread(target=server.serve_forever, name="slack-emulator", daemon=True)
    thread.start()
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return f"http://{host}:{server.port}", stop


def serve_until_stopped(app: Flask, host: str = "127.0.0.1", port: int = 0) -> int:
    """Serve ``app`` in the foreground until SIGTERM or Ctrl-C, announcing the address first.

    The one line ``emulator listening on http://HOST:PORT`` is printed (flushed) once the
    socket listens, so a parent process can wait for it. Returns the exit status, 0.
    """
    import signal
    import sys

    server = make_emulator_server(app, host, port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"emulator listening on http://{host}:{server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
