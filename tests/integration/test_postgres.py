"""PostgreSQL: migrated to head at `up`; the audit log cannot be edited after the fact."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from infra.audit import list_audit_events, record_audit_event
from infra.migrations.runner import current_revision, head_revision
from infra.settings import Settings


def test_database_is_at_the_newest_migration(settings: Settings) -> None:
    assert head_revision() is not None
    assert current_revision(settings) == head_revision()


def test_audit_events_are_recorded_in_order(engine: Engine, unique: str) -> None:
    subject = f"pay_{unique}"
    with Session(engine) as session:
        record_audit_event(session, actor="carol", action="review.opened", subject=subject)
        record_audit_event(
            session, actor="carol", action="review.approved", subject=subject, details={"n": 1}
        )
        session.commit()
    with Session(engine) as session:
        events = list_audit_events(session, subject=subject)
    assert [e.action for e in events] == ["review.opened", "review.approved"]
    assert events[1].details == {"n": 1}
    assert events[0].occurred_at is not None
    assert events[0].occurred_at.tzinfo is not None


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET actor = 'mallory' WHERE subject = :subject",
        "DELETE FROM audit_events WHERE subject = :subject",
        "TRUNCATE audit_events",
    ],
)
def test_the_audit_log_refuses_edits(engine: Engine, unique: str, statement: str) -> None:
    subject = f"pay_{unique}"
    with Session(engine) as session:
        record_audit_event(session, actor="olivia", action="payment.viewed", subject=subject)
        session.commit()
    with engine.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
        conn.execute(text(statement), {"subject": subject})
    with Session(engine) as session:
        assert [e.actor for e in list_audit_events(session, subject=subject)] == ["olivia"]
