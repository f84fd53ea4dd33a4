"""The audit log: append-only rows in ``audit_events``."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from models.tables import AuditEvent


def record_audit_event(
    session: Session,
    *,
    actor: str,
    action: str,
    subject: str,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an event to the session's transaction; it commits with the change it describes."""
    event = AuditEvent(actor=actor, action=action, subject=subject, details=details or {})
    session.add(event)
    session.flush()
    session.refresh(event)
    return event


async def add_audit_event(
    conn: AsyncConnection[Any],
    *,
    actor: str,
    action: str,
    subject: str,
    details: dict[str, Any] | None = None,
) -> None:
    """``record_audit_event`` for the stores on psycopg's async pool: in the connection's
    transaction, so it commits with the change it describes."""
    await conn.execute(
        "INSERT INTO audit_events (actor, action, subject, details) VALUES (%s, %s, %s, %s)",
        (actor, action, subject, Jsonb(details or {})),
    )


def write_audit_event(
    engine: Engine,
    *,
    actor: str,
    action: str,
    subject: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Record an event in a transaction of its own, for actions that have no database
    change of their own to ride along with (a decode, a Keycloak call, a workflow step)."""
    with Session(engine) as session:
        record_audit_event(session, actor=actor, action=action, subject=subject, details=details)
        session.commit()


def list_audit_events(session: Session, *, subject: str) -> list[AuditEvent]:
    statement = select(AuditEvent).where(AuditEvent.subject == subject).order_by(col(AuditEvent.id))
    return list(session.exec(statement))
