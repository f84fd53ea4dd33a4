"""Ledger housekeeping that runs on a schedule."""

from __future__ import annotations

from temporalio import activity

from infra.ledger_store import LedgerStore
from models.contracts import ROLL_UP_BALANCES, RollUpResult


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
