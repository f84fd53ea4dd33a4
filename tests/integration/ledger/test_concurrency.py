"""Many callers at once against the real PostgreSQL: no overdraft, no lost update, no
deadlock reaching a caller, and a hold resolved once however many try."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from infra.ledger_group_commit import GroupCommitter
from infra.ledger_store import LedgerStore, create_ledger_pool
from infra.settings import Settings
from models.errors import InsufficientFunds, PendingTransferAlreadyResolved
from models.ledger import AccountKind, NewAccount, TransferKind, TransferRequest
from tests.helpers.ledger import AccountFactory


async def test_200_withdrawals_from_an_account_that_affords_50(
    ledger: LedgerStore, accounts: AccountFactory
) -> None:
    alice = await accounts.wallet("alice")
    atm = await accounts.platform("cash_out")
    await accounts.fund(alice, 50 * 100)

    async def withdraw(n: int) -> str:
        try:
            await ledger.create_transfer(accounts.move(alice, atm, 100, name=f"w{n}"))
        except InsufficientFunds:
            return "refused"
        return "paid"

    outcomes = await asyncio.gather(*(withdraw(n) for n in range(200)))
    assert outcomes.count("paid") == 50
    assert outcomes.count("refused") == 150
    account = await ledger.get_account(alice.id)
    assert account is not None
    assert account.balance.posted == 0
    assert account.debits_posted == account.credits_posted == 5_000
    assert await ledger.conservation_errors() == []


async def test_transfers_both_ways_between_two_wallets_never_deadlock_to_the_caller(
    ledger: LedgerStore, accounts: AccountFactory
) -> None:
    alice = await accounts.wallet("alice")
    bob = await accounts.wallet("bob")
    await accounts.fund(alice, 100_000)
    await accounts.fund(bob, 100_000)

    async def ping_pong(n: int) -> None:
        if n % 2:
            await ledger.create_transfer(accounts.move(alice, bob, 7, name=f"ab{n}"))
        else:
            # A linked batch touching both wallets in the opposite order.
            await ledger.submit(
                [
                    accounts.move(bob, alice, 5, name=f"ba{n}"),
                    accounts.move(alice, bob, 1, name=f"ab_back{n}"),
                ]
            )

    await asyncio.gather(*(ping_pong(n) for n in range(300)))  # any error would raise here
    a, b = await ledger.get_account(alice.id), await ledger.get_account(bob.id)
    assert a is not None and b is not None
    assert a.balance.posted + b.balance.posted == 200_000  # nothing lost, nothing created
    assert a.balance.posted == 100_000 - 150 * 7 + 150 * 5 - 150 * 1


async def test_a_hot_clearing_account_takes_every_payment_without_losing_one(
    ledger: LedgerStore, accounts: AccountFactory
) -> None:
    wallets = [await accounts.wallet(f"c{n}") for n in range(20)]
    for wallet in wallets:
        await accounts.fund(wallet, 10_000)
    clearing = await accounts.platform("merchant_clearing", kind=AccountKind.LIABILITY)

    async def pay(n: int) -> None:
        await ledger.create_transfer(accounts.move(wallets[n % 20], clearing, 3, name=f"p{n}"))

    await asyncio.gather(*(pay(n) for n in range(400)))
    hot = await ledger.get_account(clearing.id)
    assert hot is not None
    assert hot.balance.posted == 400 * 3
    rolled = await ledger.roll_up()
    assert rolled >= 0
    after = await ledger.get_account(clearing.id)
    assert after is not None
    assert after.balance == hot.balance  # folding the deltas in changes no balance


async def test_one_hold_captured_by_many_at_once_is_captured_once(
    ledger: LedgerStore, accounts: AccountFactory
) -> None:
    alice = await accounts.wallet("alice")
    shop = await accounts.platform("payouts_due", kind=AccountKind.LIABILITY)
    await accounts.fund(alice, 1_000)
    hold = await ledger.create_transfer(
        accounts.move(alice, shop, 600, name="hold", kind=TransferKind.PENDING)
    )

    async def resolve(n: int) -> str:
        kind = TransferKind.POST_PENDING if n % 2 else TransferKind.VOID_PENDING
        try:
            await ledger.create_transfer(
                TransferRequest(id=accounts.transfer_id(f"r{n}"), kind=kind, pending_id=hold.id)
            )
        except PendingTransferAlreadyResolved:
            return "too late"
        return str(kind)

    outcomes = await asyncio.gather(*(resolve(n) for n in range(40)))
    assert outcomes.count("too late") == 39
    account = await ledger.get_account(alice.id)
    assert account is not None
    assert account.debits_pending == 0
    assert account.balance.posted in {400, 1_000}  # captured, or released: once
    assert await ledger.conservation_errors() == []


async def test_the_same_request_sent_twice_at_once_moves_money_once(
    ledger: LedgerStore, accounts: AccountFactory
) -> None:
    alice = await accounts.wallet("alice")
    bob = await accounts.wallet("bob")
    await accounts.fund(alice, 1_000)
    request = accounts.move(alice, bob, 400, name="double_click")
    results = await asyncio.gather(*(ledger.create_transfer(request) for _ in range(10)))
    assert len({r.seq for r in results}) == 1
    assert await accounts.available(bob) == 400


async def _submit(conn: psycopg.AsyncConnection[Any], payload: Jsonb) -> dict[str, Any]:
    cur = await conn.execute("SELECT ledger_submit(%s)", (payload,))
    row = await cur.fetchone()
    assert row is not None
    answer: dict[str, Any] = row[0]
    return answer


async def test_an_id_refused_while_its_retry_waits_stays_refused(
    settings: Settings, accounts: AccountFactory
) -> None:
    """One transfer id sent twice at once (a retry after a timeout): the first is refused
    for want of funds, money arrives, then the second runs. It must answer the refusal,
    not apply the id the first caller was told was refused."""
    alice = await accounts.wallet("alice")
    bob = await accounts.wallet("bob")
    payload = Jsonb([accounts.move(alice, bob, 100, name="retried").as_json()])
    s = settings
    conninfo = (
        f"host={s.postgres_host} port={s.postgres_port} dbname={s.postgres_db} "
        f"user={s.postgres_user}"
    )
    async with (
        await psycopg.AsyncConnection.connect(conninfo) as first,
        await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as second,
    ):
        refused = await _submit(first, payload)  # its transaction stays open
        assert refused["code"] == "insufficient_funds"
        await accounts.fund(alice, 1_000)
        retry = asyncio.create_task(_submit(second, payload))
        await asyncio.sleep(1.0)
        assert not retry.done(), f"answered before the first outcome was committed: {retry}"
        await first.commit()
        answer = await asyncio.wait_for(retry, timeout=10)
    assert (answer["ok"], answer["code"], answer["replayed"]) == (
        False,
        "insufficient_funds",
        True,
    )
    assert await accounts.available(bob) == 0


async def test_a_request_whose_caller_gave_up_is_not_sent_later(
    settings: Settings, accounts: AccountFactory
) -> None:
    """A hold still queued for the group commit when its activity timed out must not land
    afterwards, once the saga has walked back and nobody would void it."""
    alice = await accounts.wallet("alice")
    shop = await accounts.platform("payouts_due", kind=AccountKind.LIABILITY)
    await accounts.fund(alice, 1_000)
    pool = create_ledger_pool(settings, min_size=1, max_size=1)
    await pool.open()
    ledger = LedgerStore(pool, group_commit=GroupCommitter(pool, flushers=1))
    try:
        async with pool.connection():  # the only connection: the flusher waits for it
            first = asyncio.create_task(
                ledger.record_transfer(accounts.move(alice, shop, 100, name="first"))
            )
            await asyncio.sleep(0.2)  # taken by the flusher, which now waits for the pool
            abandoned = accounts.move(alice, shop, 900, name="abandoned", kind=TransferKind.PENDING)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ledger.record_transfer(abandoned), timeout=0.2)
        assert await first == accounts.transfer_id("first")
        await asyncio.sleep(0.3)  # the flusher's next turn, had it kept the request
    finally:
        await ledger.close()
        await pool.close()
    assert await accounts.ledger.find_transfer(abandoned.id) is None
    assert await accounts.available(alice) == 900


async def test_twenty_callers_opening_one_account_are_told_once_that_they_opened_it(
    ledger: LedgerStore, accounts: AccountFactory
) -> None:
    """What lets ``POST /v1/accounts`` answer 201 once and 200 to the rest of a race."""
    wallet = NewAccount(
        id=accounts.account_id("raced"),
        currency="EUR",
        kind=AccountKind.LIABILITY,
        owner="raced",
        code="customer_wallet",
        debits_must_not_exceed_credits=True,
    )
    answers = await asyncio.gather(*(ledger.open_or_get_account(wallet) for _ in range(20)))
    assert [opened for _, opened in answers].count(True) == 1
    assert {account.id for account, _ in answers} == {wallet.id}
    again, opened = await ledger.open_or_get_account(wallet)
    assert (again.id, opened) == (wallet.id, False)


async def test_a_page_of_entries_never_passes_an_entry_still_being_committed(
    settings: Settings, ledger: LedgerStore, accounts: AccountFactory
) -> None:
    """A transfer's seq is drawn before its commit, so a later one can commit first. A
    reader handed the later entry would move its cursor past the earlier one and never
    see it. The page waits for the account's writers in flight instead."""
    fees = await accounts.platform("fees")  # unlimited: its writers never lock its row
    alice = await accounts.wallet("alice")
    bob = await accounts.wallet("bob")
    await accounts.fund(alice, 1_000)
    await accounts.fund(bob, 1_000)
    s = settings
    conninfo = (
        f"host={s.postgres_host} port={s.postgres_port} dbname={s.postgres_db} "
        f"user={s.postgres_user}"
    )
    async with await psycopg.AsyncConnection.connect(conninfo) as first:
        early = await _submit(
            first, Jsonb([accounts.move(alice, fees, 100, name="early").as_json()])
        )
        assert early["ok"], early  # drawn its seq; its transaction stays open
        late = await ledger.create_transfer(accounts.move(bob, fees, 200, name="late"))
        assert late.seq > early["transfers"][0]["seq"]
        page = asyncio.create_task(ledger.entries(fees.id))
        await asyncio.sleep(1.0)
        assert not page.done(), f"paged past an uncommitted entry: {page}"
        await first.commit()
        entries = await asyncio.wait_for(page, timeout=10)
    assert [e.transfer_id for e in entries] == [
        accounts.transfer_id("early"),
        accounts.transfer_id("late"),
    ]
    assert [e.running_balance for e in entries] == [-100, -300]  # credits to an asset
