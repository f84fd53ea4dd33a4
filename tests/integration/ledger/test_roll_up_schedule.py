"""The worker's schedule folds hot-account movements into the account row."""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine, text
from temporalio.client import Client

from infra.ledger_store import LedgerStore
from models.contracts import LEDGER_ROLL_UP_SCHEDULE
from tests.helpers.ledger import AccountFactory


def open_deltas(engine: Engine, account_id: str) -> int:
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM ledger_balance_deltas WHERE account_id = :id"),
            {"id": account_id},
        ).scalar_one()
    return int(count)


async def test_triggering_the_schedule_rolls_up_a_hot_account(
    ledger: LedgerStore, accounts: AccountFactory, temporal: Client, engine: Engine
) -> None:
    alice = await accounts.wallet("alice")
    await accounts.fund(alice, 900)
    clearing = await ledger.get_account(accounts.account_id("card_clearing_eur"))
    assert clearing is not None
    assert open_deltas(engine, clearing.id) > 0
    before = clearing.balance

    schedule = await temporal.get_schedule_handle(LEDGER_ROLL_UP_SCHEDULE).describe()
    assert schedule.schedule.spec.intervals  # created by the worker at start
    await temporal.get_schedule_handle(LEDGER_ROLL_UP_SCHEDULE).trigger()

    for _ in range(100):
        if open_deltas(engine, clearing.id) == 0:
            break
        await asyncio.sleep(0.2)
    assert open_deltas(engine, clearing.id) == 0
    after = await ledger.get_account(clearing.id)
    assert after is not None
    assert after.balance == before
    assert (after.debits_posted, after.credits_posted) == (900, 0)
