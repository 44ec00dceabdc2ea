"""The package's Alembic migrations, with their own version table.

``upgrade(engine)`` brings the ``slack_*`` tables to the newest revision; the host's own
migrations (and its ``alembic_version`` table) are never touched.
"""
from __future__ import annotations

import os

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

#: Our version table, so the host's ``alembic_version`` stays its own.
VERSION_TABLE = "driftwise_slack_alembic_version"
#: Serialises concurrent upgrades on PostgreSQL (two web workers booting at once).
_ADVISORY_LOCK_KEY = 0x5D5F_51AC


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", os.path.dirname(os.path.abspath(__file__)))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run every pending migration. Idempotent; safe when several processes call it at once."""
    cfg = _config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK_KEY})")
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
