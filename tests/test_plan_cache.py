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


class Runner:
    """Keeps the tasks a cache hands off, to run them when the test says."""

    def __init__(self, *, closed: bool = False) -> None:
        self.tasks: list[t.Callable[[], None]] = []
        self.closed = closed

    def __call__(self, task: t.Callable[[], None]) -> None:
        if self.closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        self.tasks.append(task)

    def run(self) -> None:
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task()


def test_an_answer_in_use_is_asked_again_ahead_of_its_expiry_in_the_background() -> None:
    host, clock, runner = Host(), Clock(), Runner()
    plans = cache(clock, refresh=runner)
    assert plans.allows_slack(host, "1") is True
    clock.now += 2.0                        # first half of its life: nothing to do
    assert plans.allows_slack(host, "1") is True and runner.tasks == []
    clock.now += 1.0                        # second half: answered from the cache...
    host.plans["1"] = Plan.FREE
    assert plans.allows_slack(host, "1") is True
    assert plans.allows_slack(host, "1") is True
    assert runner.tasks == [] and host.asked == 1   # ...asked again once the delivery is over
    plans.refresh_stale(host)
    plans.refresh_stale(host)               # once: nothing was used since
    assert len(runner.tasks) == 1 and host.asked == 1
    runner.run()                            # the downgrade is seen by the refresh...
    assert host.asked == 2
    assert plans.allows_slack(host, "1") is False and host.asked == 2   # ...and used
    clock.now += 4.9                        # the refreshed answer counts from when it was asked
    assert plans.allows_slack(host, "1") is False and host.asked == 2
    clock.now += 0.2
    assert plans.allows_slack(host, "1") is False and host.asked == 3


def test_a_failed_refresh_leaves_the_old_answer_to_expire_on_time() -> None:
    host, clock, runner = Host(), Clock(), Runner()
    plans = cache(clock, refresh=runner)
    plans.allows_slack(host, "1")
    clock.now += 3.0
    plans.allows_slack(host, "1")
    plans.refresh_stale(host)
    host.down = True
    runner.run()
    assert plans.allows_slack(host, "1") is True            # still within its 5 s
    plans.refresh_stale(host)
    runner.run()                                            # tried again, failed again
    clock.now += 2.1
    with pytest.raises(PlanCheckFailed):                    # then it fails closed
        plans.allows_slack(host, "1")


def test_a_runner_that_is_shutting_down_changes_nothing() -> None:
    host, clock = Host(), Clock()
    plans = cache(clock, refresh=Runner(closed=True))
    plans.allows_slack(host, "1")
    clock.now += 3.0
    assert plans.allows_slack(host, "1") is True
    plans.refresh_stale(host)
    assert plans.allows_slack(host, "1") is True            # not stuck as "refreshing"
    plans.refresh_stale(host)
    clock.now += 2.1
    assert plans.allows_slack(host, "1") is True and host.asked == 2


def test_the_runtime_refreshes_on_its_background_thread_inside_the_app(
        app: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from flask import has_app_context

    from driftwise_slack.runtime import get_runtime

    runtime = get_runtime(app)
    clock = Clock()
    monkeypatch.setattr(runtime.plans, "clock", clock)
    seen: list[tuple[str, bool]] = []
    done = threading.Event()

    def plan_of(_org_id: str) -> Plan:
        seen.append((threading.current_thread().name, has_app_context()))
        if len(seen) == 2:
            done.set()
        return Plan.TEAM

    monkeypatch.setattr(runtime.host, "plan_of", plan_of)
    with app.app_context():
        deps = runtime.deps()
        assert deps.plan_allows_slack("1") is True
        clock.now += 3.0
        assert deps.plan_allows_slack("1") is True
        deps.refresh_plans()
    assert done.wait(5)
    assert seen[0] == (threading.current_thread().name, True)
    assert seen[1][0].startswith("driftwise-slack-background") and seen[1][1]
