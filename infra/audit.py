"""The audit log: append-only rows in ``audit_events``."""

from __future__ import annotations

from typing import Any

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


def list_audit_events(session: Session, *, subject: str) -> list[AuditEvent]:
    statement = select(AuditEvent).where(AuditEvent.subject == subject).order_by(col(AuditEvent.id))
    return list(session.exec(statement))
