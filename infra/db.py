"""The ledger database: one engine per process, built by the entry point."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import create_engine

from infra.settings import Settings


def create_db_engine(settings: Settings, *, pool_size: int = 10) -> Engine:
    return create_engine(
        settings.database_url,
        pool_size=pool_size,
        pool_pre_ping=True,  # survive a database restart without a process restart
        connect_args={"connect_timeout": 5, "application_name": "bfc"},
    )
