"""One conversation per failing schedule (SPEC §7).

- ``slack_streaks`` remembers each (org, workspace, channel, schedule) conversation: its parent
  message, the streak's state and which state the parent last showed.
- The two delivery-list indexes leave out ``parent_update`` rows (edits of a parent message),
  as the list does, so a page is still an index-only read.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
# Frozen copy of models.LISTED_SQL: a migration must not change when the models do.
LISTED = "event_type <> 'parent_update'"
OPEN = "recovered_at IS NULL"
LIST_INDEXES = {"ix_slack_deliveries_org": ["org_id", "id"],
                "ix_slack_deliveries_org_schedule": ["org_id", "schedule_id", "id"]}


def upgrade() -> None:
    op.create_table(
        "slack_streaks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("team_id", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(128), nullable=False),
        sa.Column("channel_id", sa.String(32)),
        sa.Column("schedule_id", sa.String(64), nullable=False),
        sa.Column("schedule_name", sa.String(255), nullable=False),
        sa.Column("parent_ts", sa.String(32)),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("disable_after", sa.Integer),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("first_failed_at", TS, nullable=False),
        sa.Column("last_failed_at", TS, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("recovered_at", TS),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("edited_version", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("org_id", "team_id", "channel", "schedule_id",
                            name="uq_slack_streaks_conversation"),
    )
    op.create_index("ix_slack_streaks_open", "slack_streaks", ["org_id", "schedule_id"],
                    postgresql_where=sa.text(OPEN), sqlite_where=sa.text(OPEN))
    for name, columns in LIST_INDEXES.items():
        op.drop_index(name, table_name="slack_deliveries")
        op.create_index(name, "slack_deliveries", columns,
                        postgresql_where=sa.text(LISTED), sqlite_where=sa.text(LISTED))


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM slack_deliveries WHERE event_type = 'parent_update'"))
    for name, columns in LIST_INDEXES.items():
        op.drop_index(name, table_name="slack_deliveries")
        op.create_index(name, "slack_deliveries", columns)
    op.drop_index("ix_slack_streaks_open", table_name="slack_streaks")
    op.drop_table("slack_streaks")
