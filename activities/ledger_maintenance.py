"""Ledger housekeeping that runs on a schedule."""

from __future__ import annotations

from temporalio import activity

from infra.ledger_store import LedgerStore
from models.contracts import RELEASE_EXPIRED_HOLDS, ROLL_UP_BALANCES, ReleasedHolds, RollUpResult

# Holds voided per database call: each call keeps its wallets locked until it commits.
RELEASE_BATCH = 500
# Calls per run: a backlog larger than this waits for the next minute's run.
RELEASE_BATCHES_PER_RUN = 20


class LedgerMaintenanceActivities:
    def __init__(self, ledger: LedgerStore) -> None:
        self._ledger = ledger

    @activity.defn(name=ROLL_UP_BALANCES)
    async def roll_up_balances(self) -> RollUpResult:
        """Fold deferred movements of unlimited (hot) accounts into their rows.

        Idempotent by construction: each movement is deleted as it is added, in one
        transaction, so a retry finds only what is left.
        """
        return RollUpResult(movements=await self._ledger.roll_up())

    @activity.defn(name=RELEASE_EXPIRED_HOLDS)
    async def release_expired_holds(self) -> ReleasedHolds:
        """Give back the money of holds whose timeout passed with nobody posting or voiding
        them. Safe to retry: a released hold is resolved, so it is not released again."""
        released = 0
        for _ in range(RELEASE_BATCHES_PER_RUN):
            batch = await self._ledger.release_expired_holds(RELEASE_BATCH)
            released += batch
            if batch < RELEASE_BATCH:
                break
        return ReleasedHolds(holds=released)
