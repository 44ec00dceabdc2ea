"""Plain helpers for tests: the emulator's control API and an ``ApiActions`` driver.

``ApiActions`` drives the reference host the way a user does: CLI to seed, the API to start an
install, the emulator's consent form, then the callback in the same browser (test client).
"""
from __future__ import annotations

import json
import typing as t
from urllib.parse import parse_qs, urlsplit

import requests

#: The server key of every test app (>= 32 characters).
ENCRYPTION_KEY = "test-encryption-key-0123456789abcdefghijklmnopqrstuvwxyz"
ACME = "T0ACME01"
GLOBEX = "T0GLOBEX1"


class EmulatorClient:
    """The local Slack emulator, seen through its control API."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()

    def reset(self) -> None:
        self.http.post(f"{self.url}/_emulator/reset", timeout=5).raise_for_status()

    def fault(self, **rule: t.Any) -> None:
        self.http.post(f"{self.url}/_emulator/faults", json=rule, timeout=5).raise_for_status()

    def configure(self, **options: t.Any) -> None:
        self.http.post(f"{self.url}/_emulator/config", json=options, timeout=5).raise_for_status()

    def membership(self, channel: str, member: bool) -> None:
        self.http.post(f"{self.url}/_emulator/channels/{channel}/membership",
                       json={"member": member}, timeout=5).raise_for_status()

    def calls(self, method: str | None = None) -> list[dict[str, t.Any]]:
        params = {"method": method} if method else {}
        body = self.http.get(f"{self.url}/_emulator/calls", params=params, timeout=5).json()
        return t.cast(list[dict[str, t.Any]], body["calls"])

    def count(self, method: str) -> int:
        return len(self.calls(method))

    def messages(self, channel: str | None = None) -> list[dict[str, t.Any]]:
        params = {"channel": channel} if channel else {}
        body = self.http.get(f"{self.url}/_emulator/messages", params=params, timeout=5).json()
        return t.cast(list[dict[str, t.Any]], body["messages"])

    def token_live(self, token: str) -> bool:
        body = self.http.post(f"{self.url}/_emulator/tokens/check", json={"token": token},
                              timeout=5).json()
        return bool(body["live"])

    def consent(self, authorize_url: str, *, team: str = ACME, action: str = "allow",
                channel: str = "C0ALERTS") -> str:
        """Submit the consent form as a person would; returns the redirect back to us."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(authorize_url).query).items()}
        form = {**query, "team": team, "channel": channel, "action": action}
        response = self.http.post(f"{self.url}/oauth/v2/authorize", data=form,
                                  allow_redirects=False, timeout=5)
        assert response.status_code == 302, response.text
        return response.headers["Location"]


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


class ApiActions:
    """One line per step of a user's journey through the reference host."""

    def __init__(self, app: t.Any, client: t.Any, slack: EmulatorClient) -> None:
        self.app, self.client, self.slack = app, client, slack
        self.runner = app.test_cli_runner()

    def cli(self, *args: str) -> dict[str, t.Any]:
        result = self.runner.invoke(args=["host", *args])
        assert result.exit_code == 0, result.output
        return t.cast(dict[str, t.Any], json.loads(result.output.strip().splitlines()[-1]))

    def org(self, slug: str = "acme", plan: str = "team") -> int:
        return int(self.cli("create-org", slug, "--plan", plan)["org_id"])

    def user(self, slug: str = "acme", email: str = "owner@acme.test",
             role: str = "owner") -> str:
        return str(self.cli("add-user", slug, email, "--role", role)["token"])

    def owner(self, slug: str = "acme", plan: str = "team") -> str:
        self.org(slug, plan)
        return self.user(slug, f"owner@{slug}.test", "owner")

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def start(self, token: str) -> t.Any:
        return self.client.post("/api/v2/webhooks/slack/install", headers=self.auth(token))

    def authorize_url(self, token: str) -> str:
        response = self.start(token)
        assert response.status_code == 200, response.get_data(as_text=True)
        return t.cast(str, response.get_json()["url"])

    def callback(self, location: str, **kwargs: t.Any) -> t.Any:
        return self.client.get(path_of(location), **kwargs)

    def install(self, token: str, *, team: str = "T0ACME01", action: str = "allow") -> t.Any:
        """Start, consent at the emulator, and come back: the callback's response."""
        location = self.slack.consent(self.authorize_url(token), team=team, action=action)
        return self.callback(location)

    def status(self, token: str) -> t.Any:
        return self.client.get("/api/v2/webhooks/slack/status", headers=self.auth(token))

    def uninstall(self, token: str) -> t.Any:
        return self.client.delete("/api/v2/webhooks/slack/install", headers=self.auth(token))
