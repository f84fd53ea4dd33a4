"""ComplianceReviewWorkflow on the time-skipping test server: SLA timers, validators,
four-eyes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from models.review import (
    NOTIFY_SUPERVISORS,
    OFFICER_ROLE,
    RECORD_REVIEW_EVENT,
    SUPERVISOR_ROLE,
    Actor,
    AssignInput,
    DecideInput,
    EscalationNotice,
    OpenReviewInput,
    ReviewEvent,
    ReviewOutcome,
    ReviewReason,
    SlaPolicy,
)
from workflows.review import ComplianceReviewWorkflow

CAROL = Actor(subject="sub-carol", username="carol", roles=["compliance_officer"])
CORA = Actor(subject="sub-cora", username="cora", roles=["compliance_officer"])
OLIVIA = Actor(subject="sub-olivia", username="olivia", roles=["operator"])
CUSTOMER = "sub-alice"
SLA = SlaPolicy(
    first_escalation_seconds=4 * 3600, second_escalation_seconds=24 * 3600, expiry_seconds=72 * 3600
)

events: list[ReviewEvent] = []
notices: list[EscalationNotice] = []


class Faults:
    """What the fakes of the audit log and the mail relay do, set per test."""

    def __init__(self) -> None:
        self.mail_down = False
        # Actions the audit log refuses (a database away) until the event is set.
        self.audit_down_for: set[str] = set()
        self.audit_back = asyncio.Event()
        self.audit_refused = asyncio.Event()
        # Actions whose record waits for the event once it has begun.
        self.slow_record: set[str] = set()
        self.record_entered = asyncio.Event()
        self.record_gate = asyncio.Event()


faults = Faults()


@activity.defn(name=RECORD_REVIEW_EVENT)
async def remember(event: ReviewEvent) -> None:
    if event.action in faults.audit_down_for and not faults.audit_back.is_set():
        faults.audit_refused.set()
        raise RuntimeError("the audit database is away")
    if event.action in faults.slow_record:
        faults.record_entered.set()
        await faults.record_gate.wait()
    events.append(event)


@activity.defn(name=NOTIFY_SUPERVISORS)
async def tell_supervisors(notice: EscalationNotice) -> None:
    if faults.mail_down:
        raise RuntimeError("the mail relay refuses connections")
    notices.append(notice)


@pytest.fixture
async def queue(workflow_env: WorkflowEnvironment) -> AsyncIterator[str]:
    global faults  # noqa: PLW0603 - the fakes read the test's faults
    events.clear()
    notices.clear()
    faults = Faults()
    name = f"review-{uuid.uuid4()}"
    async with Worker(
        workflow_env.client,
        task_queue=name,
        workflows=[ComplianceReviewWorkflow],
        activities=[remember, tell_supervisors],
    ):
        yield name


async def open_case(
    env: WorkflowEnvironment,
    queue: str,
    *,
    approvals: int = 1,
    related: tuple[str, ...] = (),
    sla: SlaPolicy = SLA,
) -> WorkflowHandle[ComplianceReviewWorkflow, ReviewOutcome]:
    review_id = f"rev_{uuid.uuid4().hex}"
    return await env.client.start_workflow(
        ComplianceReviewWorkflow.run,
        OpenReviewInput(
            review_id=review_id,
            kind="payment",
            subject_id="pay_test",
            customer_subject=CUSTOMER,
            reasons=[
                ReviewReason(code="amount_over_review_threshold", evidence={"amount": 250000})
            ],
            required_approvals=approvals,
            amount_minor=250_000,
            currency="EUR",
            sla=sla,
            related_subjects=list(related),
        ),
        id=review_id,
        task_queue=queue,
    )


def actions() -> list[str]:
    return [e.action for e in events]


async def test_each_sla_stage_fires_once_in_order_then_the_default_applies(
    workflow_env: WorkflowEnvironment, queue: str
) -> None:
    handle = await open_case(workflow_env, queue)
    outcome = await handle.result()  # time skips through all three deadlines
    assert outcome.outcome == "rejected"
    assert outcome.sla_expired is True
    assert outcome.decided_by == []
    assert [n.level for n in notices] == [1, 2]  # supervisors hear of each escalation once
    assert actions() == [
        "review.opened",
        "review.escalated",
        "review.escalated",
        "review.sla_expired",
    ]


async def test_a_decision_before_the_deadline_cancels_the_later_timers(
    workflow_env: WorkflowEnvironment, queue: str
) -> None:
    handle = await open_case(workflow_env, queue)
    await workflow_env.sleep(timedelta(hours=5))  # past the first deadline only
    state = await handle.execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="source of funds ok")
    )
    assert state.status == "approved"
    outcome = await handle.result()
    assert (outcome.outcome, outcome.sla_expired, outcome.decided_by) == (
        "approved",
        False,
        ["sub-carol"],
    )
    assert actions() == ["review.opened", "review.escalated", "review.approved"]
    assert [n.level for n in notices] == [1]


async def test_four_eyes_needs_two_different_officers(
    workflow_env: WorkflowEnvironment, queue: str
) -> None:
    handle = await open_case(workflow_env, queue, approvals=2)
    first = await handle.execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="looks fine")
    )
    assert (first.status, first.approvals) == ("open", ["sub-carol"])
    with pytest.raises(WorkflowUpdateFailedError) as twice:
        await handle.execute_update(
            ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="again")
        )
    assert twice.value.cause.type == "AlreadyApproved"  # type: ignore[attr-defined]
    await handle.execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CORA, reason="agreed")
    )
    outcome = await handle.result()
    assert (outcome.outcome, outcome.decided_by) == ("approved", ["sub-carol", "sub-cora"])


@pytest.mark.parametrize(
    ("actor", "refusal"),
    [
        (OLIVIA, "NotAnOfficer"),
        (Actor(subject=CUSTOMER, username="alice", roles=["compliance_officer"]), "OwnCase"),
    ],
)
async def test_refused_decisions_leave_nothing_in_history(
    workflow_env: WorkflowEnvironment, queue: str, actor: Actor, refusal: str
) -> None:
    handle = await open_case(workflow_env, queue)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(
            ComplianceReviewWorkflow.reject, DecideInput(actor=actor, reason="no")
        )
    assert refused.value.cause.type == refusal  # type: ignore[attr-defined]
    history = await handle.fetch_history()
    # A validator's refusal is never written: no update was admitted or accepted.
    assert not [e for e in history.events if "UPDATE" in EventType.Name(e.event_type)]
    await handle.terminate("test done")


async def test_a_closed_case_takes_no_more_decisions(
    workflow_env: WorkflowEnvironment, queue: str
) -> None:
    handle = await open_case(workflow_env, queue)
    await handle.execute_update(
        ComplianceReviewWorkflow.reject, DecideInput(actor=CAROL, reason="mismatch")
    )
    assert (await handle.result()).outcome == "rejected"
    # Closed is final: the validator refuses while the case finishes its last step
    # (CaseClosed), and Temporal refuses any update once the workflow has completed.
    with pytest.raises((WorkflowUpdateFailedError, RPCError)):
        await handle.execute_update(
            ComplianceReviewWorkflow.approve, DecideInput(actor=CORA, reason="too late")
        )
    assert (await handle.result()).outcome == "rejected"


async def test_only_a_supervisor_assigns_to_someone_else(
    workflow_env: WorkflowEnvironment, queue: str
) -> None:
    handle = await open_case(workflow_env, queue)
    mine = await handle.execute_update(
        ComplianceReviewWorkflow.assign, AssignInput(actor=CAROL, assignee=CAROL.subject)
    )
    assert mine.assignee == CAROL.subject
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(
            ComplianceReviewWorkflow.assign, AssignInput(actor=CAROL, assignee=CORA.subject)
        )
    assert refused.value.cause.type == "NotASupervisor"  # type: ignore[attr-defined]
    await handle.terminate("test done")


async def test_someone_the_case_concerns_neither_decides_nor_is_assigned_it(
    workflow_env: WorkflowEnvironment, queue: str
) -> None:
    """A transfer's beneficiary gains from its approval, as its payer does from either."""
    handle = await open_case(workflow_env, queue, related=(CORA.subject,))
    with pytest.raises(WorkflowUpdateFailedError) as decided:
        await handle.execute_update(
            ComplianceReviewWorkflow.approve, DecideInput(actor=CORA, reason="fine by me")
        )
    assert decided.value.cause.type == "OwnCase"  # type: ignore[attr-defined]
    supervisor = Actor(subject="sub-sam", username="sam", roles=[OFFICER_ROLE, SUPERVISOR_ROLE])
    with pytest.raises(WorkflowUpdateFailedError) as assigned:
        await handle.execute_update(
            ComplianceReviewWorkflow.assign, AssignInput(actor=supervisor, assignee=CORA.subject)
        )
    assert assigned.value.cause.type == "OwnCase"  # type: ignore[attr-defined]
    approved = await handle.execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="checked")
    )
    assert approved.status == "approved"


def actions_of(handle: WorkflowHandle[ComplianceReviewWorkflow, ReviewOutcome]) -> list[str]:
    return [e.action for e in events if e.review_id == handle.id]


async def test_a_mail_relay_that_stays_down_holds_up_no_deadline_and_no_decision(
    workflow_env: WorkflowEnvironment, queue: str
) -> None:
    """The supervisors' mail is retried beside the case: the case still expires on time,
    and a decision still reaches the parent."""
    faults.mail_down = True
    # Minutes, not days: every retry of the mail (at most 30 s apart) is a real attempt.
    short = SlaPolicy(
        first_escalation_seconds=60, second_escalation_seconds=120, expiry_seconds=180
    )
    expiring = await open_case(workflow_env, queue, sla=short)
    outcome = await asyncio.wait_for(expiring.result(), timeout=60)
    assert (outcome.outcome, outcome.sla_expired) == ("rejected", True)
    assert actions_of(expiring) == [
        "review.opened",
        "review.escalated",
        "review.escalated",
        "review.sla_expired",
    ]

    decided = await open_case(workflow_env, queue, sla=short)
    await workflow_env.sleep(timedelta(seconds=90))  # escalated: its mail keeps failing
    approved = await decided.execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="checked")
    )
    assert approved.status == "approved"
    outcome = await asyncio.wait_for(decided.result(), timeout=30)
    assert (outcome.outcome, outcome.sla_expired) == ("approved", False)
    assert notices == []


async def test_a_case_being_withdrawn_takes_no_decision(
    workflow_env: WorkflowEnvironment, queue: str
) -> None:
    faults.slow_record = {"review.withdrawn"}
    handle = await open_case(workflow_env, queue)
    await handle.cancel()  # its payment was canceled
    await asyncio.wait_for(faults.record_entered.wait(), timeout=10)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(
            ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="too late")
        )
    assert refused.value.cause.type == "CaseClosed"  # type: ignore[attr-defined]
    faults.record_gate.set()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert actions_of(handle) == ["review.opened", "review.withdrawn"]


async def test_a_withdrawal_does_not_cancel_the_sla_expiry_audit_line(
    workflow_env: WorkflowEnvironment, queue: str
) -> None:
    """The deadline passes while the audit database is away; the payment is canceled
    before it is back. The expiry stands, and its line is written once it is."""
    faults.audit_down_for = {"review.sla_expired"}
    handle = await open_case(workflow_env, queue)
    await workflow_env.sleep(timedelta(hours=73))
    await asyncio.wait_for(faults.audit_refused.wait(), timeout=10)
    await handle.cancel()
    await asyncio.sleep(0.5)
    faults.audit_back.set()
    outcome = await asyncio.wait_for(handle.result(), timeout=60)
    assert (outcome.outcome, outcome.sla_expired) == ("rejected", True)
    assert actions_of(handle)[-1] == "review.sla_expired"
