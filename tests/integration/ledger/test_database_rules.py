"""The rules hold in the database itself, whatever a client sends."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from infra.ledger_store import LedgerStore
from tests.helpers.ledger import AccountFactory


@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        ("UPDATE ledger_transfers SET amount = amount + 1 WHERE id = :id", "append-only"),
        ("DELETE FROM ledger_transfers WHERE id = :id", "append-only"),
        ("TRUNCATE ledger_transfers", "append-only"),
        ("DELETE FROM ledger_accounts WHERE id = :account", "never deleted"),
        (
            "UPDATE ledger_accounts SET debits_must_not_exceed_credits = false WHERE id = :account",
            "never change",
        ),
        ("UPDATE ledger_accounts SET currency = 'USD' WHERE id = :account", "never change"),
    ],
)
async def test_history_and_accounts_cannot_be_rewritten(
    ledger: LedgerStore, accounts: AccountFactory, engine: Engine, statement: str, refusal: str
) -> None:
    alice = await accounts.wallet("alice")
    bob = await accounts.wallet("bob")
    await accounts.fund(alice, 100)
    transfer = await ledger.create_transfer(accounts.move(alice, bob, 60))
    with engine.connect() as conn, pytest.raises(DBAPIError, match=refusal):
        conn.execute(text(statement), {"id": transfer.id, "account": alice.id})
    assert (await ledger.get_transfers([transfer.id]))[0] == transfer


@pytest.mark.parametrize(
    ("debit", "credit", "amount", "currency", "refusal"),
    [
        ("alice", "bob", 0, "EUR", "amount_check"),
        ("alice", "bob", -5, "EUR", "amount_check"),
        ("alice", "alice", 5, "EUR", "accounts_must_be_different"),
        ("alice", "bob", 5, "USD", "currency_mismatch"),
        ("alice", "nobody", 5, "EUR", "account_not_found"),
    ],
)
async def test_a_raw_insert_cannot_bend_the_rules(
    accounts: AccountFactory,
    engine: Engine,
    debit: str,
    credit: str,
    amount: int,
    currency: str,
    refusal: str,
) -> None:
    await accounts.wallet("alice")
    await accounts.wallet("bob")
    with engine.connect() as conn, pytest.raises(DBAPIError, match=refusal):
        conn.execute(
            text(
                "INSERT INTO ledger_transfers (id, kind, debit_account_id, credit_account_id, "
                "amount, currency, request_hash) VALUES (:id, 'posted', :d, :c, :a, :cur, 'x')"
            ),
            {
                "id": accounts.transfer_id("raw"),
                "d": accounts.account_id(f"{debit}_eur"),
                "c": accounts.account_id(f"{credit}_eur"),
                "a": amount,
                "cur": currency,
            },
        )


async def test_a_wallet_row_cannot_be_pushed_below_zero_directly(
    accounts: AccountFactory, engine: Engine
) -> None:
    alice = await accounts.wallet("alice")
    with engine.connect() as conn, pytest.raises(DBAPIError, match="insufficient_funds"):
        conn.execute(
            text("UPDATE ledger_accounts SET debits_posted = 1 WHERE id = :id"), {"id": alice.id}
        )
