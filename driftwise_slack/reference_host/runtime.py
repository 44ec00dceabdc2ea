"""The reference host's own settings and its per-app runtime (settings, database, the mounted
Slack extension).

Settings are read once in ``create_app`` from ``app.config`` first, then the environment, then
the defaults (the same lookup order the extension uses). The host-only options live here, not in
the package: ``DRIFTWISE_BASE_URL``, ``DRIFTWISE_TRUSTED_PROXIES`` and
``DRIFTWISE_DISABLE_AFTER``. The runtime is kept in ``app.extensions["driftwise_host"]``.
"""
from __future__ import annotations

import dataclasses
import os
import typing as t

from flask import Flask, current_app

from driftwise_slack.config import lookup, normalize_database_url, parse_int
from driftwise_slack.config_checks import parse_http_url

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from driftwise_slack.host import ScanEvent

    from .db import HostDatabase

#: Key of the host's runtime in ``app.extensions``.
EXTENSION_KEY = "driftwise_host"
#: Consecutive scheduled-scan failures before a schedule is disabled.
DEFAULT_DISABLE_AFTER = 3
#: File name of the default SQLite database, inside the instance folder.
DEFAULT_SQLITE_NAME = "driftwise.sqlite3"
#: Base of schedule links when neither ``DRIFTWISE_BASE_URL`` nor a request is at hand.
FALLBACK_BASE_URL = "http://localhost:5000"


def _int_option(name: str, value: t.Any, *, default: int, minimum: int) -> int:
    return default if value is None else parse_int(name, value, minimum=minimum)


@dataclasses.dataclass(frozen=True)
class HostSettings:
    """What the reference host itself reads from configuration."""

    #: ``DATABASE_URL``, normalised (``postgresql://`` uses psycopg2).
    database_url: str
    #: ``DRIFTWISE_BASE_URL`` without a trailing slash, or ``None``.
    base_url: str | None = None
    #: ``DRIFTWISE_TRUSTED_PROXIES``: proxies whose ``X-Forwarded-*`` headers are trusted.
    trusted_proxies: int = 0
    #: ``DRIFTWISE_DISABLE_AFTER``: failures in a row before a schedule is disabled.
    disable_after: int = DEFAULT_DISABLE_AFTER


def load_host_settings(
    config: t.Mapping[str, t.Any],
    environ: t.Mapping[str, str] | None = None,
    *,
    instance_path: str,
) -> HostSettings:
    """Read the host options once. Raises ``ConfigurationError`` on unusable values."""
    env = os.environ if environ is None else environ
    url = lookup("DATABASE_URL", config, env)
    if url is None:
        url = "sqlite:///" + os.path.join(os.path.abspath(instance_path), DEFAULT_SQLITE_NAME)
    base_url = lookup("DRIFTWISE_BASE_URL", config, env)
    if base_url is not None:
        base_url = parse_http_url("DRIFTWISE_BASE_URL", base_url,
                                  example="https://app.driftwise.example")
    return HostSettings(
        database_url=normalize_database_url(str(url)),
        base_url=str(base_url).rstrip("/") if base_url else None,
        trusted_proxies=_int_option(
            "DRIFTWISE_TRUSTED_PROXIES", lookup("DRIFTWISE_TRUSTED_PROXIES", config, env),
            default=0, minimum=0),
        disable_after=_int_option(
            "DRIFTWISE_DISABLE_AFTER", lookup("DRIFTWISE_DISABLE_AFTER", config, env),
            default=DEFAULT_DISABLE_AFTER, minimum=1),
    )


@dataclasses.dataclass
class HostRuntime:
    """Per-app runtime: settings, the database, and the Slack extension when it is mounted."""

    settings: HostSettings
    db: HostDatabase
    #: The mounted ``SlackIntegration``, or ``None`` (``create_app(mount_slack=False)``).
    slack: t.Any = None

    def disable_after(self) -> int:
        """The auto-disable threshold (``DRIFTWISE_DISABLE_AFTER``)."""
        return self.settings.disable_after

    def dispatcher(self, session: Session) -> t.Callable[[ScanEvent], None] | None:
        """A callable handing scan events to the extension inside ``session``'s transaction.

        ``None`` when Slack is not mounted: the host then records scans and notifies no one.
        """
        if self.slack is None:
            return None
        slack = self.slack

        def dispatch(event: ScanEvent) -> None:
            slack.dispatch(event, session=session)

        return dispatch


def get_host(app: Flask | None = None) -> HostRuntime:
    """The host runtime of ``app`` (default: the current app).

    Raises ``RuntimeError`` when ``app`` was not built by ``create_app``.
    """
    target = current_app if app is None else app
    try:
        return t.cast(HostRuntime, target.extensions[EXTENSION_KEY])
    except KeyError:
        raise RuntimeError(
            "This app was not built by driftwise_slack.reference_host.create_app()."
        ) from None
