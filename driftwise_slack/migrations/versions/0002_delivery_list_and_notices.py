"""Delivery list fields, indexes whose cost follows the work at hand, admin notices.

- ``slack_deliveries`` gains ``thread_ts`` and ``digest`` (SPEC §7's delivery list).
- The full ``(status, lease_until)`` and ``created_at`` indexes give way to partial ones: the
  sweeper reads unfinished rows only, cleanup reads finished rows only, and ``(org_id, id)``
  serves the org-wide list newest first.
- ``slack_admin_notices`` remembers when a (org, schedule, reason) problem was last told.

Existing rows are kept as they are (``digest`` defaults to false on the server).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
# Frozen copies of the predicates in models.py: a migration must not change when the models do.
UNFINISHED = "status IN ('pending', 'queued', 'sending')"
FINAL = "status IN ('sent', 'skipped', 'failed')"


def _partial(name: str, columns: list[str], predicate: str) -> None:
    op.create_index(name, "slack_deliveries", columns,
                    postgresql_where=sa.text(predicate), sqlite_where=sa.text(predicate))


def upgrade() -> None:
    op.add_column("slack_deliveries", sa.Column("thread_ts", sa.String(32)))
    op.add_column("slack_deliveries", sa.Column("digest", sa.Boolean, nullable=False,
                                                server_default=sa.false()))

    op.drop_index("ix_slack_deliveries_status_lease", table_name="slack_deliveries")
    op.drop_index("ix_slack_deliveries_created", table_name="slack_deliveries")
    op.create_index("ix_slack_deliveries_org", "slack_deliveries", ["org_id", "id"])
    _partial("ix_slack_deliveries_unfinished", ["id"], UNFINISHED)
    _partial("ix_slack_deliveries_lane_unfinished", ["org_id", "channel", "id"], UNFINISHED)
    _partial("ix_slack_deliveries_finished_created", ["created_at"], FINAL)

    op.create_table(
        "slack_admin_notices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("schedule_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("last_notified_at", TS, nullable=False),
        sa.Column("delivery_id", sa.Integer),
        sa.UniqueConstraint("org_id", "schedule_id", "reason",
                            name="uq_slack_admin_notices_org_schedule_reason"),
    )


def downgrade() -> None:
    op.drop_table("slack_admin_notices")
    for name in ("ix_slack_deliveries_finished_created", "ix_slack_deliveries_lane_unfinished",
                 "ix_slack_deliveries_unfinished", "ix_slack_deliveries_org"):
        op.drop_index(name, table_name="slack_deliveries")
    op.create_index("ix_slack_deliveries_created", "slack_deliveries", ["created_at"])
    op.create_index("ix_slack_deliveries_status_lease", "slack_deliveries",
                    ["status", "lease_until"])
    with op.batch_alter_table("slack_deliveries") as batch:
        batch.drop_column("digest")
        batch.drop_column("thread_ts")
