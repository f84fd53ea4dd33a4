"""The ledger, told as stories. Every story ends with the books balanced."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text

from infra.ledger_store import LedgerStore
from models.errors import (
    AccountClosed,
    BalanceOverflow,
    CurrencyMismatch,
    ExceedsPendingAmount,
    IdempotencyConflict,
    InsufficientFunds,
    LinkedTransferFailed,
    PendingTransferAlreadyResolved,
    PendingTransferExpired,
)
from models.ledger import AccountKind, TransferKind, TransferRequest
from tests.helpers.ledger import AccountFactory, expired_holds_kept


async def books_balance(ledger: LedgerStore) -> None:
    assert all(line.balanced for line in await ledger.trial_balance())
    assert await ledger.conservation_errors() == []


async def test_alice_tops_up_and_pays_bob(ledger: LedgerStore, accounts: AccountFactory) -> None:
    alice = await accounts.wallet("alice")
    bob = await accounts.wallet("bob")
    await accounts.fund(alice, 10_000)  # €100.00 arrives from her card

    await ledger.create_transfer(accounts.move(alice, bob, 2_550))

    assert await accounts.available(alice) == 7_450
    assert await accounts.available(bob) == 2_550
    # Alice cannot send more than she has: nothing moves, and she is told why.
    with pytest.raises(InsufficientFunds, match=alice.id):
        await ledger.create_transfer(accounts.move(alice, bob, 7_451))
    assert await accounts.available(alice) == 7_450
    await books_balance(ledger)


async def test_a_hold_is_partially_captured_and_the_rest_released(
    ledger: LedgerStore, accounts: AccountFactory
) -> None:
    alice = await accounts.wallet("alice")
    merchant = await accounts.platform("payouts_due", kind=AccountKind.LIABILITY)
    await accounts.fund(alice, 5_000)

    hold = await ledger.create_transfer(
        accounts.move(alice, merchant, 3_000, name="hold", kind=TransferKind.PENDING)
    )
    account = await ledger.get_account(alice.id)
    assert account is not None
    assert account.balance.posted == 5_000
    assert account.balance.available == 2_000  # the hold is reserved, not spent

    # The order ships short: capture 1,800 of the 3,000 held; 1,200 goes back to Alice.
    await ledger.create_transfer(
        accounts.resolve(hold.id, TransferKind.POST_PENDING, name="capture", amount=1_800)
    )
    account = await ledger.get_account(alice.id)
    assert account is not None
    assert (account.balance.posted, account.balance.available) == (3_200, 3_200)

    # A hold resolves once: neither a second capture nor a void can touch it again.
    for kind in (TransferKind.POST_PENDING, TransferKind.VOID_PENDING):
        with pytest.raises(PendingTransferAlreadyResolved):
            await ledger.create_transfer(accounts.resolve(hold.id, kind, name=f"again_{kind}"))
    await books_balance(ledger)


async def test_a_capture_cannot_exceed_the_hold(
    ledger: LedgerStore, accounts: AccountFactory
) -> None:
    alice = await accounts.wallet("alice")
    shop = await accounts.platform("payouts_due", kind=AccountKind.LIABILITY)
    await accounts.fund(alice, 5_000)
    hold = await ledger.create_transfer(
        accounts.move(alice, shop, 1_000, name="hold", kind=TransferKind.PENDING)
    )
    with pytest.raises(ExceedsPendingAmount):
        await ledger.create_transfer(
            accounts.resolve(hold.id, TransferKind.POST_PENDING, name="greedy", amount=1_001)
        )
    await books_balance(ledger)


async def test_a_voided_hold_gives_everything_back(
    ledger: LedgerStore, accounts: AccountFactory
) -> None:
    alice = await accounts.wallet("alice")
    shop = await accounts.platform("payouts_due", kind=AccountKind.LIABILITY)
    await accounts.fund(alice, 4_000)
    hold = await ledger.create_transfer(
        accounts.move(alice, shop, 4_000, name="hold", kind=TransferKind.PENDING)
    )
    assert await accounts.available(alice) == 0
    await ledger.create_transfer(accounts.resolve(hold.id, TransferKind.VOID_PENDING, name="void"))
    assert await accounts.available(alice) == 4_000
    await books_balance(ledger)


async def test_an_expired_hold_can_be_voided_but_not_captured(
    ledger: LedgerStore, accounts: AccountFactory, engine: Engine
) -> None:
    alice = await accounts.wallet("alice")
    shop = await accounts.platform("payouts_due", kind=AccountKind.LIABILITY)
    await accounts.fund(alice, 1_000)
    with expired_holds_kept(engine):  # or the ledger's own release might void it first
        hold = await ledger.create_transfer(
            accounts.move(
                alice, shop, 700, name="hold", kind=TransferKind.PENDING, timeout_seconds=1
            )
        )
        assert hold.expires_at is not None
        await asyncio.sleep(1.2)
        with pytest.raises(PendingTransferExpired):
            await ledger.create_transfer(
                accounts.resolve(hold.id, TransferKind.POST_PENDING, name="late")
            )
        await ledger.create_transfer(
            accounts.resolve(hold.id, TransferKind.VOID_PENDING, name="release")
        )
    assert await accounts.available(alice) == 1_000
    await books_balance(ledger)


def resolutions(engine: Engine, hold_id: str) -> list[str]:
    """Ids of the transfers that posted or voided the hold."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id FROM ledger_transfers WHERE pending_id = :id"), {"id": hold_id}
        )
        return [row[0] for row in rows]


async def test_an_expired_hold_gives_the_money_back_by_itself(
    ledger: LedgerStore, accounts: AccountFactory, engine: Engine
) -> None:
    alice = await accounts.wallet("alice")
    bob = await accounts.wallet("bob")
    shop = await accounts.platform("payouts_due", kind=AccountKind.LIABILITY)
    await accounts.fund(alice, 1_000)
    await accounts.fund(bob, 1_000)
    hold = await ledger.create_transfer(
        accounts.move(alice, shop, 700, name="hold", kind=TransferKind.PENDING, timeout_seconds=1)
    )
    # Bob's holds are settled before they expire, or expire later, or never.
    captured, voided, later, forever = [
        await ledger.create_transfer(
            accounts.move(bob, shop, 100, name=name, kind=TransferKind.PENDING, timeout_seconds=t)
        )
        for name, t in (("captured", 1), ("voided", 1), ("later", 3600), ("forever", None))
    ]
    settled = {
        "capture": (TransferKind.POST_PENDING, captured),
        "void": (TransferKind.VOID_PENDING, voided),
    }
    for name, (kind, held) in settled.items():
        await ledger.create_transfer(accounts.resolve(held.id, kind, name=name))
    assert await accounts.available(alice) == 300
    await asyncio.sleep(1.2)

    started = datetime.now(UTC)
    released = await ledger.release_expired_holds()
    account = await ledger.get_account(alice.id)
    assert account is not None
    assert (account.balance.available, account.debits_pending) == (1_000, 0)
    assert resolutions(engine, hold.id) == [f"{hold.id}:expired"]
    release = await ledger.find_transfer(f"{hold.id}:expired")
    assert release is not None
    # Counted by this call, unless the schedule's own run came first.
    assert released >= 1 or release.created_at < started
    assert (release.kind, release.amount) == (TransferKind.VOID_PENDING, 700)
    assert release.metadata == {"reason": "released on expiry"}

    # Once is all: a second run finds nothing of Alice's, and her own late void is told so
    # (the payment saga takes that as nothing left to void).
    await ledger.release_expired_holds()
    assert resolutions(engine, hold.id) == [f"{hold.id}:expired"]
    with pytest.raises(PendingTransferAlreadyResolved):
        await ledger.create_transfer(
            accounts.resolve(hold.id, TransferKind.VOID_PENDING, name="saga_void")
        )
    assert await accounts.available(alice) == 1_000

    for name, (_, held) in settled.items():
        assert resolutions(engine, held.id) == [accounts.transfer_id(name)]
    for held in (later, forever):
        assert resolutions(engine, held.id) == []
    account = await ledger.get_account(bob.id)
    assert account is not None
    assert (account.balance.available, account.debits_pending) == (700, 200)
    await books_balance(ledger)


async def test_expired_holds_are_released_in_bounded_batches(
    ledger: LedgerStore, accounts: AccountFactory, engine: Engine
) -> None:
    alice = await accounts.wallet("alice")
    shop = await accounts.platform("payouts_due", kind=AccountKind.LIABILITY)
    await accounts.fund(alice, 900)
    holds = [
        await ledger.create_transfer(
            accounts.move(
                alice, shop, 300, name=f"h{i}", kind=TransferKind.PENDING, timeout_seconds=1
            )
        )
        for i in range(3)
    ]
    await asyncio.sleep(1.2)
    for _ in range(10):
        assert await ledger.release_expired_holds(limit=1) <= 1
        if all(resolutions(engine, h.id) for h in holds):
            break
    assert [resolutions(engine, h.id) for h in holds] == [[f"{h.id}:expired"] for h in holds]
    assert await accounts.available(alice) == 900
    await books_balance(ledger)


async def test_a_hold_that_lands_after_its_expiry_was_swept_past_is_still_released(
    ledger: LedgerStore, accounts: AccountFactory, engine: Engine
) -> None:
    # A hold's expiry is counted from its transaction's start: one that commits late may
    # appear with an expiry the last sweep already passed. A negative timeout stands in.
    alice = await accounts.wallet("alice")
    shop = await accounts.platform("payouts_due", kind=AccountKind.LIABILITY)
    await accounts.fund(alice, 500)
    await ledger.release_expired_holds()
    hold = await ledger.create_transfer(
        accounts.move(alice, shop, 500, name="late", kind=TransferKind.PENDING, timeout_seconds=-60)
    )
    await ledger.release_expired_holds()
    assert resolutions(engine, hold.id) == [f"{hold.id}:expired"]
    assert await accounts.available(alice) == 500
    await books_balance(ledger)


async def test_a_payment_with_a_fee_is_one_linked_batch(
    ledger: LedgerStore, accounts: AccountFactory
) -> None:
    alice = await accounts.wallet("alice")
    bob = await accounts.wallet("bob")
    fees = await accounts.platform("fee_revenue", kind=AccountKind.REVENUE)
    await accounts.fund(alice, 1_000)

    # €9.90 to Bob plus a €0.10 fee: both legs or neither.
    await ledger.submit([accounts.move(alice, bob, 990), accounts.move(alice, fees, 10)])
    assert await accounts.available(alice) == 0
    assert await accounts.available(fees) == 10

    # Alice is now empty: the second batch's fee leg cannot be paid, so Bob gets nothing.
    await accounts.fund(alice, 500)
    pay, fee = (
        accounts.move(alice, bob, 495, name="pay2"),
        accounts.move(alice, fees, 10, name="fee2"),
    )
    with pytest.raises(InsufficientFunds):
        await ledger.submit([pay, fee])
    assert await accounts.available(bob) == 990
    assert await accounts.available(alice) == 500
    # Retrying either leg alone with the same id tells the same story.
    with pytest.raises((InsufficientFunds, LinkedTransferFailed)):
        await ledger.create_transfer(pay)
    await books_balance(ledger)


async def test_euros_become_dollars_through_liquidity_accounts(
    ledger: LedgerStore, accounts: AccountFactory
) -> None:
    alice_eur = await accounts.wallet("alice", "EUR")
    alice_usd = await accounts.wallet("alice", "USD")
    liquidity_eur = await accounts.platform("fx_liquidity", "EUR", AccountKind.EQUITY)
    liquidity_usd = await accounts.platform("fx_liquidity", "USD", AccountKind.EQUITY)
    await accounts.fund(alice_eur, 10_000)

    # €100.00 at 1.0850: each leg stays in one currency; the rate lives in the metadata.
    await ledger.submit(
        [
            accounts.move(alice_eur, liquidity_eur, 10_000, name="fx_in"),
            accounts.move(liquidity_usd, alice_usd, 10_850, name="fx_out"),
        ]
    )
    assert await accounts.available(alice_eur) == 0
    assert await accounts.available(alice_usd) == 10_850
    # A leg that mixes currencies is refused outright.
    with pytest.raises(CurrencyMismatch):
        await ledger.create_transfer(
            TransferRequest(
                id=accounts.transfer_id("mixed"),
                debit_account_id=alice_usd.id,
                credit_account_id=alice_eur.id,
                amount=1,
                currency="USD",
            )
        )
    await books_balance(ledger)


async def test_retries_are_exact(ledger: LedgerStore, accounts: AccountFactory) -> None:
    alice = await accounts.wallet("alice")
    bob = await accounts.wallet("bob")
    await accounts.fund(alice, 1_000)
    transfer = accounts.move(alice, bob, 300, name="once")

    first = await ledger.create_transfer(transfer)
    again = await ledger.create_transfer(transfer)
    assert again == first  # the original result, not a second movement
    assert await accounts.available(alice) == 700

    changed = TransferRequest(**{**transfer.__dict__, "amount": 301})
    with pytest.raises(IdempotencyConflict):
        await ledger.create_transfer(changed)

    # A failure is remembered too: money arriving later does not turn the retry into a success.
    too_much = accounts.move(alice, bob, 5_000, name="too_much")
    with pytest.raises(InsufficientFunds):
        await ledger.create_transfer(too_much)
    await accounts.fund(alice, 10_000)
    with pytest.raises(InsufficientFunds):
        await ledger.create_transfer(too_much)
    await books_balance(ledger)


async def test_the_sagas_steps_learn_only_the_id(
    ledger: LedgerStore, accounts: AccountFactory
) -> None:
    """``record_transfer`` (hold, post and void in the payment saga) answers the id without
    reading the row back, and is as exact as ``create_transfer`` on retries and refusals."""
    alice = await accounts.wallet("alice")
    bob = await accounts.wallet("bob")
    await accounts.fund(alice, 1_000)
    hold = accounts.move(alice, bob, 600, name="hold", kind=TransferKind.PENDING)

    assert await ledger.record_transfer(hold) == hold.id
    assert await ledger.record_transfer(hold) == hold.id  # a retry: still one hold
    assert await accounts.available(alice) == 400
    post = accounts.resolve(hold.id, TransferKind.POST_PENDING, name="post")
    assert await ledger.record_transfer(post) == post.id
    assert await accounts.available(bob) == 600
    # Refusals are the ledger's typed errors, as from create_transfer.
    with pytest.raises(PendingTransferAlreadyResolved):
        await ledger.record_transfer(
            accounts.resolve(hold.id, TransferKind.VOID_PENDING, name="void")
        )
    with pytest.raises(InsufficientFunds):
        await ledger.record_transfer(accounts.move(alice, bob, 401, name="too_much"))
    with pytest.raises(IdempotencyConflict):
        await ledger.record_transfer(TransferRequest(**{**hold.__dict__, "amount": 601}))
    assert await accounts.available(alice) == 400
    await books_balance(ledger)


async def test_a_closed_account_takes_no_new_money(
    ledger: LedgerStore, accounts: AccountFactory
) -> None:
    alice = await accounts.wallet("alice")
    bob = await accounts.wallet("bob")
    await accounts.fund(alice, 1_000)
    await ledger.close_account(bob.id)
    with pytest.raises(AccountClosed, match=bob.id):
        await ledger.create_transfer(accounts.move(alice, bob, 1))
    await books_balance(ledger)


async def test_history_shows_running_balances_and_the_past(
    ledger: LedgerStore, accounts: AccountFactory
) -> None:
    alice = await accounts.wallet("alice")
    bob = await accounts.wallet("bob")
    await accounts.fund(alice, 1_000)
    await ledger.create_transfer(accounts.move(alice, bob, 250))
    middle = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await ledger.create_transfer(accounts.move(alice, bob, 100))

    entries = await ledger.entries(alice.id)
    assert [(e.side, e.amount, e.running_balance) for e in entries] == [
        ("credit", 1_000, 1_000),
        ("debit", 250, 750),
        ("debit", 100, 650),
    ]
    page_two = await ledger.entries(alice.id, after_seq=entries[0].seq, limit=1)
    assert [(e.amount, e.running_balance) for e in page_two] == [(250, 750)]
    assert await ledger.balance_as_of(alice.id, middle) == 750
    assert await ledger.balance_as_of(alice.id, datetime(2000, 1, 1, tzinfo=UTC)) == 0


async def test_balances_stay_inside_64_bits(ledger: LedgerStore, accounts: AccountFactory) -> None:
    whale = await accounts.wallet("whale")
    await accounts.fund(whale, 5 * 10**18)
    # A second credit would take credits_posted past 2**63 - 1: refused, not wrapped.
    with pytest.raises(BalanceOverflow):
        await accounts.fund(whale, 5 * 10**18)
    assert await accounts.available(whale) == 5 * 10**18
