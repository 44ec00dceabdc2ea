"""The first schema: installations, redeemed OAuth states, deliveries, seen events.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "slack_installations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("team_id", sa.String(32), nullable=False),
        sa.Column("team_name", sa.String(255), nullable=False),
        sa.Column("enterprise_id", sa.String(32)),
        sa.Column("app_id", sa.String(32)),
        sa.Column("bot_user_id", sa.String(32)),
        sa.Column("scopes", sa.String(512), nullable=False),
        sa.Column("installed_by", sa.String(64), nullable=False),
        sa.Column("token_sealed", sa.Text, nullable=False),
        sa.Column("refresh_sealed", sa.Text),
        sa.Column("token_expires_at", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("completed_at", TS, nullable=False),
        sa.Column("invalid_at", TS),
        sa.Column("invalid_reason", sa.String(64)),
        sa.UniqueConstraint("org_id", "team_id", name="uq_slack_installations_org_team"),
    )
    op.create_index("ix_slack_installations_org_completed", "slack_installations",
                    ["org_id", "completed_at"])
    op.create_index("ix_slack_installations_team", "slack_installations", ["team_id"])

    op.create_table(
        "slack_redeemed_states",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("redeemed_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index("ix_slack_redeemed_states_expires_at", "slack_redeemed_states",
                    ["expires_at"])

    op.create_table(
        "slack_deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dedupe_key", sa.String(255), nullable=False),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("schedule_id", sa.String(64), nullable=False),
        sa.Column("schedule_name", sa.String(255), nullable=False),
        sa.Column("channel", sa.String(128)),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("consecutive_failures", sa.Integer, nullable=False),
        sa.Column("disable_after", sa.Integer),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("slack_error", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("team_id", sa.String(32)),
        sa.Column("slack_ts", sa.String(32)),
        sa.Column("job_id", sa.String(80)),
        sa.Column("not_before", TS),
        sa.Column("lease_until", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("sent_at", TS),
        sa.UniqueConstraint("dedupe_key", name="uq_slack_deliveries_dedupe_key"),
    )
    op.create_index("ix_slack_deliveries_org_schedule", "slack_deliveries",
                    ["org_id", "schedule_id", "id"])
    op.create_index("ix_slack_deliveries_status_lease", "slack_deliveries",
                    ["status", "lease_until"])
    op.create_index("ix_slack_deliveries_created", "slack_deliveries", ["created_at"])

    op.create_table(
        "slack_seen_events",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("received_at", TS, nullable=False),
    )
    op.create_index("ix_slack_seen_events_received_at", "slack_seen_events", ["received_at"])


def downgrade() -> None:
    op.drop_table("slack_seen_events")
    op.drop_table("slack_deliveries")
    op.drop_table("slack_redeemed_states")
    op.drop_table("slack_installations")
