"""The shared guards of ``access.py``, with a fake host and no services.

The end-to-end tests drive the same rules through HTTP; these pin each rule down on its own,
including the fail-closed plan check that the callback, the Settings actions and delivery share.
"""
from __future__ import annotations

import typing as t

import pytest

from driftwise_slack import access, settings_actions
from driftwise_slack.config import load_settings
from driftwise_slack.deps import Deps
from driftwise_slack.errors import (
    AccessDenied,
    PaymentRequired,
    PlanCheckFailed,
    Unauthenticated,
)
from driftwise_slack.host import AuditEvent, Caller, HostAdapter, Plan, Role
from driftwise_slack.keys import KeyRing
from driftwise_slack.oauth_state import StateSigner
from driftwise_slack.slack_api import SlackClient
from driftwise_slack.vault import TokenVault

ALICE = Caller(org_id="1", user_id="10")


class FakeHost:
    """Answers from dicts; ``plan_error`` makes ``plan_of`` fail like a billing outage."""

    def __init__(self, *, roles: dict[tuple[str, str], Role] | None = None,
                 plans: dict[str, Plan] | None = None, plan_error: bool = False,
                 audit_error: bool = False) -> None:
        self.roles = roles or {}
        self.plans = plans or {}
        self.plan_error, self.audit_error = plan_error, audit_error
        self.audit: list[AuditEvent] = []
        self.plan_calls = 0

    def current_caller(self) -> Caller | None:
        return None

    def role_of(self, *, org_id: str, user_id: str) -> Role | None:
        return self.roles.get((org_id, user_id))

    def plan_of(self, org_id: str) -> Plan | None:
        self.plan_calls += 1
        if self.plan_error:
            raise ConnectionError("billing is down")
        return self.plans.get(org_id)

    def write_audit(self, event: AuditEvent) -> None:
        if self.audit_error:
            raise OSError("audit log is full")
        self.audit.append(event)

    def schedule_url(self, *, org_id: str, schedule_id: str) -> str:
        return f"https://dw.example.test/schedules/{schedule_id}"


def test_the_fake_host_satisfies_the_contract() -> None:
    assert isinstance(FakeHost(), HostAdapter)


def test_require_caller() -> None:
    with pytest.raises(Unauthenticated):
        access.require_caller(None)
    assert access.require_caller(ALICE) is ALICE


@pytest.mark.parametrize("role,allowed", [
    (Role.OWNER, True), (Role.ADMIN, True), (Role.MEMBER, False), (None, False)])
def test_require_manager_admits_owners_and_admins_only(role: Role | None, allowed: bool) -> None:
    host = FakeHost(roles={("1", "10"): role} if role else {})
    if allowed:
        assert access.require_manager(host, org_id="1", user_id="10") is role
    else:
        with pytest.raises(AccessDenied):
            access.require_manager(host, org_id="1", user_id="10")


def test_require_member_admits_any_role_and_refuses_strangers() -> None:
    host = FakeHost(roles={("1", "10"): Role.MEMBER})
    assert access.require_member(host, ALICE) is Role.MEMBER
    with pytest.raises(AccessDenied, match="not a member"):
        access.require_member(host, Caller(org_id="1", user_id="11"))
    with pytest.raises(AccessDenied):     # a member of another org is a stranger here
        access.require_member(host, Caller(org_id="2", user_id="10"))


@pytest.mark.parametrize("plan,allowed", [
    (Plan.TEAM, True), (Plan.ENTERPRISE, True), (Plan.FREE, False), (None, False)])
def test_require_plan_admits_team_and_enterprise(plan: Plan | None, allowed: bool) -> None:
    host = FakeHost(plans={"1": plan} if plan else {})
    assert access.plan_allows_slack(host, "1") is allowed
    if allowed:
        assert access.require_plan(host, "1") is plan
    else:
        with pytest.raises(PaymentRequired):
            access.require_plan(host, "1")


def test_plan_check_fails_closed_and_asks_once(caplog: pytest.LogCaptureFixture) -> None:
    host = FakeHost(plan_error=True)
    with pytest.raises(PlanCheckFailed):
        access.require_plan(host, "1")
    with pytest.raises(PlanCheckFailed):
        access.plan_allows_slack(host, "1")
    assert host.plan_calls == 2
    assert "plan lookup failed for org 1" in caplog.text


def test_write_audit_hands_over_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    event = AuditEvent(action="slack.installed", org_id="1", user_id="10", details={})
    host = FakeHost()
    access.write_audit(host, event)
    assert host.audit == [event]
    access.write_audit(FakeHost(audit_error=True), event)
    assert "writing audit event slack.installed for org 1 failed" in caplog.text


def _deps(host: FakeHost) -> Deps:
    """Collaborators built directly: no app, no database (the guards refuse before any query)."""
    settings = load_settings({"DRIFTWISE_ENCRYPTION_KEY": "k" * 40, "DATABASE_URL": "sqlite://"},
                             {})
    ring = KeyRing(settings.encryption_key)
    return Deps(settings=settings, host=t.cast(HostAdapter, host),
                session=t.cast(t.Any, None),
                signer=StateSigner(ring.signing_keys(), max_age=settings.state_max_age),
                vault=TokenVault(ring.encryption_keys()),
                slack=SlackClient(settings.api_url, timeout=1.0))


@pytest.mark.parametrize("host,caller,error", [
    (FakeHost(), None, Unauthenticated),
    (FakeHost(roles={("1", "10"): Role.MEMBER}, plans={"1": Plan.TEAM}), ALICE, AccessDenied),
    (FakeHost(roles={("1", "10"): Role.ADMIN}, plans={"1": Plan.FREE}), ALICE, PaymentRequired),
    (FakeHost(roles={("1", "10"): Role.OWNER}, plan_error=True), ALICE, PlanCheckFailed),
])
def test_send_test_guards_run_before_anything_else(host: FakeHost, caller: Caller | None,
                                                   error: type[Exception]) -> None:
    with pytest.raises(error):
        settings_actions.send_test(_deps(host), caller, {"channel": "#alerts"})


def test_list_deliveries_needs_a_member() -> None:
    with pytest.raises(AccessDenied):
        settings_actions.list_deliveries(_deps(FakeHost()), ALICE, {})


def test_deps_without_delivery_parts_say_so() -> None:
    deps = _deps(FakeHost())
    with pytest.raises(RuntimeError, match="no Redis"):
        deps.redis()
    with pytest.raises(RuntimeError, match="no channel pacer"):
        _ = deps.pacer
    with pytest.raises(RuntimeError, match="no engine"):
        _ = deps.engine
