"""RefundWorkflow on the time-skipping test server: what a refund takes back from the wallet,
what it asks of the gateway, and what it records, for each outcome."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from models.notifications import PlatformEvent
from models.payment import PaymentKind, RefundInput, RefundResult
from tests.helpers.time_skipping import fresh_environment
from tests.workflows.payment_world import (
    CLEARING_EUR,
    CLIENT_ID,
    CUSTOMER,
    OTHER_WALLET,
    WALLET,
    World,
    new_payment_id,
)

CAPTURED = 5_000


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with fresh_environment() as env:
        w = World(env.client)
        async with w.worker():
            yield w


def refund_of(
    world: World, kind: PaymentKind, amount: int, *, charge: str | None = "ch_topup"
) -> RefundInput:
    """A refund of a succeeded payment that captured ``CAPTURED``, shaped as the API builds
    it: the money goes back the way it came."""
    payment_id = new_payment_id()
    world.captured[payment_id] = CAPTURED
    if kind == "topup":
        debit, credit = WALLET, CLEARING_EUR
    else:  # a transfer: from the wallet that received it to the one that paid
        debit, credit = OTHER_WALLET, WALLET
    return RefundInput(
        refund_id=f"rfd_{uuid.uuid4().hex}",
        payment_id=payment_id,
        kind=kind,
        customer_id=CUSTOMER,
        client_id=CLIENT_ID,
        amount=amount,
        currency="EUR",
        debit_account_id=debit,
        credit_account_id=credit,
        gateway_reference=charge if kind == "topup" else None,
    )


def failure_announced(events: list[PlatformEvent]) -> list[tuple[str, int]]:
    """The failed refund's event: its code, and all refunded of the payment so far (the
    payment's status stays what it was)."""
    assert all(e.type == "payment.refund_failed" for e in events), events
    assert all(e.data["status"] == "succeeded" for e in events), events
    return [(e.data["decline_code"], e.data["amount_refunded"]) for e in events]


def ledger_steps(refund: RefundInput, *steps: str) -> list[tuple[str, str]]:
    return [(step, f"{refund.refund_id}:{step}") for step in steps]


async def run(world: World, refund: RefundInput) -> tuple[RefundResult, WorkflowHandle[Any, Any]]:
    handle = await world.start_refund(refund)
    result: RefundResult = await handle.result()
    [record] = [r for r in world.refund_records if r.refund_id == refund.refund_id]
    assert (record.status, record.failure_code) == (result.status, result.failure_code)
    return result, handle


@pytest.mark.parametrize(
    ("amount", "payment_status"), [(2_000, "partially_refunded"), (CAPTURED, "refunded")]
)
async def test_a_topup_refund_takes_the_money_back_and_refunds_the_card(
    world: World, amount: int, payment_status: str
) -> None:
    world.ledger.fund(WALLET, CAPTURED)
    refund = refund_of(world, "topup", amount)
    result, handle = await run(world, refund)

    assert (result.status, result.failure_code, result.payment_status) == (
        "succeeded",
        None,
        payment_status,
    )
    assert world.ledger.log == ledger_steps(refund, "hold", "post")
    hold = world.ledger.holds[f"{refund.refund_id}:hold"]
    assert (hold.debit, hold.credit, hold.amount) == (WALLET, CLEARING_EUR, amount)
    assert world.ledger.balances[WALLET] == CAPTURED - amount
    # The refund's own id is the gateway's Idempotency-Key: a retried refund is applied once.
    assert world.gateway.calls == [("refund", refund.refund_id)]
    [card_refund] = world.gateway.refunds.values()
    assert (card_refund.charge_reference, card_refund.amount) == ("ch_topup", amount)
    [record] = world.refund_records
    assert record.gateway_reference == card_refund.reference
    [event] = await world.announced(handle)
    assert event.type == f"payment.{payment_status}"
    assert (event.data["id"], event.data["amount_refunded"]) == (refund.payment_id, amount)
    assert await world.status_attribute(handle) == payment_status


async def test_a_transfer_refund_moves_money_back_without_the_gateway(world: World) -> None:
    world.ledger.fund(OTHER_WALLET, CAPTURED)
    refund = refund_of(world, "transfer", 1_500)
    result, handle = await run(world, refund)

    assert (result.status, result.payment_status) == ("succeeded", "partially_refunded")
    assert world.ledger.log == ledger_steps(refund, "hold", "post")
    assert (world.ledger.balances[OTHER_WALLET], world.ledger.balances[WALLET]) == (3_500, 1_500)
    assert world.gateway.calls == []
    assert world.refund_records[0].gateway_reference is None
    assert [e.type for e in await world.announced(handle)] == ["payment.partially_refunded"]


async def test_a_wallet_that_spent_the_money_fails_the_refund(world: World) -> None:
    world.ledger.fund(WALLET, 1_000)  # the customer spent the rest of the top-up
    refund = refund_of(world, "topup", 2_000)
    result, handle = await run(world, refund)

    assert (result.status, result.failure_code, result.payment_status) == (
        "failed",
        "insufficient_funds",
        "succeeded",
    )
    assert world.ledger.log == []
    assert world.gateway.calls == []
    assert failure_announced(await world.announced(handle)) == [("insufficient_funds", 0)]
    assert await world.status_attribute(handle) == "succeeded"


async def test_a_refund_the_gateway_declines_releases_the_hold(world: World) -> None:
    world.ledger.fund(WALLET, CAPTURED)
    world.gateway.refund_script = ["decline:charge_disputed"]
    refund = refund_of(world, "topup", 2_000)
    result, handle = await run(world, refund)

    assert (result.status, result.failure_code, result.payment_status) == (
        "failed",
        "charge_disputed",
        "succeeded",
    )
    assert world.ledger.log == ledger_steps(refund, "hold", "void")
    assert world.ledger.available(WALLET) == CAPTURED
    assert world.gateway.refunds == {}
    assert failure_announced(await world.announced(handle)) == [("charge_disputed", 0)]


async def test_a_refund_the_gateway_rejects_releases_the_hold_and_is_recorded(
    world: World,
) -> None:
    world.ledger.fund(WALLET, CAPTURED)
    world.gateway.refund_script = ["reject"]
    refund = refund_of(world, "topup", 2_000)
    handle = await world.start_refund(refund)
    done = await asyncio.wait_for(asyncio.gather(handle.result(), return_exceptions=True), 10)

    assert world.ledger.log == ledger_steps(refund, "hold", "void")
    assert [(r.status, r.failure_code) for r in world.refund_records] == [
        ("failed", "gateway_rejected")
    ]
    assert isinstance(done[0], RefundResult)


async def test_the_refund_event_reports_the_payment_and_all_refunded_so_far(world: World) -> None:
    """Receivers and the customer's mail read ``amount`` as the payment's and
    ``amount_refunded`` as the running total, as in every other ``payment.*`` event."""
    world.ledger.fund(WALLET, CAPTURED)
    first = refund_of(world, "topup", 300)
    second = replace(first, refund_id=f"rfd_{uuid.uuid4().hex}", amount=200)
    _, first_handle = await run(world, first)
    _, second_handle = await run(world, second)

    [one] = await world.handed_to_delivery(first_handle)
    [two] = await world.handed_to_delivery(second_handle)
    assert (one.data["amount"], one.data["amount_refunded"]) == (CAPTURED, 300)
    assert (two.data["amount"], two.data["amount_refunded"]) == (CAPTURED, 500)
    assert two.type == "payment.partially_refunded"


async def test_a_refund_hold_lives_until_the_saga_resolves_it(world: World) -> None:
    """An expiry would release money whose card refund may still be on its way."""
    world.ledger.fund(WALLET, CAPTURED)
    refund = refund_of(world, "topup", 1_000)
    await run(world, refund)
    assert world.ledger.holds[f"{refund.refund_id}:hold"].timeout_seconds is None


async def test_a_hold_whose_answers_were_lost_is_voided_and_the_refund_fails(
    world: World,
) -> None:
    """Retries ran out, but the hold had landed: it is voided (the wallet keeps its money)
    and the refund is recorded failed, which gives its reservation back."""
    world.ledger.fund(WALLET, CAPTURED)
    world.hold_script = ["lost"]
    refund = refund_of(world, "topup", 2_000)
    result, handle = await asyncio.wait_for(run(world, refund), timeout=10)

    assert (result.status, result.failure_code) == ("failed", "processing_error")
    assert world.ledger.log == ledger_steps(refund, "hold", "void")
    assert world.ledger.available(WALLET) == CAPTURED
    assert world.gateway.calls == []
    assert failure_announced(await world.announced(handle)) == [("processing_error", 0)]


async def test_the_post_after_a_card_refund_is_retried_until_the_ledger_answers(
    world: World,
) -> None:
    """The card has its money back: nothing can walk that back, so the post keeps trying
    past the quick steps' retries rather than failing the refund with the wallet held."""
    world.ledger.fund(WALLET, CAPTURED)
    world.post_script = ["error_once"] * 25
    refund = refund_of(world, "topup", 2_000)
    result, _ = await asyncio.wait_for(run(world, refund), timeout=15)

    assert (result.status, result.payment_status) == ("succeeded", "partially_refunded")
    assert world.post_attempts == 26
    assert world.ledger.log == ledger_steps(refund, "hold", "post")
    assert world.ledger.balances[WALLET] == CAPTURED - 2_000
