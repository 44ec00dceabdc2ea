"""Token vault: authenticated encryption bound to the row, key ids, rotation."""
from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftwise_slack.errors import VaultError
from driftwise_slack.keys import KeyRing, derive, key_id
from driftwise_slack.vault import TokenVault

NEW, OLD = "n" * 40, "o" * 40
TOKEN = "xoxb-1-2-CANARYsecretvalue"


def vault(current: str = NEW, old: tuple[str, ...] = ()) -> TokenVault:
    return TokenVault(KeyRing(current, old).encryption_keys())


def test_round_trip_and_no_plaintext() -> None:
    sealed = vault().seal(TOKEN, org_id="1", team_id="T1")
    assert TOKEN not in sealed and "CANARY" not in sealed
    assert vault().open(sealed, org_id="1", team_id="T1") == TOKEN


@pytest.mark.parametrize("org_id,team_id,field", [
    ("2", "T1", "bot_token"),        # copied onto another org's row
    ("1", "T2", "bot_token"),        # another workspace
    ("1", "T1", "refresh_token"),    # another column
])
def test_ciphertext_moved_elsewhere_fails(org_id: str, team_id: str, field: str) -> None:
    sealed = vault().seal(TOKEN, org_id="1", team_id="T1")
    with pytest.raises(VaultError):
        vault().open(sealed, org_id=org_id, team_id=team_id, field=field)


def test_damaged_or_unknown_key_fails_with_safe_text() -> None:
    sealed = vault().seal(TOKEN, org_id="1", team_id="T1")
    version, kid, body = sealed.split(".")
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[-1] ^= 1
    flipped = f"{version}.{kid}.{base64.urlsafe_b64encode(bytes(raw)).decode()}"
    cases = [flipped, sealed[:-6], f"{version}.deadbeef.{body}", "v9." + sealed[3:], "junk"]
    for bad in cases:
        with pytest.raises(VaultError) as info:
            vault().open(bad, org_id="1", team_id="T1")
        assert TOKEN not in str(info.value)


def test_old_key_decrypts_and_reseal_moves_to_current() -> None:
    sealed_old = vault(OLD).seal(TOKEN, org_id="1", team_id="T1")
    rotated = vault(NEW, (OLD,))
    assert rotated.open(sealed_old, org_id="1", team_id="T1") == TOKEN
    assert rotated.needs_reseal(sealed_old)
    resealed = rotated.reseal(sealed_old, org_id="1", team_id="T1")
    assert not rotated.needs_reseal(resealed)
    assert vault(NEW).open(resealed, org_id="1", team_id="T1") == TOKEN
    with pytest.raises(VaultError, match="no longer has"):
        vault(NEW).open(sealed_old, org_id="1", team_id="T1")


def test_key_order_per_consumer() -> None:
    ring = KeyRing(NEW, ("a" * 40, "b" * 40))
    assert ring.encryption_keys()[0] == derive(NEW, "token-encryption")
    assert ring.signing_keys()[-1] == derive(NEW, "oauth-state")
    assert ring.signing_keys()[0] == derive("a" * 40, "oauth-state")


def test_sub_keys_differ_per_purpose() -> None:
    assert derive(NEW, "oauth-state") != derive(NEW, "token-encryption")
    assert key_id(derive(NEW, "token-encryption")) != key_id(derive(OLD, "token-encryption"))


def test_nonces_do_not_repeat() -> None:
    v = vault()
    seen = {v.seal("t", org_id="1", team_id="T").split(".")[2][:16] for _ in range(20_000)}
    assert len(seen) == 20_000


@settings(max_examples=100, deadline=None)
@given(token=st.text(min_size=1, max_size=300), org=st.text(min_size=1, max_size=12),
       other=st.text(min_size=1, max_size=12))
def test_properties(token: str, org: str, other: str) -> None:
    v = vault()
    sealed = v.seal(token, org_id=org, team_id="T1")
    assert v.open(sealed, org_id=org, team_id="T1") == token
    if other != org:
        with pytest.raises(VaultError):
            v.open(sealed, org_id=other, team_id="T1")
