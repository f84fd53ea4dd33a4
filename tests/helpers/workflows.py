"""Small workflows for integration tests (kept free of test imports: Temporal's sandbox
re-imports this module)."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from models.review import REVIEW_WORKFLOW, OpenReviewInput, ReviewOutcome


@workflow.defn(name="TestEchoAfterSignalWorkflow")
class EchoAfterSignalWorkflow:
    """Waits for ``release`` and returns its input and the signal's value."""

    def __init__(self) -> None:
        self._released: str | None = None

    @workflow.signal
    def release(self, value: str) -> None:
        self._released = value

    @workflow.run
    async def run(self, value: str) -> str:
        await workflow.wait_condition(lambda: self._released is not None)
        return f"{value}|{self._released}"


@workflow.defn(name="TestFailWithMessageWorkflow")
class FailWithMessageWorkflow:
    """Fails with its input as the failure message (business data does end up in errors)."""

    @workflow.run
    async def run(self, message: str) -> None:
        raise ApplicationError(message, non_retryable=True)


@dataclass(frozen=True)
class ParentOfReviewInput:
    case: OpenReviewInput
    review_task_queue: str


@workflow.defn(name="TestReviewParentWorkflow")
class ReviewParentWorkflow:
    """Opens a review as a child, as payments and onboarding will, and returns its outcome."""

    @workflow.run
    async def run(self, request: ParentOfReviewInput) -> ReviewOutcome:
        outcome: ReviewOutcome = await workflow.execute_child_workflow(
            REVIEW_WORKFLOW,
            request.case,
            id=request.case.review_id,
            task_queue=request.review_task_queue,
            result_type=ReviewOutcome,
        )
        return outcome
