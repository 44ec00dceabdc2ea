"""The worker's plan answers (``access.PlanCache``): kept a few seconds, never a failure."""
from __future__ import annotations

import typing as t

import pytest

from driftwise_slack.access import PlanCache
from driftwise_slack.errors import PlanCheckFailed
from driftwise_slack.host import Plan


class Host:
    """A host whose plans can change and whose lookups can fail; counts the lookups."""

    def __init__(self) -> None:
        self.plans: dict[str, Plan | None] = {"1": Plan.TEAM, "2": Plan.FREE}
        self.down = False
        self.asked = 0

    def plan_of(self, org_id: str) -> Plan | None:
        self.asked += 1
        if self.down:
            raise RuntimeError("connection refused: password=secret")
        return self.plans.get(org_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache(clock: Clock, **kwargs: t.Any) -> PlanCache:
    return PlanCache(ttl=5.0, clock=clock, **kwargs)


def test_an_answer_is_kept_for_the_ttl_then_asked_again() -> None:
    host, clock = Host(), Clock()
    plans = cache(clock)
    assert plans.allows_slack(host, "1") is True
    host.plans["1"] = Plan.FREE            # downgraded: seen once the answer is 5 s old
    clock.now += 4.9
    assert plans.allows_slack(host, "1") is True
    assert host.asked == 1
    clock.now += 0.2
    assert plans.allows_slack(host, "1") is False
    assert host.asked == 2


def test_each_org_has_its_own_answer_and_unknown_orgs_are_refused() -> None:
    host, clock = Host(), Clock()
    plans = cache(clock)
    assert plans.allows_slack(host, "1") is True
    assert plans.allows_slack(host, "2") is False
    assert plans.allows_slack(host, "999") is False
    assert host.asked == 3


def test_a_failed_lookup_fails_closed_and_is_never_kept(caplog: pytest.LogCaptureFixture) -> None:
    host, clock = Host(), Clock()
    plans = cache(clock)
    host.down = True
    with pytest.raises(PlanCheckFailed):
        plans.allows_slack(host, "1")
    with pytest.raises(PlanCheckFailed):   # asked again, not answered from the cache
        plans.allows_slack(host, "1")
    assert host.asked == 2
    assert "secret" not in caplog.text     # the host's error text is never logged
    host.down = False
    assert plans.allows_slack(host, "1") is True


def test_the_cache_stays_bounded() -> None:
    host, clock = Host(), Clock()
    plans = cache(clock, size=10)
    for number in range(25):
        plans.allows_slack(host, str(number))
    assert len(plans._answers) <= 10
