"""The sweeper reads unattended rows by their lapsed lease, not every unfinished row.

``ix_slack_deliveries_unfinished_lease`` holds the unfinished rows ordered by when their lease
lapses (``-infinity`` for a row never leased), then id. The sweeper's read is then one range at
the front of it: an idle sweep beside 50k queued jobs holding running leases reads none of them.
It replaces ``ix_slack_deliveries_unfinished`` (unfinished ids): while that index existed the
planner, whose statistics had not yet seen a backlog of queued rows, walked it whole and sorted.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-12
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Frozen copies of models.UNFINISHED_SQL and models.LEASE_KEY_SQL: a migration must not change
# when the models do.
UNFINISHED = "status IN ('pending', 'queued', 'sending')"
LEASE_KEY = "COALESCE(lease_until, '-infinity')"
NAME = "ix_slack_deliveries_unfinished_lease"
OLD = "ix_slack_deliveries_unfinished"


def upgrade() -> None:
    op.create_index(NAME, "slack_deliveries", [sa.text(LEASE_KEY), "id"],
                    postgresql_where=sa.text(UNFINISHED), sqlite_where=sa.text(UNFINISHED))
    op.drop_index(OLD, table_name="slack_deliveries")


def downgrade() -> None:
    op.create_index(OLD, "slack_deliveries", ["id"],
                    postgresql_where=sa.text(UNFINISHED), sqlite_where=sa.text(UNFINISHED))
    op.drop_index(NAME, table_name="slack_deliveries")
