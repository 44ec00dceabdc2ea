"""The Flask extension: init_app guards, two apps, configuration errors."""
from __future__ import annotations

import typing as t

import pytest
from flask import Flask

from driftwise_slack import ConfigurationError, SlackIntegration
from driftwise_slack.host import AuditEvent, Caller, Plan, Role
from driftwise_slack.runtime import get_runtime

KEY = "x" * 40


class FakeHost:
    """The smallest HostAdapter: one owner in one Team org."""

    def __init__(self) -> None:
        self.audit: list[AuditEvent] = []

    def current_caller(self) -> Caller | None:
        return Caller(org_id="1", user_id="1")

    def role_of(self, *, org_id: str, user_id: str) -> Role | None:
        return Role.OWNER

    def plan_of(self, org_id: str) -> Plan | None:
        return Plan.TEAM

    def write_audit(self, event: AuditEvent) -> None:
        self.audit.append(event)

    def schedule_url(self, *, org_id: str, schedule_id: str) -> str:
        return f"https://driftwise.test/schedules/{schedule_id}"


def flask_app(tmp_path: t.Any, **config: t.Any) -> Flask:
    app = Flask("host", instance_path=str(tmp_path))
    app.config.update({"DRIFTWISE_ENCRYPTION_KEY": KEY,
                       "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3", **config})
    return app


def test_two_apps_keep_their_own_state(tmp_path: t.Any) -> None:
    ext = SlackIntegration()
    one = flask_app(tmp_path / "one", SLACK_CLIENT_ID="a", SLACK_CLIENT_SECRET="b")
    two = flask_app(tmp_path / "two", SLACK_SETTINGS_URL="/elsewhere")
    ext.init_app(one, host=FakeHost())
    ext.init_app(two, host=FakeHost())
    assert ext.settings(one).available and not ext.settings(two).available
    assert ext.settings(two).settings_url == "/elsewhere"
    assert get_runtime(one) is not get_runtime(two)
    assert one.config["SLACK_SETTINGS_URL"] == "/settings"        # effective value written back
    assert "DRIFTWISE_ENCRYPTION_KEY" in one.config
    assert "SLACK_CLIENT_SECRET" in one.config


def test_double_init_app_raises(tmp_path: t.Any) -> None:
    app = flask_app(tmp_path)
    ext = SlackIntegration(app, host=FakeHost())
    with pytest.raises(RuntimeError, match="already"):
        ext.init_app(app, host=FakeHost())


def test_missing_init_app_is_explained(tmp_path: t.Any) -> None:
    app = flask_app(tmp_path)
    with app.app_context(), pytest.raises(RuntimeError, match="forget.*init_app"):
        SlackIntegration().settings()


def test_host_must_implement_the_adapter(tmp_path: t.Any) -> None:
    with pytest.raises(TypeError, match="HostAdapter"):
        SlackIntegration(flask_app(tmp_path), host=object())  # type: ignore[arg-type]


@pytest.mark.parametrize("config,message", [
    ({"DRIFTWISE_ENCRYPTION_KEY": None}, "DRIFTWISE_ENCRYPTION_KEY is not set"),
    ({"DRIFTWISE_ENCRYPTION_KEY": "short"}, "too short"),
    ({"DRIFTWISE_ENCRYPTION_KEYS_OLD": "tiny"}, "DRIFTWISE_ENCRYPTION_KEYS_OLD"),
    ({"SLACK_STATE_MAX_AGE": "ten"}, "SLACK_STATE_MAX_AGE"),
    ({"DRIFTWISE_DELIVERY_RETENTION_DAYS": "0"}, "DRIFTWISE_DELIVERY_RETENTION_DAYS"),
])
def test_bad_configuration_fails_fast(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch,
                                      config: dict[str, t.Any], message: str) -> None:
    monkeypatch.delenv("DRIFTWISE_ENCRYPTION_KEY", raising=False)
    app = flask_app(tmp_path)
    app.config.update(config)
    with pytest.raises(ConfigurationError, match=message) as info:
        SlackIntegration(app, host=FakeHost())
    assert KEY not in str(info.value)


def test_demo_mode_generates_and_keeps_a_key(tmp_path: t.Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIFTWISE_ENCRYPTION_KEY", raising=False)
    first = flask_app(tmp_path, DRIFTWISE_DEMO="1", DRIFTWISE_ENCRYPTION_KEY=None)
    second = flask_app(tmp_path, DRIFTWISE_DEMO="1", DRIFTWISE_ENCRYPTION_KEY=None)
    ext = SlackIntegration()
    ext.init_app(first, host=FakeHost())
    ext.init_app(second, host=FakeHost())
    key = ext.settings(first).encryption_key
    assert len(key) >= 32 and key == ext.settings(second).encryption_key
    assert (tmp_path / "driftwise-demo.key").stat().st_mode & 0o777 == 0o600


def test_environment_is_read_after_app_config(tmp_path: t.Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_SETTINGS_URL", "/from-env")
    monkeypatch.setenv("SLACK_STATE_MAX_AGE", "120")
    app = flask_app(tmp_path, SLACK_STATE_MAX_AGE=300)
    ext = SlackIntegration(app, host=FakeHost())
    assert ext.settings(app).settings_url == "/from-env"
    assert ext.settings(app).state_max_age == 300


def test_repr_of_settings_holds_no_secret(tmp_path: t.Any) -> None:
    app = flask_app(tmp_path, SLACK_CLIENT_ID="id", SLACK_CLIENT_SECRET="CANARYSECRET",
                    SLACK_SIGNING_SECRET="CANARYSIGN")
    settings = SlackIntegration(app, host=FakeHost()).settings(app)
    text = repr(settings)
    assert "CANARYSECRET" not in text and "CANARYSIGN" not in text and KEY not in text


def test_migrations_on_sqlite_are_idempotent(tmp_path: t.Any) -> None:
    app = flask_app(tmp_path)
    ext = SlackIntegration(app, host=FakeHost())
    with app.app_context():
        ext.init_db()
        ext.init_db()
        from sqlalchemy import inspect

        tables = set(inspect(get_runtime(app).engine).get_table_names())
    assert {"slack_installations", "slack_deliveries", "slack_redeemed_states",
            "driftwise_slack_alembic_version"} <= tables
    assert "alembic_version" not in tables


def test_the_runtime_gives_its_sessions_an_autocommit_engine_of_their_own(app: t.Any) -> None:
    """PostgreSQL: statements that commit on their own run on a second pool whose connections
    stay in autocommit (nothing switches a shared connection in and out of it)."""
    from driftwise_slack.repository import AUTOCOMMIT_BIND

    runtime = get_runtime(app)
    bind = runtime.session().info[AUTOCOMMIT_BIND]
    assert bind is not runtime.engine and bind.url == runtime.engine.url
    with bind.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit
    with runtime.engine.connect() as conn:
        assert not conn.connection.dbapi_connection.autocommit
    runtime.remove_session()
