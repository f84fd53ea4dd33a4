"""LedgerRollUpWorkflow rolls up the hot accounts, then releases expired holds."""

from __future__ import annotations

import uuid

from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from models.contracts import RELEASE_EXPIRED_HOLDS, ROLL_UP_BALANCES, ReleasedHolds, RollUpResult
from workflows.ledger_maintenance import LedgerRollUpWorkflow

calls: list[str] = []


@activity.defn(name=ROLL_UP_BALANCES)
async def roll_up() -> RollUpResult:
    calls.append(ROLL_UP_BALANCES)
    return RollUpResult(movements=3)


@activity.defn(name=RELEASE_EXPIRED_HOLDS)
async def release() -> ReleasedHolds:
    calls.append(RELEASE_EXPIRED_HOLDS)
    return ReleasedHolds(holds=2)


async def test_a_run_rolls_up_then_releases_expired_holds(
    workflow_env: WorkflowEnvironment,
) -> None:
    calls.clear()
    queue = f"q-{uuid.uuid4()}"
    async with Worker(
        workflow_env.client,
        task_queue=queue,
        workflows=[LedgerRollUpWorkflow],
        activities=[roll_up, release],
    ):
        result = await workflow_env.client.execute_workflow(
            LedgerRollUpWorkflow.run, id=f"roll-up-{uuid.uuid4()}", task_queue=queue
        )
    assert result == RollUpResult(movements=3, released_holds=2)
    assert calls == [ROLL_UP_BALANCES, RELEASE_EXPIRED_HOLDS]
