"""A review case outlives its worker: killed while the case waits, restarted after the first
deadline passed in real time, the case escalates exactly once, the decision still lands and
the parent gets exactly one outcome.

Runs last (marker ``lifecycle``): it kills the stack's worker and starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError
from temporalio.worker import Worker

from infra.audit import list_audit_events
from infra.settings import Settings
from infra.stack.launcher import Stack
from models.ids import new_id
from models.review import Actor, DecideInput, OpenReviewInput, ReviewReason, SlaPolicy
from tests.helpers.workflows import ParentOfReviewInput, ReviewParentWorkflow
from workflows.review import ComplianceReviewWorkflow

pytestmark = pytest.mark.lifecycle

CAROL = Actor(subject="sub-carol", username="carol", roles=["compliance_officer"])
ESCALATIONS = SearchAttributeKey.for_int("ReviewEscalations")


async def test_a_case_survives_a_killed_worker(
    stack: Stack, temporal: Client, settings: Settings, engine: Engine, unique: str
) -> None:
    review_id = new_id("rev")
    case = OpenReviewInput(
        review_id=review_id,
        kind="payment",
        subject_id=new_id("pay"),
        customer_subject="sub-someone",
        reasons=[ReviewReason(code="amount_over_review_threshold")],
        sla=SlaPolicy(
            first_escalation_seconds=4, second_escalation_seconds=600, expiry_seconds=900
        ),
    )
    parent_queue = f"test-parent-{unique}"
    async with Worker(temporal, task_queue=parent_queue, workflows=[ReviewParentWorkflow]):
        parent = await temporal.start_workflow(
            ReviewParentWorkflow.run,
            ParentOfReviewInput(case=case, review_task_queue=settings.task_queue),
            id=f"test-parent-{unique}",
            task_queue=parent_queue,
        )
        child = temporal.get_workflow_handle(review_id)
        for _ in range(50):  # the case is open and waiting for its first deadline
            with contextlib.suppress(RPCError, WorkflowQueryFailedError):  # not started yet
                if (await child.query(ComplianceReviewWorkflow.get_case)).status == "open":
                    break
            await asyncio.sleep(0.1)

        worker_pid = stack.pid("worker")
        assert worker_pid is not None
        os.kill(worker_pid, signal.SIGKILL)  # no goodbye: in-flight work is lost
        await asyncio.sleep(5)  # the first deadline passes with no worker alive
        stack.up(("worker",))

        for _ in range(100):
            if (await child.describe()).typed_search_attributes.get(ESCALATIONS) == 1:
                break
            await asyncio.sleep(0.2)
        assert (await child.describe()).typed_search_attributes.get(ESCALATIONS) == 1

        await child.execute_update(
            ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="checked")
        )
        outcome = await parent.result()

    assert (outcome.outcome, outcome.sla_expired) == ("approved", False)
    history = await parent.fetch_history()
    completions = [
        e
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED
    ]
    assert len(completions) == 1
    with Session(engine) as session:
        actions = [e.action for e in list_audit_events(session, subject=review_id)]
    assert actions.count("review.escalated") == 1
    assert actions[-1] == "review.approved"
