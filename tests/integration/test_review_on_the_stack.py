"""A review case on the real stack: the stack's worker runs it, search attributes show it,
the audit log records it."""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

from infra.audit import list_audit_events
from infra.settings import Settings
from infra.stack.launcher import Stack
from models.ids import new_id
from models.review import Actor, DecideInput, OpenReviewInput, ReviewReason, SlaPolicy
from workflows.review import ComplianceReviewWorkflow

CAROL = Actor(subject="sub-carol", username="carol", roles=["compliance_officer"])


async def test_a_case_escalates_in_real_time_then_an_officer_approves_it(
    temporal: Client, settings: Settings, engine: Engine, stack: Stack
) -> None:
    review_id = new_id("rev")
    handle = await temporal.start_workflow(
        ComplianceReviewWorkflow.run,
        OpenReviewInput(
            review_id=review_id,
            kind="onboarding",
            subject_id=new_id("onb"),
            customer_subject="sub-applicant",
            reasons=[ReviewReason(code="sanctions_possible_match", evidence={"score": 91})],
            sla=SlaPolicy(
                first_escalation_seconds=1, second_escalation_seconds=2, expiry_seconds=600
            ),
        ),
        id=review_id,
        task_queue=settings.task_queue,
    )
    escalations = SearchAttributeKey.for_int("ReviewEscalations")
    for _ in range(50):
        attributes = (await handle.describe()).typed_search_attributes
        if attributes.get(escalations) == 2:
            break
        await asyncio.sleep(0.2)
    assert attributes.get(escalations) == 2
    assert attributes.get(SearchAttributeKey.for_keyword("ReviewStatus")) == "escalated"
    assert attributes.get(SearchAttributeKey.for_keyword("ReviewKind")) == "onboarding"

    state = await handle.execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="false positive")
    )
    assert state.status == "approved"
    outcome = await handle.result()
    assert (outcome.outcome, outcome.sla_expired) == ("approved", False)

    with Session(engine) as session:
        trail = [(e.actor, e.action) for e in list_audit_events(session, subject=review_id)]
    # The SMTP sink received one message per escalation for the supervisors, ids only.
    mailbox = stack.smtp.mailbox
    mails = [m.read_text() for m in sorted(mailbox.glob("*.eml")) if review_id in m.read_text()]
    assert len(mails) == 2
    assert all("compliance-supervisors@dev.bfc.test" in m for m in mails)
    assert "escalated (level 1)" in mails[0] and "escalated (level 2)" in mails[1]
    assert trail == [
        ("sla", "review.opened"),
        ("sla", "review.escalated"),
        ("sla", "review.escalated"),
        ("sub-carol", "review.approved"),
    ]
