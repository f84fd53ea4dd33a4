"""SQLModel tables. The schema itself is owned by Alembic (``infra/migrations``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Identity, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel


class AuditEvent(SQLModel, table=True):
    """Who did what to which business object, and when. Append-only (a trigger refuses
    UPDATE and DELETE), so the trail cannot be edited after the fact."""

    __tablename__ = "audit_events"

    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    occurred_at: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    actor: str = Field(max_length=200, description="subject id of a person, or a service name")
    action: str = Field(max_length=100, index=True)
    subject: str = Field(max_length=100, index=True, description="business id, e.g. pay_…")
    details: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSONB, nullable=False, server_default="{}")
    )


class CustomerRow(SQLModel, table=True):
    """A customer. ``pii`` holds their personal data as an envelope, never in the clear."""

    __tablename__ = "customers"

    id: str = Field(primary_key=True, max_length=40)
    user_id: str | None = Field(default=None, max_length=64, unique=True)
    status: str = Field(max_length=30)
    country: str = Field(max_length=2)
    pii: bytes
    created_at: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
