"""Review activities: the case's audit trail."""

from __future__ import annotations

from sqlalchemy import Engine
from temporalio import activity

from infra.audit import write_audit_event
from infra.notifier import Notifier
from models.review import NOTIFY_SUPERVISORS, RECORD_REVIEW_EVENT, EscalationNotice, ReviewEvent


class ReviewActivities:
    def __init__(
        self, engine: Engine, notifier: Notifier, *, supervisors: list[str], ui_url: str
    ) -> None:
        self._engine = engine
        self._notifier = notifier
        self._supervisors = supervisors
        self._ui_url = ui_url

    @activity.defn(name=NOTIFY_SUPERVISORS)
    def notify_supervisors(self, notice: EscalationNotice) -> None:
        # Ids and times only: the case's details are read in the Web UI or the API.
        due = notice.next_due_at.isoformat() if notice.next_due_at else "-"
        self._notifier.send(
            to=self._supervisors,
            subject=f"Compliance review {notice.review_id} escalated (level {notice.level})",
            body=(
                f"The {notice.kind} review {notice.review_id} passed an SLA deadline and is "
                f"escalated to level {notice.level}. Next deadline: {due}.\n\n"
                f"{self._ui_url}/namespaces/default/workflows/{notice.review_id}\n"
            ),
            # One message per case and level: a retried activity repeats the same message.
            message_id=f"{notice.review_id}.escalation-{notice.level}",
        )

    @activity.defn(name=RECORD_REVIEW_EVENT)
    def record_review_event(self, event: ReviewEvent) -> None:
        # At-least-once: a retried activity may write the same line twice. The trail is a
        # record of what was attempted, ordered by id; a duplicate carries the same facts.
        write_audit_event(
            self._engine,
            actor=event.actor,
            action=event.action,
            subject=event.review_id,
            details=event.details,
        )
