"""LedgerRollUpWorkflow: run by the ``ledger-roll-up`` schedule every minute.

Accounts without a balance limit (the hot clearing accounts) are never locked by a
transfer; their movements queue in ``ledger_balance_deltas`` and balances read them live.
This workflow folds them into the account rows so those reads stay short.

Then it releases the holds whose timeout passed unresolved (each voided as
``<hold id>:expired``), so a hold nobody came back for gives the money back within about
a minute of its expiry.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from models.contracts import (
    LEDGER_ROLL_UP_WORKFLOW,
    RELEASE_EXPIRED_HOLDS,
    ROLL_UP_BALANCES,
    ReleasedHolds,
    RollUpResult,
)


@workflow.defn(name=LEDGER_ROLL_UP_WORKFLOW)
class LedgerRollUpWorkflow:
    @workflow.run
    async def run(self) -> RollUpResult:
        result: RollUpResult = await workflow.execute_activity(
            ROLL_UP_BALANCES,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=5),
            result_type=RollUpResult,
        )
        # Runs recorded before releases existed ended here; they replay unchanged.
        if not workflow.patched("release-expired-holds"):
            return result
        released: ReleasedHolds = await workflow.execute_activity(
            RELEASE_EXPIRED_HOLDS,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=5),
            result_type=ReleasedHolds,
        )
        return RollUpResult(movements=result.movements, released_holds=released.holds)
