"""The Settings page and the emulator in a real headless Chromium, over gunicorn and an RQ worker.

A person's journey: sign in, Add to Slack, Allow on the consent page, see Connected, send a test
message, fail a scheduled scan, read the message in the emulator's channel view, see the delivery
on Settings, Disconnect. Also: Cancel on the consent page, a member's view, a Free-plan owner's.
Every step is saved as a screenshot (see ``browser.py``).
"""
from __future__ import annotations

import typing as t

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from browser import Page, start_chromium
from factories import ACME, ApiActions, EmulatorClient
from processes import Gunicorn, RQWorker
from services import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CONF = ["-c", "python:driftwise_slack.gunicorn_conf"]
SCHEDULE = "Nightly production drift scan"
CANCELLED = "You cancelled the Slack connection. Nothing was changed."
FREE_PLAN_NOTE = "Slack notifications need the Team or Enterprise plan."


class Host(t.NamedTuple):
    url: str
    web: Gunicorn
    env: dict[str, str]


@pytest.fixture
def page(tmp_path_factory: pytest.TempPathFactory,
         monkeypatch: pytest.MonkeyPatch) -> t.Iterator[Page]:
    """A fresh headless Chromium (own profile, so no cookies from another test)."""
    # The driver path is given, so Selenium Manager never runs; were it ever to, it stays offline.
    monkeypatch.setenv("SE_OFFLINE", "1")
    driver = start_chromium(str(tmp_path_factory.mktemp("chromium-profile")))
    try:
        yield Page(driver)
    finally:
        driver.quit()


@pytest.fixture
def host(config: dict[str, t.Any], db: t.Any, redis: t.Any) -> t.Iterator[Host]:
    """The reference host under gunicorn, on a port the browser reaches directly."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: str(v) for k, v in config.items() if v is not None and k != "TESTING"}
    env["DRIFTWISE_BASE_URL"] = url
    with Gunicorn(env=env, port=port, extra_args=CONF, ready_path="/healthz") as web:
        yield Host(url, web, env)


def seed(actions: ApiActions, *, plan: str = "team") -> dict[str, t.Any]:
    """An org with an owner, a member and a schedule notifying ``#alerts``."""
    actions.org("acme", plan)
    return {
        "owner": actions.user("acme", "owner@acme.test", "owner"),
        "member": actions.user("acme", "member@acme.test", "member"),
        "schedule": int(actions.cli("create-schedule", "acme", SCHEDULE,
                                    "--channel", "#alerts")["schedule_id"]),
    }


def open_consent(page: Page, slack: EmulatorClient) -> None:
    """Click Add to Slack and wait for the emulator's consent page."""
    page.click("slack-connect")
    page.until(lambda d: d.current_url.startswith(slack.url + "/oauth/v2/authorize")
               and page.visible("allow"), "the consent page did not open")


def test_connect_deliver_and_disconnect(page: Page, host: Host, actions: ApiActions,
                                        slack: EmulatorClient) -> None:
    seeded = seed(actions)
    sid = seeded["schedule"]
    with RQWorker(env=host.env) as worker:
        page.sign_in(host.url, seeded["owner"])
        assert page.text("slack-status") == "Slack is not connected."
        assert page.visible("slack-connect") and page.find("slack-connect").is_enabled()
        page.shot("settings-not-connected")

        open_consent(page, slack)
        page.find(f"team-{ACME}").click()
        assert page.find(f"team-{ACME}").is_selected()
        page.shot("consent")
        page.click("allow")

        page.settings_loaded()
        assert page.wait_text("slack-status", "Connected to Acme Ops") == "Connected to Acme Ops"
        assert page.wait_text("slack-flash", "Slack is connected.")
        assert "chat:write" in page.text("slack-scopes")
        assert "?" not in page.driver.current_url, "the ?slack= outcome stays out of history"
        assert not page.visible("slack-connect")
        page.shot("settings-connected")

        page.find("slack-test-channel").send_keys("#general")
        page.click("slack-test-send")
        advice = page.wait_text("slack-test-result", "/invite @driftwise")
        assert "#general" in advice
        assert "error" in (page.find("slack-test-result").get_attribute("class") or "")
        page.shot("test-message-not-in-channel")

        worker.wait_for_log("Listening on", timeout=30)
        page.click(f"fail-scan-{sid}")
        page.wait_text(f"fail-result-{sid}", "Failed scan recorded.")
        posted = page.until(lambda _: slack.messages("C0ALERTS"),
                            "the worker never posted to #alerts")
        assert len(posted) == 1 and SCHEDULE in posted[0]["text"]

        page.driver.get(slack.url + "/_emulator/channels?refresh=0")
        article = page.until(ec.visibility_of_element_located(
            (By.CSS_SELECTOR, 'article.message[data-channel="C0ALERTS"]')),
            "the channel view shows no message in #alerts")
        assert SCHEDULE in article.text
        assert "Failing: " in article.text  # the first failure opens its thread (SPEC §7)
        page.shot("delivered-message")

        page.driver.get(host.url + "/settings")
        page.settings_loaded()
        sent = page.until(ec.visibility_of_element_located(
            (By.CSS_SELECTOR, f"#deliveries-{sid} .delivery .status-sent")),
            "the delivery never showed as sent")
        assert sent.text == "sent"
        delivery = page.driver.find_element(By.CSS_SELECTOR, f"#deliveries-{sid} .delivery")
        assert "Scan failed" in delivery.text and "#alerts" in delivery.text
        page.shot("settings-deliveries")

        # Two more failures of the streak: replies in the parent's thread, the auto-disable one
        # broadcast to the channel, and the parent edited to say so (SPEC §7).
        # One at a time: three failures waiting together (failure 2 paced behind the parent,
        # then failure 3 and the auto-disable) would rightly go out as one digest (SPEC §7).
        page.click(f"fail-scan-{sid}")
        page.wait_text(f"fail-result-{sid}", "Failed scan recorded.")
        page.until(lambda _: any(m.get("thread_ts") for m in slack.messages("C0ALERTS")),
                   "the second failure never arrived as a reply in the thread", wait=30)
        page.click(f"fail-scan-{sid}")
        page.wait_text(f"fail-result-{sid}", "The schedule is disabled.")
        page.until(lambda _: any(m.get("reply_broadcast") for m in slack.messages("C0ALERTS"))
                   and slack.count("chat.update") >= 3,
                   "the thread never got its broadcast auto-disable reply and parent edits",
                   wait=45)   # four paced posts and three paced edits, on a busy machine
        page.driver.get(slack.url + "/_emulator/channels?refresh=0")
        broadcast = page.until(ec.visibility_of_element_located(
            (By.CSS_SELECTOR, 'article.message.reply.broadcast[data-channel="C0ALERTS"]')),
            "the channel view shows no broadcast reply in the parent's thread")
        assert "also sent to the channel" in broadcast.text
        parent = page.driver.find_element(
            By.CSS_SELECTOR, f'article.message[data-ts="{posted[0]["ts"]}"]')
        assert "(edited)" in parent.text and "isabled" in parent.text
        page.shot("delivered-thread")
        page.driver.get(host.url + "/settings")
        page.settings_loaded()

        page.click("slack-disconnect")
        alert = page.until(ec.alert_is_present(), "Disconnect asked for no confirmation")
        assert "Disconnect Slack?" in alert.text
        alert.accept()
        page.wait_text("slack-message", "Slack is disconnected.")
        page.wait_text("slack-status", "Slack is not connected.")
        page.until(lambda _: page.visible("slack-connect"), "Add to Slack did not come back")
        assert not page.visible("slack-disconnect")
        assert page.text("slack-badge") == "Not connected"
        page.shot("settings-disconnected")
    assert len(slack.calls("auth.revoke")) == 1
    assert "Traceback" not in host.web.logs() + worker.logs()


def test_cancel_on_the_consent_page_changes_nothing(page: Page, host: Host,
                                                    actions: ApiActions,
                                                    slack: EmulatorClient) -> None:
    seeded = seed(actions)
    page.sign_in(host.url, seeded["owner"])
    open_consent(page, slack)
    page.click("cancel")

    page.settings_loaded()
    assert page.wait_text("slack-flash", CANCELLED) == CANCELLED
    assert "flash-notice" in (page.find("slack-flash").get_attribute("class") or "")
    assert page.text("slack-status") == "Slack is not connected."
    assert page.visible("slack-connect")
    page.shot("cancelled")
    assert slack.count("oauth.v2.access") == 0


def test_member_and_free_plan_owner_cannot_connect(page: Page, host: Host,
                                                   actions: ApiActions,
                                                   slack: EmulatorClient) -> None:
    seeded = seed(actions)
    assert actions.install(seeded["owner"]).status_code == 302
    page.sign_in(host.url, seeded["member"])
    assert page.wait_text("slack-status", "Connected to Acme Ops")
    assert page.wait_text("slack-note", "Ask an owner or admin")
    for control in ("slack-connect", "slack-disconnect", "slack-test-send",
                    f"fail-scan-{seeded['schedule']}"):
        assert not page.visible(control), f"a member sees #{control}"
    page.shot("member-view")
    page.sign_out()

    actions.org("freeco", "free")
    owner = actions.user("freeco", "owner@freeco.test", "owner")
    page.sign_in(host.url, owner)
    assert page.text("slack-status") == "Slack is not connected."
    assert page.visible("slack-connect")
    assert not page.find("slack-connect").is_enabled()
    assert page.wait_text("slack-note", FREE_PLAN_NOTE) == FREE_PLAN_NOTE
    page.shot("free-plan")
    page.find("slack-connect").click()                 # disabled: nothing may happen
    assert page.driver.current_url.startswith(host.url + "/settings")
    assert "POST /api/v2/webhooks/slack/install" not in host.web.logs()


def test_a_delivery_problem_shows_a_banner_until_an_admin_dismisses_it(
        page: Page, host: Host, actions: ApiActions, app: t.Any, db: t.Any,
        slack: EmulatorClient) -> None:
    from delivery_helpers import drain

    seeded = seed(actions)
    sid = seeded["schedule"]
    assert actions.install(seeded["owner"]).status_code == 302
    slack.fault(method="chat.postMessage", mode="ok_false", error="not_in_channel", times=1)
    actions.cli("fail-scan", str(sid), "--error", "AccessDenied")
    assert [row["status"] for row in drain(app, db)] == ["failed"]

    page.sign_in(host.url, seeded["member"])
    banner = page.until(lambda _: page.visible("slack-problems") and page.find("slack-problems"),
                        "the member saw no banner")
    assert f"Slack notifications for \u201c{SCHEDULE}\u201d are not arriving." in banner.text
    assert "/invite @driftwise" in banner.text
    assert not page.driver.find_elements(By.CSS_SELECTOR, "#slack-problems button"), \
        "a member may not dismiss"
    page.sign_out()

    page.sign_in(host.url, seeded["owner"])
    page.until(lambda _: page.visible("slack-problems"), "the owner saw no banner")
    page.shot("settings-delivery-problem")
    [button] = page.driver.find_elements(By.CSS_SELECTOR, "#slack-problems button")
    button.click()
    page.until(lambda _: not page.visible("slack-problems"), "the banner stayed")
    page.driver.refresh()
    page.settings_loaded()
    assert not page.visible("slack-problems")
    actions_log = [e["action"] for e in actions.cli("audit", "acme")["events"]]
    assert "slack.delivery_problem" in actions_log
    assert "slack.delivery_problem_dismissed" in actions_log
