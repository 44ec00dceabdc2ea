"""Alembic environment: runs on the connection handed over by ``migrations.upgrade``."""
from __future__ import annotations

from alembic import context

from driftwise_slack.migrations import VERSION_TABLE
from driftwise_slack.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
