"""ComplianceReviewWorkflow (``rev_…``): one case, decided by compliance officers.

The case is opened by its parent (a payment or an onboarding) as a child workflow and
returns exactly one outcome to it.

Decisions arrive as Temporal Updates: ``approve``, ``reject``, ``request_info``,
``assign``, ``comment``. Their validators refuse, before anything is written to history:
a caller without the compliance_officer role; the customer the case concerns; the same
officer approving twice toward a four-eyes quorum; anything on a closed case. The caller
gets the refusal (or the case after the decision) synchronously.

SLA, as durable timers counted from opening (``SlaPolicy``): the first deadline escalates
the case, the second escalates it again, the last applies the case's default outcome and
records that the SLA expired. A decision that closes the case ends the waiting, so later
deadlines never fire. Every decision and every timer outcome goes to the audit log.

Search attributes (ids, codes and times only): ReviewStatus, ReviewKind, ReviewAssignee,
ReviewDueAt, ReviewEscalations. Current details say what the case waits for.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ApplicationError

from models.review import (
    NOTIFY_SUPERVISORS,
    OFFICER_ROLE,
    RECORD_REVIEW_EVENT,
    REVIEW_WORKFLOW,
    SUPERVISOR_ROLE,
    Actor,
    AssignInput,
    CommentInput,
    DecideInput,
    DecisionRecord,
    EscalationNotice,
    OpenReviewInput,
    Outcome,
    ReviewEvent,
    ReviewOutcome,
    ReviewState,
    ReviewStatusName,
)

STATUS = SearchAttributeKey.for_keyword("ReviewStatus")
KIND = SearchAttributeKey.for_keyword("ReviewKind")
ASSIGNEE = SearchAttributeKey.for_keyword("ReviewAssignee")
DUE_AT = SearchAttributeKey.for_datetime("ReviewDueAt")
ESCALATIONS = SearchAttributeKey.for_int("ReviewEscalations")

_AUDIT_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))
# workflow.patched ids.
# A case withdrawn with its payment or application records that.
RECORD_WITHDRAWAL = "record-review-withdrawal"
# The supervisors' mail on an escalation is sent beside the case, not waited for: a mail
# relay that is down held every later deadline, and the parent's answer, until it was back.
SUPERVISOR_MAIL_ASIDE = "supervisor-mail-aside"
# An audit line the case has begun to write is written even when the case is withdrawn
# meanwhile: the withdrawal canceled it (an "SLA expired" retried while the database was
# away was never written).
AUDIT_OUTLIVES_WITHDRAWAL = "audit-outlives-withdrawal"


class Refused:
    """Update refusals; the ApplicationError type is the stable code the API maps."""

    @staticmethod
    def not_an_officer() -> ApplicationError:
        return ApplicationError(
            "only compliance officers decide cases", type="NotAnOfficer", non_retryable=True
        )

    @staticmethod
    def own_case() -> ApplicationError:
        return ApplicationError(
            "nobody decides a case about themselves", type="OwnCase", non_retryable=True
        )

    @staticmethod
    def already_approved() -> ApplicationError:
        return ApplicationError(
            "this officer has approved already; four-eyes needs another officer",
            type="AlreadyApproved",
            non_retryable=True,
        )

    @staticmethod
    def closed() -> ApplicationError:
        return ApplicationError("the case is closed", type="CaseClosed", non_retryable=True)

    @staticmethod
    def not_a_supervisor() -> ApplicationError:
        return ApplicationError(
            "only a supervisor assigns a case to someone else",
            type="NotASupervisor",
            non_retryable=True,
        )


@workflow.defn(name=REVIEW_WORKFLOW)
class ComplianceReviewWorkflow:
    @workflow.init
    def __init__(self, case: OpenReviewInput) -> None:
        self._case = case
        self._status: ReviewStatusName = "open"
        self._assignee: str | None = None
        self._approvals: list[str] = []
        self._history: list[DecisionRecord] = []
        self._escalations = 0
        self._due_at: datetime | None = None
        self._outcome: Outcome | None = None
        self._decided_by: list[str] = []
        self._sla_expired = False

    # -- the case's life ------------------------------------------------------------------
    @workflow.run
    async def run(self, case: OpenReviewInput) -> ReviewOutcome:
        try:
            return await self._run(case)
        except asyncio.CancelledError:
            # The payment or application the case is about was canceled and withdrew it.
            # Cases withdrawn before this was recorded replay without it.
            if not workflow.patched(RECORD_WITHDRAWAL):
                raise
            if self._outcome is not None:
                # Decided a moment before the withdrawal reached it (the decision's audit
                # record was still being written): the decision stands, and the parent
                # gets it.
                return await self._closed(case)
            self._status, self._due_at = "withdrawn", None
            self._publish()
            await self._record("parent", "review.withdrawn")
            raise

    async def _run(self, case: OpenReviewInput) -> ReviewOutcome:
        opened = workflow.now()
        stages = [
            (case.sla.first_escalation_seconds, "first escalation"),
            (case.sla.second_escalation_seconds, "second escalation"),
            (case.sla.expiry_seconds, f"default outcome ({case.default_outcome})"),
        ]
        await self._record("sla", "review.opened", reasons=[r.code for r in case.reasons])
        for number, (seconds, what) in enumerate(stages, start=1):
            self._due_at = opened + timedelta(seconds=seconds)
            self._publish()
            try:
                await workflow.wait_condition(
                    lambda: self._outcome is not None,
                    timeout=max(self._due_at - workflow.now(), timedelta(0)),
                    timeout_summary=f"SLA: {what} due {self._due_at.isoformat()}",
                )
            except TimeoutError:
                if self._outcome is not None:
                    # Decided in the activation the deadline came in (the SDK can deliver
                    # both at once): the decision stands.
                    pass
                elif number < len(stages):
                    self._escalations += 1
                    self._status = "escalated"
                    await self._record("sla", "review.escalated", level=self._escalations)
                    # Cases opened before supervisors were notified replay without it.
                    if workflow.patched("notify-supervisors-on-escalation"):
                        notice = self._notify_supervisors(opened, stages[number][0])
                        if not workflow.patched(SUPERVISOR_MAIL_ASIDE):
                            await notice
                else:
                    self._sla_expired = True
                    self._close(case.default_outcome, "sla")
                    await self._record("sla", "review.sla_expired", outcome=case.default_outcome)
            if self._outcome is not None:
                break
        return await self._closed(case)

    async def _closed(self, case: OpenReviewInput) -> ReviewOutcome:
        self._due_at = None
        self._publish()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return ReviewOutcome(
            review_id=case.review_id,
            # (the last SLA stage always closes the case, so a default is never needed)
            outcome=self._outcome or case.default_outcome,
            decided_by=self._decided_by,
            sla_expired=self._sla_expired,
            closed_at=workflow.now(),
        )

    def _close(self, outcome: Outcome, by: str) -> None:
        self._outcome = outcome
        self._status = outcome
        if by != "sla":
            self._decided_by.append(by)

    def _publish(self) -> None:
        """Search attributes and current details: what an operator sees in the Web UI."""
        workflow.upsert_search_attributes(
            [
                STATUS.value_set(self._status),
                KIND.value_set(self._case.kind),
                ESCALATIONS.value_set(self._escalations),
                ASSIGNEE.value_set(self._assignee) if self._assignee else ASSIGNEE.value_unset(),
                DUE_AT.value_set(self._due_at) if self._due_at else DUE_AT.value_unset(),
            ]
        )
        waiting = (
            f"closed: {self._status}"
            if self._outcome
            else f"waiting for a decision ({len(self._approvals)}/"
            f"{self._case.required_approvals} approvals); next SLA step at "
            f"{self._due_at.isoformat() if self._due_at else '-'}"
        )
        workflow.set_current_details(
            f"**{self._case.kind} review {self._case.review_id}** · {waiting} · "
            f"assignee: {self._assignee or 'nobody'} · escalations: {self._escalations}"
        )

    async def _record(self, actor: str, action: str, **details: object) -> None:
        written = workflow.start_activity(
            RECORD_REVIEW_EVENT,
            ReviewEvent(
                review_id=self._case.review_id,
                actor=actor,
                action=action,
                details={"status": self._status, **details},
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_AUDIT_RETRY,
        )
        if not workflow.patched(AUDIT_OUTLIVES_WITHDRAWAL):
            await written
            return
        try:
            await asyncio.shield(written)
        except asyncio.CancelledError:
            await written  # the line is written; then the withdrawal goes on
            raise

    def _notify_supervisors(
        self, opened: datetime, next_stage_seconds: int
    ) -> workflow.ActivityHandle[None]:
        """Started, not awaited here: retried until the relay takes it, or until the
        case closes (a notice about a closed case is moot)."""
        notice: workflow.ActivityHandle[None] = workflow.start_activity(
            NOTIFY_SUPERVISORS,
            EscalationNotice(
                review_id=self._case.review_id,
                kind=self._case.kind,
                level=self._escalations,
                next_due_at=opened + timedelta(seconds=next_stage_seconds),
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_AUDIT_RETRY,
        )
        return notice

    def _state(self) -> ReviewState:
        return ReviewState(
            review_id=self._case.review_id,
            kind=self._case.kind,
            subject_id=self._case.subject_id,
            reasons=list(self._case.reasons),
            amount_minor=self._case.amount_minor,
            currency=self._case.currency,
            status=self._status,
            assignee=self._assignee,
            approvals=list(self._approvals),
            required_approvals=self._case.required_approvals,
            escalations=self._escalations,
            due_at=self._due_at,
            history=list(self._history),
        )

    def _note(self, actor: Actor, decision: str, reason: str) -> None:
        self._history.append(
            DecisionRecord(actor=actor.subject, decision=decision, reason=reason, at=workflow.now())
        )

    # -- what officers may do --------------------------------------------------------------
    def _check_officer(self, actor: Actor) -> None:
        if OFFICER_ROLE not in actor.roles:
            raise Refused.not_an_officer()
        if self._concerns(actor.subject):
            raise Refused.own_case()
        # Withdrawn: the case is closing with its payment or application, its withdrawal
        # still being written.
        if self._outcome is not None or self._status == "withdrawn":
            raise Refused.closed()

    @workflow.query
    def get_case(self) -> ReviewState:
        return self._state()

    @workflow.update
    async def approve(self, request: DecideInput) -> ReviewState:
        self._approvals.append(request.actor.subject)
        self._note(request.actor, "approve", request.reason)
        if len(self._approvals) >= self._case.required_approvals:
            self._outcome = "approved"
            self._status = "approved"
            self._decided_by = list(self._approvals)
        self._publish()
        await self._record(
            request.actor.subject,
            "review.approved",
            reason=request.reason,
            approvals=len(self._approvals),
        )
        return self._state()

    @approve.validator
    def validate_approve(self, request: DecideInput) -> None:
        self._check_officer(request.actor)
        if request.actor.subject in self._approvals:
            raise Refused.already_approved()

    @workflow.update
    async def reject(self, request: DecideInput) -> ReviewState:
        self._note(request.actor, "reject", request.reason)
        self._close("rejected", request.actor.subject)
        self._publish()
        await self._record(request.actor.subject, "review.rejected", reason=request.reason)
        return self._state()

    @reject.validator
    def validate_reject(self, request: DecideInput) -> None:
        self._check_officer(request.actor)

    @workflow.update
    async def request_info(self, request: DecideInput) -> ReviewState:
        self._note(request.actor, "request_info", request.reason)
        self._status = "info_requested"
        self._publish()
        await self._record(request.actor.subject, "review.info_requested", reason=request.reason)
        return self._state()

    @request_info.validator
    def validate_request_info(self, request: DecideInput) -> None:
        self._check_officer(request.actor)

    @workflow.update
    async def assign(self, request: AssignInput) -> ReviewState:
        self._assignee = request.assignee
        self._publish()
        await self._record(request.actor.subject, "review.assigned", assignee=request.assignee)
        return self._state()

    @assign.validator
    def validate_assign(self, request: AssignInput) -> None:
        self._check_officer(request.actor)
        if request.assignee != request.actor.subject and SUPERVISOR_ROLE not in request.actor.roles:
            raise Refused.not_a_supervisor()
        if self._concerns(request.assignee):  # they could not decide it
            raise Refused.own_case()

    def _concerns(self, subject: str) -> bool:
        """Whether the case is about this person: its customer, or another it affects."""
        case = self._case
        return subject == case.customer_subject or subject in case.related_subjects

    @workflow.update
    async def comment(self, request: CommentInput) -> ReviewState:
        self._note(request.actor, "comment", request.text)
        await self._record(request.actor.subject, "review.commented")
        return self._state()

    @comment.validator
    def validate_comment(self, request: CommentInput) -> None:
        self._check_officer(request.actor)
