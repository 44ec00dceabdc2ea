"""Configuration: the names of SPEC §2, their defaults, and the one ``Settings`` value.

Each name is looked up in ``app.config`` first, then in the environment, then here. Everything is
read once, in ``init_app``, and passed down as :class:`Settings`. Options of the host (its base
URL, proxies, the auto-disable threshold) are not the package's: the host reads those itself.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import typing as t

from limits import storage

from . import config_checks as checks
from .config_checks import parse_int
from .errors import ConfigurationError

__all__ = ["OPTIONS", "Option", "Settings", "load_settings", "lookup", "markdown_table",
           "normalize_database_url", "parse_int"]

#: Slack's Web API base.
DEFAULT_API_URL = "https://slack.com/api/"
#: Slack's consent page.
DEFAULT_AUTHORIZE_URL = "https://slack.com/oauth/v2/authorize"
#: Where the browser lands after the callback.
DEFAULT_SETTINGS_URL = "/settings"
#: Seconds an OAuth state stays valid.
DEFAULT_STATE_MAX_AGE = 600
#: flask-limiter limit for the callback, per source IP.
DEFAULT_CALLBACK_RATE_LIMIT = "10 per minute"
#: Messages per channel that we allow ourselves to post (Slack allows about one a second).
DEFAULT_CHANNEL_RATE = "1 per second"
#: Seconds before a Slack call gives up; below gunicorn's 30 s worker timeout.
DEFAULT_SLACK_TIMEOUT = 10.0
#: Days a delivery row is kept.
DEFAULT_DELIVERY_RETENTION_DAYS = 30
#: The bot's display name, used in "/invite @..." hints.
DEFAULT_BOT_NAME = "driftwise"
#: Waiting notifications of one channel that go out as one digest (0: never).
DEFAULT_DIGEST_MIN = 3
#: Largest digest threshold: a digest claims at most about this many rows (digests.MAX_CLAIM).
MAX_DIGEST_MIN = 1000
#: The scopes we ask for; the spec fixes them.
SCOPES = ("chat:write", "incoming-webhook")
#: Longest OAuth state lifetime we accept (a day); the spec's default is ten minutes.
MAX_STATE_MAX_AGE = 86_400
#: Longest Slack call timeout: below gunicorn's 30 s worker timeout.
MAX_SLACK_TIMEOUT = 25.0
#: Longest retention (a hundred years): past that the cut-off date cannot be computed.
MAX_RETENTION_DAYS = 36_500
#: URL schemes ``redis-py`` connects with.
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
#: Storage schemes of flask-limiter's ``limits`` (its own registry is used when it has one).
LIMITER_SCHEMES = frozenset({"memory", "redis", "rediss", "redis+unix", "redis+cluster",
                             "redis+sentinel", "memcached", "mongodb", "mongodb+srv"})
#: Shortest acceptable server encryption key.
MIN_KEY_LENGTH = 32


@dataclasses.dataclass(frozen=True)
class Option:
    """One configuration name, for lookup and for the README table."""

    name: str
    field: str
    meaning: str
    default: str


OPTIONS: tuple[Option, ...] = (
    Option("DATABASE_URL", "database_url", "SQLAlchemy URL; `postgresql://` uses psycopg2",
           "SQLite file in the instance folder"),
    Option("REDIS_URL", "redis_url", "Redis for RQ and the rate limiter",
           "none: embedded in-process queue (demo)"),
    Option("DRIFTWISE_ENCRYPTION_KEY", "encryption_key",
           "server key (>= 32 chars): signs OAuth state, encrypts tokens (HKDF sub-key per use)",
           "required outside demo mode"),
    Option("DRIFTWISE_ENCRYPTION_KEYS_OLD", "encryption_keys_old",
           "comma-separated older keys still accepted for decryption/verification", "empty"),
    Option("SLACK_CLIENT_ID", "client_id", "the Slack app's client id", "none: unavailable"),
    Option("SLACK_CLIENT_SECRET", "client_secret", "the Slack app's client secret",
           "none: unavailable"),
    Option("SLACK_REDIRECT_URI", "redirect_uri", "callback URL registered at Slack",
           "the callback route, external"),
    Option("SLACK_API_URL", "api_url", "base of Slack's Web API", DEFAULT_API_URL),
    Option("SLACK_AUTHORIZE_URL", "authorize_url", "Slack's consent page", DEFAULT_AUTHORIZE_URL),
    Option("SLACK_SETTINGS_URL", "settings_url", "where the browser lands after the callback",
           DEFAULT_SETTINGS_URL),
    Option("SLACK_STATE_MAX_AGE", "state_max_age", "seconds an OAuth state stays valid",
           str(DEFAULT_STATE_MAX_AGE)),
    Option("SLACK_CALLBACK_RATE_LIMIT", "callback_rate_limit",
           "flask-limiter limit for the callback, per source IP", DEFAULT_CALLBACK_RATE_LIMIT),
    Option("RATELIMIT_STORAGE_URI", "ratelimit_storage_uri",
           "flask-limiter storage; must be shared (Redis) with several workers/hosts",
           "`REDIS_URL` if set, else `memory://`"),
    Option("SLACK_CHANNEL_RATE", "channel_rate",
           "how fast we post to one channel (a `limits` string)", DEFAULT_CHANNEL_RATE),
    Option("SLACK_TIMEOUT", "slack_timeout", "seconds before a Slack call gives up",
           str(DEFAULT_SLACK_TIMEOUT)),
    Option("SLACK_BOT_NAME", "bot_name", "the bot's name in `/invite @...` hints",
           DEFAULT_BOT_NAME),
    Option("SLACK_SIGNING_SECRET", "signing_secret", "verifies Events API requests",
           "none: events route off"),
    Option("SLACK_APP_ID", "app_id", "the app id the exchange must report", "none: not checked"),
    Option("SLACK_THREADS", "threads",
           "thread a schedule's repeated failures under one parent message kept up to date; "
           "off: every message top-level, no edits", "on"),
    Option("SLACK_DIGEST_MIN", "digest_min",
           "waiting notifications for one channel that go out as one digest; 0: never",
           str(DEFAULT_DIGEST_MIN)),
    Option("DRIFTWISE_DELIVERY_RETENTION_DAYS", "delivery_retention_days",
           "days a delivery row is kept before cleanup prunes it",
           str(DEFAULT_DELIVERY_RETENTION_DAYS)),
    Option("DRIFTWISE_DEMO", "demo", "demo mode: a key is generated into the instance folder",
           "off"),
    Option("DRIFTWISE_METRICS_TOKEN", "metrics_token", "bearer token for `/slack/metrics`",
           "none: route off"),
    Option("DRIFTWISE_WORKER_METRICS_PORT", "worker_metrics_port",
           "loopback port (or range `9100-9103`, one per worker process) of the worker's metrics",
           "none: off"),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the package reads from configuration, read once in ``init_app``."""

    #: ``DATABASE_URL``
    database_url: str
    #: ``DRIFTWISE_ENCRYPTION_KEY``: never logged, never in ``repr``.
    encryption_key: str = dataclasses.field(repr=False)
    #: ``DRIFTWISE_ENCRYPTION_KEYS_OLD``, oldest first, as written.
    encryption_keys_old: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    #: ``REDIS_URL``; ``None`` selects the embedded queue.
    redis_url: str | None = None
    #: ``SLACK_CLIENT_ID``
    client_id: str | None = None
    #: ``SLACK_CLIENT_SECRET``: never logged, never in ``repr``.
    client_secret: str | None = dataclasses.field(default=None, repr=False)
    #: ``SLACK_REDIRECT_URI``; ``None`` means the callback route, external.
    redirect_uri: str | None = None
    #: ``SLACK_API_URL``, always ending in ``/``.
    api_url: str = DEFAULT_API_URL
    #: ``SLACK_AUTHORIZE_URL``
    authorize_url: str = DEFAULT_AUTHORIZE_URL
    #: ``SLACK_SETTINGS_URL``
    settings_url: str = DEFAULT_SETTINGS_URL
    #: ``SLACK_STATE_MAX_AGE`` in seconds.
    state_max_age: int = DEFAULT_STATE_MAX_AGE
    #: ``SLACK_CALLBACK_RATE_LIMIT``
    callback_rate_limit: str = DEFAULT_CALLBACK_RATE_LIMIT
    #: ``RATELIMIT_STORAGE_URI``
    ratelimit_storage_uri: str = "memory://"
    #: ``SLACK_CHANNEL_RATE``
    channel_rate: str = DEFAULT_CHANNEL_RATE
    #: ``SLACK_TIMEOUT`` in seconds.
    slack_timeout: float = DEFAULT_SLACK_TIMEOUT
    #: ``SLACK_BOT_NAME``
    bot_name: str = DEFAULT_BOT_NAME
    #: ``SLACK_SIGNING_SECRET``: never logged.
    signing_secret: str | None = dataclasses.field(default=None, repr=False)
    #: ``SLACK_APP_ID``
    app_id: str | None = None
    #: ``SLACK_THREADS``: one thread per failing schedule, its parent kept current.
    threads: bool = True
    #: ``SLACK_DIGEST_MIN``: this many waiting notifications of one channel make a digest; 0 never.
    digest_min: int = DEFAULT_DIGEST_MIN
    #: ``DRIFTWISE_DELIVERY_RETENTION_DAYS``
    delivery_retention_days: int = DEFAULT_DELIVERY_RETENTION_DAYS
    #: ``DRIFTWISE_DEMO``
    demo: bool = False
    #: ``DRIFTWISE_METRICS_TOKEN``: never logged, never in ``repr``, never written back.
    metrics_token: str | None = dataclasses.field(default=None, repr=False)
    #: ``DRIFTWISE_WORKER_METRICS_PORT``: a port or a range ``first-last`` (validated).
    worker_metrics_port: str | None = None

    @property
    def worker_metrics_ports(self) -> tuple[int, ...]:
        """The ports a worker tries for its metrics, in order; ``()``: metrics off."""
        return parse_ports("DRIFTWISE_WORKER_METRICS_PORT", self.worker_metrics_port)

    @property
    def available(self) -> bool:
        """Slack can be used only when both the client id and the secret are set."""
        return bool(self.client_id and self.client_secret)


def lookup(name: str, config: t.Mapping[str, t.Any], environ: t.Mapping[str, str]) -> t.Any:
    """``config[name]``, else ``environ[name]``, else ``None``; empty strings count as unset."""
    value = config.get(name)
    if value is None or value == "":
        value = environ.get(name)
    return None if value == "" else value


def _demo_key(instance_path: str) -> str:
    """A per-checkout demo key kept in the instance folder, so CLI and web agree on it."""
    path = os.path.join(instance_path, "driftwise-demo.key")
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except FileNotFoundError:
        os.makedirs(instance_path, exist_ok=True)
        key = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(key)
        return key


def load_settings(
    config: t.Mapping[str, t.Any],
    environ: t.Mapping[str, str] | None = None,
    *,
    instance_path: str = "instance",
) -> Settings:
    """Read every option once. Raises :class:`ConfigurationError` with an actionable message."""
    env = os.environ if environ is None else environ
    raw = {opt.field: lookup(opt.name, config, env) for opt in OPTIONS}
    demo = raw["demo"] is not None and checks.parse_bool("DRIFTWISE_DEMO", raw["demo"])

    key = raw["encryption_key"]
    if key is None and demo:
        key = _demo_key(instance_path)
    if key is None:
        raise ConfigurationError(
            "DRIFTWISE_ENCRYPTION_KEY is not set. Generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'` and set it in the "
            "environment of the web app and the worker."
        )
    if len(str(key)) < MIN_KEY_LENGTH:
        raise ConfigurationError(
            f"DRIFTWISE_ENCRYPTION_KEY is too short: use at least {MIN_KEY_LENGTH} characters."
        )
    old = tuple(k.strip() for k in str(raw["encryption_keys_old"] or "").split(",") if k.strip())
    for old_key in old:
        if len(old_key) < MIN_KEY_LENGTH:
            raise ConfigurationError(
                "Every key in DRIFTWISE_ENCRYPTION_KEYS_OLD needs at least "
                f"{MIN_KEY_LENGTH} characters."
            )

    database_url = raw["database_url"] or "sqlite:///" + os.path.join(
        os.path.abspath(instance_path), "driftwise.sqlite3"
    )
    redis_url = _opt(raw, "redis_url", lambda n, v: checks.parse_scheme_url(
        n, v, schemes=REDIS_SCHEMES, example="redis://localhost:6379/0"))
    api_url = _opt(raw, "api_url", _http_url(DEFAULT_API_URL)) or DEFAULT_API_URL
    if not api_url.endswith("/"):
        api_url += "/"
    limiter_schemes = frozenset(s for s in getattr(storage, "SCHEMES", LIMITER_SCHEMES)
                                if not s.startswith("async+"))
    return Settings(
        database_url=checks.parse_database_url(
            "DATABASE_URL", database_url, example="postgresql://driftwise@db.internal/driftwise"),
        encryption_key=str(key),
        encryption_keys_old=old,
        redis_url=redis_url,
        client_id=_opt(raw, "client_id", _word(128, "1234567890.1234567890")),
        client_secret=_opt(raw, "client_secret",
                           _word(128, "<the app's client secret>", secret=True)),
        redirect_uri=_opt(raw, "redirect_uri",
                          _http_url("https://driftwise.example/slack/oauth/callback")),
        api_url=api_url,
        authorize_url=_opt(raw, "authorize_url", _http_url(DEFAULT_AUTHORIZE_URL))
        or DEFAULT_AUTHORIZE_URL,
        settings_url=_opt(raw, "settings_url", lambda n, v: checks.parse_settings_url(
            n, v, example=DEFAULT_SETTINGS_URL)) or DEFAULT_SETTINGS_URL,
        state_max_age=_opt(raw, "state_max_age", lambda n, v: checks.parse_int(
            n, v, minimum=1, maximum=MAX_STATE_MAX_AGE, example=str(DEFAULT_STATE_MAX_AGE)))
        or DEFAULT_STATE_MAX_AGE,
        callback_rate_limit=_opt(raw, "callback_rate_limit", _rate(
            DEFAULT_CALLBACK_RATE_LIMIT, single=False)) or DEFAULT_CALLBACK_RATE_LIMIT,
        ratelimit_storage_uri=_opt(raw, "ratelimit_storage_uri", lambda n, v:
                                   checks.parse_scheme_url(n, v, schemes=limiter_schemes,
                                                           example="redis://localhost:6379/1"))
        or redis_url or "memory://",
        channel_rate=_opt(raw, "channel_rate", _rate(DEFAULT_CHANNEL_RATE, single=True))
        or DEFAULT_CHANNEL_RATE,
        slack_timeout=_opt(raw, "slack_timeout", lambda n, v: checks.parse_seconds(
            n, v, maximum=MAX_SLACK_TIMEOUT, example=str(DEFAULT_SLACK_TIMEOUT)))
        or DEFAULT_SLACK_TIMEOUT,
        bot_name=_opt(raw, "bot_name", _word(80, DEFAULT_BOT_NAME)) or DEFAULT_BOT_NAME,
        signing_secret=_opt(raw, "signing_secret",
                            _word(256, "<the app's signing secret>", secret=True)),
        app_id=_opt(raw, "app_id", _word(32, "A0123456789")),
        # Both default to something that 0/off must be able to override: no ``or DEFAULT`` here.
        threads=True if raw["threads"] is None else checks.parse_bool(
            _NAMES["threads"], raw["threads"]),
        digest_min=DEFAULT_DIGEST_MIN if raw["digest_min"] is None else checks.parse_int(
            _NAMES["digest_min"], raw["digest_min"], minimum=0, maximum=MAX_DIGEST_MIN,
            example=str(DEFAULT_DIGEST_MIN)),
        delivery_retention_days=_opt(raw, "delivery_retention_days", lambda n, v:
                                     checks.parse_int(n, v, minimum=1,
                                                      maximum=MAX_RETENTION_DAYS,
                                                      example="30"))
        or DEFAULT_DELIVERY_RETENTION_DAYS,
        demo=demo,
        metrics_token=_opt(raw, "metrics_token", _word(256, "<a long random token>", secret=True)),
        worker_metrics_port=_port_option(raw["worker_metrics_port"]),
    )


_Parse = t.Callable[[str, t.Any], t.Any]
_NAMES = {opt.field: opt.name for opt in OPTIONS}


def _opt(raw: t.Mapping[str, t.Any], field: str, parse: _Parse) -> t.Any:
    """``raw[field]`` parsed under its option name, or ``None`` when unset."""
    value = raw[field]
    return None if value is None else parse(_NAMES[field], value)


def _http_url(example: str) -> _Parse:
    return lambda name, value: checks.parse_http_url(name, value, example=example)


def _word(max_length: int, example: str, *, secret: bool = False) -> _Parse:
    return lambda name, value: checks.parse_name(name, value, max_length=max_length,
                                                 example=example, secret=secret)


def _rate(example: str, *, single: bool) -> _Parse:
    def parse(name: str, value: t.Any) -> str:
        checks.parse_rate(name, value, example=f"'{example}'", single=single)
        return t.cast(str, value)
    return parse


def _port_option(value: t.Any) -> str | None:
    if value is None:
        return None
    parse_ports("DRIFTWISE_WORKER_METRICS_PORT", value)  # fail fast at init_app
    return str(value).strip()


def parse_ports(name: str, value: t.Any) -> tuple[int, ...]:
    """``"9100"`` or ``"9100-9103"`` as the ports it names; ``()`` when unset. Raises
    :class:`ConfigurationError` for anything else, or a range wider than 256 ports."""
    if value is None:
        return ()
    low, _, high = str(value).strip().partition("-")
    first = parse_int(name, low, minimum=1)
    last = parse_int(name, high, minimum=1) if high else first
    if last > 65535 or last < first or last - first >= 256:
        raise ConfigurationError(
            f"{name} must be a port (1-65535) or a range like 9100-9103, got {value!r}.")
    return tuple(range(first, last + 1))


def normalize_database_url(url: str) -> str:
    """A plain ``postgresql://`` (or Heroku-style ``postgres://``) URL uses psycopg2."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def markdown_table() -> str:
    """The README's configuration table, made from :data:`OPTIONS` so the two never drift."""
    lines = ["| name | meaning | default |", "| --- | --- | --- |"]
    lines += [f"| `{o.name}` | {o.meaning} | {o.default} |" for o in OPTIONS]
    return "\n".join(lines)
