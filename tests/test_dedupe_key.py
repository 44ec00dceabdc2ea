"""``ScanEvent.dedupe_key``: one key per event, never shared by two events, at most 255 chars."""
from __future__ import annotations

import typing as t

import hypothesis.strategies as st
import pytest
from hypothesis import given

from driftwise_slack.host import DEDUPE_KEY_MAX, EventType, ScanEvent


def event(org_id: str, schedule_id: str, run_id: str,
          kind: EventType = EventType.SCHEDULED_SCAN_FAILED) -> ScanEvent:
    return ScanEvent(type=kind, org_id=org_id, schedule_id=schedule_id, schedule_name="n",
                     channel="#a", run_id=run_id)


@pytest.mark.parametrize("one, other", [
    (("a:b", "c", "r"), ("a", "b:c", "r")),          # the colliding pair of the old format
    (("a", "b:c", "r"), ("a", "b", "c:r")),
    (("a%3Ab", "c", "r"), ("a:b", "c", "r")),        # an id that already reads like an escape
    (("a%", "3Ab", "r"), ("a%3Ab", "", "r")),
    (("", "", ""), (":", "", "")),
])
def test_ids_with_separators_do_not_collide(one: tuple[str, str, str],
                                            other: tuple[str, str, str]) -> None:
    assert event(*one).dedupe_key != event(*other).dedupe_key


def test_plain_ids_keep_the_keys_rows_already_carry() -> None:
    """Rows written before the change still deduplicate the same events after it."""
    assert event("17", "42", "run-1").dedupe_key == "scheduled_scan_failed:17:42:run-1"
    assert (event("17", "42", "run-1", EventType.SCHEDULE_AUTO_DISABLED).dedupe_key
            == "schedule_auto_disabled:17:42:run-1")


@pytest.mark.parametrize("ids", [
    ("o" * 64, "s" * 64, "r" * 200),     # too long: hashed, not clipped
    ("o", "s", "run\x00nul"),            # PostgreSQL refuses NUL in text
    ("o", "\ud800", "r"),                # a lone surrogate cannot be encoded
    (":" * 90, "s", "r"),                # escaping alone would triple it past the limit
])
def test_unstorable_keys_become_a_stable_hash(ids: tuple[str, str, str]) -> None:
    key = event(*ids).dedupe_key
    assert key.startswith("sha256:") and len(key) == 71 <= DEDUPE_KEY_MAX
    key.encode("utf-8")  # storable as it is
    assert event(*ids).dedupe_key == key


def test_long_ids_that_differ_only_at_the_end_keep_distinct_keys() -> None:
    """Clipping to the column width used to merge these two events into one row."""
    one, other = event("o", "s", "r" * 300 + "1"), event("o", "s", "r" * 300 + "2")
    assert one.dedupe_key != other.dedupe_key


ids = st.text(alphabet=st.sampled_from(":%3Aab\x00"), max_size=8)


@given(st.tuples(ids, ids, ids), st.tuples(ids, ids, ids))
def test_distinct_events_have_distinct_keys(one: t.Any, other: t.Any) -> None:
    if one != other:
        assert event(*one).dedupe_key != event(*other).dedupe_key
    else:
        assert event(*one).dedupe_key == event(*other).dedupe_key
    assert len(event(*one).dedupe_key) <= DEDUPE_KEY_MAX


def test_two_orgs_whose_ids_used_to_collide_each_get_their_row(app: t.Any, db: t.Any) -> None:
    from sqlalchemy import text

    from driftwise_slack.reference_host.integration import slack as extension

    with app.app_context():
        extension.dispatch(event("a:b", "c", "r"))
        extension.dispatch(event("a", "b:c", "r"))
        extension.dispatch(event("a", "b:c", "r"))  # the same event again: still one row
    rows = db.execute(text("SELECT org_id, schedule_id, dedupe_key FROM slack_deliveries "
                           "ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [
        ("a:b", "c", "scheduled_scan_failed:a%3Ab:c:r"),
        ("a", "b:c", "scheduled_scan_failed:a:b%3Ac:r"),
    ]
