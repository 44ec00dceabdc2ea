"""OAuth state: signature, expiry, binding to (org, user) and to the browser."""
from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode

from driftwise_slack.errors import InvalidState
from driftwise_slack.host import Caller
from driftwise_slack.keys import KeyRing, derive
from driftwise_slack.oauth_state import MAX_STATE_LENGTH, SALT, StateSigner

KEY = "k" * 40
OLD = "o" * 40
CALLER = Caller(org_id="1", user_id="7")


def signer(current: str = KEY, old: tuple[str, ...] = (), max_age: int = 600) -> StateSigner:
    return StateSigner(KeyRing(current, old).signing_keys(), max_age=max_age)


def issue(s: StateSigner | None = None, now: int | None = None):  # type: ignore[no-untyped-def]
    import time

    return (s or signer()).issue(CALLER, now=now or int(time.time()))


def test_round_trip_binds_org_user_and_browser() -> None:
    issued = issue()
    verified = signer().verify(issued.token, {issued.cookie_name: issued.cookie_value})
    assert (verified.org_id, verified.user_id, verified.nonce) == ("1", "7", issued.nonce)
    assert issued.cookie_value not in issued.token


@pytest.mark.parametrize("cookies", [
    {},
    {"dwslack_other": "x"},
    "wrong-value",
])
def test_other_browser_is_refused(cookies: object) -> None:
    issued = issue()
    jar = {issued.cookie_name: "not-the-binding"} if cookies == "wrong-value" else cookies
    with pytest.raises(InvalidState, match="another browser"):
        signer().verify(issued.token, jar)  # type: ignore[arg-type]


def test_another_states_cookie_does_not_unlock_this_state() -> None:
    mine, theirs = issue(), issue()
    with pytest.raises(InvalidState):
        signer().verify(mine.token, {mine.cookie_name: theirs.cookie_value,
                                     theirs.cookie_name: theirs.cookie_value})


def test_expired_and_future_states_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    issued = issue(signer(max_age=600))
    cookies = {issued.cookie_name: issued.cookie_value}
    real = time.time()
    monkeypatch.setattr(time, "time", lambda: real + 601)
    with pytest.raises(InvalidState, match="expired"):
        signer(max_age=600).verify(issued.token, cookies)
    monkeypatch.setattr(time, "time", lambda: real - 120)
    with pytest.raises(InvalidState):
        signer(max_age=600).verify(issued.token, cookies)


def test_old_key_still_verifies_and_removed_key_does_not() -> None:
    issued = issue(signer(current=OLD))
    cookies = {issued.cookie_name: issued.cookie_value}
    assert signer(current=KEY, old=(OLD,)).verify(issued.token, cookies).org_id == "1"
    with pytest.raises(InvalidState):
        signer(current=KEY).verify(issued.token, cookies)


def test_state_from_another_salt_or_key_purpose_is_refused() -> None:
    issued = issue()
    payload = URLSafeTimedSerializer(KeyRing(KEY).signing_keys()).loads(issued.token,
                                                                        salt=SALT)
    other_salt = URLSafeTimedSerializer(derive(KEY, "oauth-state"), salt="password-reset")
    token_key = URLSafeTimedSerializer(derive(KEY, "token-encryption"), salt=SALT)
    cookies = {issued.cookie_name: issued.cookie_value}
    for forged in (other_salt.dumps(payload), token_key.dumps(payload)):
        with pytest.raises(InvalidState):
            signer().verify(forged, cookies)


def test_swapped_org_keeps_no_signature() -> None:
    issued = issue()
    body, _, sig = issued.token.rpartition(".")
    forged_payload = URLSafeTimedSerializer(b"attacker", salt=SALT).dumps(
        {"o": "2", "u": "7", "n": issued.nonce, "b": "x", "t": 0})
    forged = forged_payload.rpartition(".")[0] + "." + sig
    with pytest.raises(InvalidState):
        signer().verify(forged, {issued.cookie_name: issued.cookie_value})


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "\x00" * 10,
                                   "x" * (MAX_STATE_LENGTH + 1), "ünïcødé.🙂.x"])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(InvalidState):
        signer().verify(token, {})


def _signature_bytes(token: str) -> bytes | None:
    try:
        return base64_decode(token.rpartition(".")[2])
    except Exception:
        return None


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), replacement=st.characters(codec="ascii"))
def test_any_changed_character_is_refused(position: int, replacement: str) -> None:
    issued = issue()
    token = issued.token
    index = position % len(token)
    if token[index] == replacement:
        return
    changed = token[:index] + replacement + token[index + 1:]
    # base64 ignores the spare low bits of the last character: such an edit changes no byte.
    assume(_signature_bytes(changed) != _signature_bytes(token)
           or changed.rpartition(".")[0] != token.rpartition(".")[0])
    with pytest.raises(InvalidState):
        signer().verify(changed, {issued.cookie_name: issued.cookie_value})


@settings(max_examples=50, deadline=None)
@given(org=st.text(min_size=1, max_size=20), user=st.text(min_size=1, max_size=20))
def test_round_trip_any_ids(org: str, user: str) -> None:
    import time

    issued = signer().issue(Caller(org_id=org, user_id=user), now=int(time.time()))
    verified = signer().verify(issued.token, {issued.cookie_name: issued.cookie_value})
    assert (verified.org_id, verified.user_id) == (org, user)
