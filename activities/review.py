"""Review activities: the case's audit trail."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session
from temporalio import activity

from infra.audit import record_audit_event
from models.review import RECORD_REVIEW_EVENT, ReviewEvent


class ReviewActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn(name=RECORD_REVIEW_EVENT)
    def record_review_event(self, event: ReviewEvent) -> None:
        # At-least-once: a retried activity may write the same line twice. The trail is a
        # record of what was attempted, ordered by id; a duplicate carries the same facts.
        with Session(self._engine) as session:
            record_audit_event(
                session,
                actor=event.actor,
                action=event.action,
                subject=event.review_id,
                details=event.details,
            )
            session.commit()
