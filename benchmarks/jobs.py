"""Baseline RQ jobs: the same HTTP post as a delivery, with none of the integration around it.

``bare_post`` is what a naive integration would queue: a plain ``requests`` post of a fixed
Block Kit message. ``sdk_post`` posts through ``slack_sdk.WebClient`` with its
``RateLimitErrorRetryHandler``, which sleeps ``Retry-After`` inside the job.
"""
from __future__ import annotations

import json
import os
import typing as t

import requests

#: The scanner error every benchmark notification carries (``env`` imports it from here).
ERROR_TEXT = ("AccessDenied: User arn:aws:iam::123456789012:role/driftwise-scan is not "
              "authorized to perform s3:ListBucket on arn:aws:s3:::prod-logs <@here> & co")
#: Environment variable carrying the message to baseline workers, as JSON.
MESSAGE_ENV = "BENCH_MESSAGE"
#: The message every baseline posts: the same blocks and text as a delivery, built once.
_payload: dict[str, t.Any] | None = None
_session: tuple[int, requests.Session] | None = None
_sdk: tuple[int, t.Any] | None = None


def message() -> dict[str, t.Any]:
    """Text and blocks of a scan-failure notification, built by the package's own builder.

    Baseline workers get it ready-made in ``BENCH_MESSAGE`` (JSON), so they never import the
    package: a forking worker's parent stays as small as a bare RQ worker's.
    """
    global _payload
    if _payload is None and os.environ.get(MESSAGE_ENV):
        _payload = json.loads(os.environ[MESSAGE_ENV])
    if _payload is None:
        import datetime as dt

        from driftwise_slack import messages

        built = messages.scan_failed(
            schedule_name="nightly-7", error=ERROR_TEXT,
            occurred_at=dt.datetime.now(dt.UTC), consecutive_failures=2,
            link="https://driftwise.bench/schedules/1007", disable_after=3)
        _payload = {"text": built.text, "blocks": list(built.blocks)}
    return _payload


def _http() -> requests.Session:
    global _session
    if _session is None or _session[0] != os.getpid():
        _session = (os.getpid(), requests.Session())
    return _session[1]


def bare_post(api_url: str, token: str, channel: str) -> str:
    """POST chat.postMessage with ``requests`` (keep-alive session per process)."""
    response = _http().post(api_url + "chat.postMessage",
                            json={"channel": channel, **message(), "unfurl_links": False,
                                  "unfurl_media": False},
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)
    body = response.json()
    if response.status_code != 200 or not body.get("ok"):
        raise RuntimeError(f"post failed: {response.status_code} {body.get('error')}")
    return str(body["ts"])


def sdk_client(api_url: str, token: str) -> t.Any:
    """A ``WebClient`` that retries 429s by sleeping ``Retry-After`` (slack_sdk's handler)."""
    global _sdk
    if _sdk is None or _sdk[0] != os.getpid():
        from slack_sdk import WebClient
        from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

        client = WebClient(token=token, base_url=api_url, timeout=10,
                           retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])
        _sdk = (os.getpid(), client)
    return _sdk[1]


def sdk_post(api_url: str, token: str, channel: str) -> str:
    """chat.postMessage through slack_sdk, sleeping on 429 as its retry handler does."""
    payload = message()
    response = sdk_client(api_url, token).chat_postMessage(
        channel=channel, text=payload["text"], blocks=payload["blocks"], token=token,
        unfurl_links=False, unfurl_media=False)
    return str(response["ts"])


def tagged_post(api_url: str, token: str, channel: str, tag: str) -> str:
    """:func:`bare_post` with ``tag`` appended to the text, so its arrival can be matched."""
    payload = message()
    response = _http().post(api_url + "chat.postMessage",
                            json={"channel": channel, "text": f"{payload['text']} {tag}",
                                  "blocks": payload["blocks"], "unfurl_links": False,
                                  "unfurl_media": False},
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)
    if response.status_code != 200 or not response.json().get("ok"):
        raise RuntimeError(f"post failed: {response.status_code}")
    return str(response.json()["ts"])
