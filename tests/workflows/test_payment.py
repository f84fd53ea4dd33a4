"""PaymentWorkflow on the time-skipping test server: every business outcome of the saga,
its compensations, and what it leaves behind in the (fake) ledger and gateway.

The world (``payment_world.py``) keeps the ledger's holds and the gateway's charges in
memory, so each test asserts the side effects of a path, not only its final status. Review
paths run the real ComplianceReviewWorkflow as the child and decide it through its Updates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import (
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowUpdateFailedError,
    WorkflowUpdateStage,
)
from temporalio.exceptions import CancelledError
from temporalio.worker import Replayer

from infra.temporal import platform_data_converter
from models.payment import PaymentInput, PaymentState, review_id_for
from models.review import Actor, DecideInput
from tests.helpers.time_skipping import fresh_environment
from tests.workflows import record_payment_histories
from tests.workflows.payment_world import (
    CAROL,
    CLEARING_EUR,
    CORA,
    DECLINE,
    OTHER_WALLET,
    REVIEW,
    WALLET,
    World,
    payout,
    topup,
    transfer,
    waiting_for,
)
from workflows.payment import PaymentWorkflow
from workflows.refund import RefundWorkflow
from workflows.review import ComplianceReviewWorkflow

Handle = WorkflowHandle[PaymentWorkflow, Any]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with fresh_environment() as env:
        w = World(env.client)
        w.ledger.fund(WALLET, 100_000)
        async with w.worker():
            yield w


async def finished(world: World, handle: Handle) -> PaymentState:
    """Wait for the end; the result, the query and the payments table must agree."""
    result = await handle.result()
    state: PaymentState = await handle.query(PaymentWorkflow.get_payment)
    assert (result.status, result.decline_code) == (state.status, state.decline_code)
    last = world.records[-1]
    assert (last.status, last.decline_code) == (state.status, state.decline_code)
    assert state.waiting_for == ""
    return state


def events(state: PaymentState) -> list[str]:
    return [entry.event for entry in state.timeline]


def detail(state: PaymentState, event: str) -> str:
    return next(entry.detail for entry in state.timeline if entry.event == event)


def ledger_steps(payment: PaymentInput, *steps: str) -> list[tuple[str, str]]:
    """The ledger changes a path should leave, under the saga's own transfer ids."""
    return [(step, f"{payment.payment_id}:{step}") for step in steps]


async def announced(world: World, handle: Handle) -> list[tuple[str, str | None]]:
    return [(e.type, e.data.get("decline_code")) for e in await world.announced(handle)]


def review_of(world: World, payment: PaymentInput) -> WorkflowHandle[ComplianceReviewWorkflow, Any]:
    return world.client.get_workflow_handle_for(
        ComplianceReviewWorkflow.run, review_id_for(payment.payment_id)
    )


async def in_review(world: World, handle: Handle, payment: PaymentInput) -> PaymentState:
    state = await waiting_for(handle, "a compliance decision")
    assert state.status == "in_review"
    assert state.review_id == review_id_for(payment.payment_id)
    assert await world.status_attribute(handle) == "in_review"
    return state


# ---- success, for each kind --------------------------------------------------------------


async def test_a_topup_holds_charges_the_card_and_posts(world: World) -> None:
    p = topup(amount=5_000)
    handle = await world.start(p)
    state = await finished(world, handle)

    assert (state.status, state.decline_code, state.captured_amount) == ("succeeded", None, 5_000)
    assert world.ledger.log == ledger_steps(p, "hold", "post")
    hold = world.ledger.holds[f"{p.payment_id}:hold"]
    assert (hold.debit, hold.credit, hold.amount, hold.state) == (
        CLEARING_EUR,
        WALLET,
        5_000,
        "posted",
    )
    assert world.ledger.balances[WALLET] == 105_000
    assert world.gateway.calls == [("charge", f"{p.payment_id}:topup")]
    [charge] = world.gateway.applied
    assert (charge.amount, charge.outcome) == (5_000, "succeeded")
    assert state.gateway_reference == charge.reference
    assert events(state) == [
        "accepted",
        "risk_scored",
        "funds_held",
        "charged",
        "posted",
        "succeeded",
    ]
    assert detail(state, "charged") == charge.reference
    assert await announced(world, handle) == [("payment.succeeded", None)]
    assert await world.status_attribute(handle) == "succeeded"


async def test_a_mail_that_fails_inline_is_handed_to_delivery_and_the_payment_ends(
    world: World,
) -> None:
    # The inline mail holds the payment's workflow task: one attempt, then the delivery
    # workflow's durable retries take it, so a relay that is down cannot keep payments open.
    world.mail_down = True
    handle = await world.start(transfer(amount=1_000))
    await asyncio.wait_for(handle.result(), timeout=10)

    assert world.mail_attempts == 1
    [handed] = await world.handed_to_delivery(handle)
    assert handed.type == "payment.succeeded"
    assert handed.customer_id is not None  # the mail goes with it, to be sent from there


async def test_a_transfer_moves_money_between_wallets_without_the_gateway(world: World) -> None:
    p = transfer(amount=7_000)
    handle = await world.start(p)
    state = await finished(world, handle)

    assert (state.status, state.decline_code, state.captured_amount) == ("succeeded", None, 7_000)
    assert world.ledger.log == ledger_steps(p, "hold", "post")
    hold = world.ledger.holds[f"{p.payment_id}:hold"]
    assert (hold.debit, hold.credit, hold.state) == (WALLET, OTHER_WALLET, "posted")
    assert (world.ledger.balances[WALLET], world.ledger.balances[OTHER_WALLET]) == (93_000, 7_000)
    assert world.gateway.calls == []
    assert state.gateway_reference is None
    assert events(state) == ["accepted", "risk_scored", "funds_held", "posted", "succeeded"]
    assert await announced(world, handle) == [("payment.succeeded", None)]
    assert await world.status_attribute(handle) == "succeeded"


async def test_a_payout_holds_pays_out_and_posts(world: World) -> None:
    p = payout(amount=8_000)
    handle = await world.start(p)
    state = await finished(world, handle)

    assert (state.status, state.decline_code, state.captured_amount) == ("succeeded", None, 8_000)
    assert world.ledger.log == ledger_steps(p, "hold", "post")
    hold = world.ledger.holds[f"{p.payment_id}:hold"]
    assert (hold.debit, hold.credit) == (WALLET, CLEARING_EUR)
    assert world.ledger.balances[WALLET] == 92_000
    assert world.gateway.calls == [("payout", f"{p.payment_id}:payout")]
    [sent] = world.gateway.applied
    assert (sent.amount, sent.outcome, state.gateway_reference) == (
        8_000,
        "succeeded",
        sent.reference,
    )
    assert events(state) == [
        "accepted",
        "risk_scored",
        "funds_held",
        "paid_out",
        "posted",
        "succeeded",
    ]
    assert await announced(world, handle) == [("payment.succeeded", None)]


# ---- declines before and at the gateway --------------------------------------------------


async def test_a_risk_decline_holds_nothing(world: World) -> None:
    world.risk = DECLINE
    p = topup()
    handle = await world.start(p)
    state = await finished(world, handle)

    assert (state.status, state.decline_code) == ("declined", "risk_declined")
    assert state.risk == DECLINE
    assert world.ledger.log == []
    assert world.gateway.calls == []
    assert events(state) == ["accepted", "risk_scored", "declined"]
    assert await announced(world, handle) == [("payment.declined", "risk_declined")]
    assert await world.status_attribute(handle) == "declined"


async def test_a_ledger_refusal_at_the_hold_declines_with_nothing_to_void(world: World) -> None:
    p = transfer(amount=100_001)  # one cent more than the wallet holds
    handle = await world.start(p)
    state = await finished(world, handle)

    assert (state.status, state.decline_code) == ("declined", "insufficient_funds")
    assert world.ledger.log == []
    assert world.ledger.balances[WALLET] == 100_000
    assert events(state) == ["accepted", "risk_scored", "declined"]
    assert await announced(world, handle) == [("payment.declined", "insufficient_funds")]


@pytest.mark.parametrize("make", [topup, payout], ids=["topup", "payout"])
async def test_a_gateway_decline_voids_the_hold(world: World, make: Any) -> None:
    world.gateway.script = ["decline:do_not_honor"]
    p = make(amount=3_000)
    handle = await world.start(p)
    state = await finished(world, handle)

    assert (state.status, state.decline_code) == ("declined", "do_not_honor")
    assert world.ledger.log == ledger_steps(p, "hold", "void")
    assert world.ledger.balances[WALLET] == 100_000
    assert world.ledger.available(WALLET) == 100_000
    assert len(world.gateway.calls) == 1
    assert world.gateway.refunds == {}
    assert events(state) == ["accepted", "risk_scored", "funds_held", "hold_voided", "declined"]
    assert await announced(world, handle) == [("payment.declined", "do_not_honor")]
    assert await world.status_attribute(handle) == "declined"


# ---- the review band -----------------------------------------------------------------------


async def test_an_approved_review_continues_to_the_charge(world: World) -> None:
    world.risk = REVIEW
    p = topup(amount=9_000)
    handle = await world.start(p)
    waiting = await in_review(world, handle, p)
    assert world.ledger.log == ledger_steps(p, "hold")  # the money stays held during review
    assert world.gateway.calls == []
    assert [r.status for r in world.records] == ["in_review"]

    decided = await review_of(world, p).execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="source of funds ok")
    )
    assert (decided.status, decided.required_approvals, decided.subject_id) == (
        "approved",
        1,
        p.payment_id,
    )
    state = await finished(world, handle)

    assert (state.status, state.decline_code) == ("succeeded", None)
    assert world.ledger.log == ledger_steps(p, "hold", "post")
    assert len(world.gateway.applied) == 1
    assert events(state) == [
        "accepted",
        "risk_scored",
        "funds_held",
        "review_opened",
        "review_approved",
        "charged",
        "posted",
        "succeeded",
    ]
    assert detail(state, "review_approved") == CAROL.subject
    assert waiting.review_id == state.review_id
    # The approval is written at once: the table shows it processing while it is charged.
    assert [r.status for r in world.records] == ["in_review", "processing", "succeeded"]
    assert [e.action for e in world.review_events] == ["review.opened", "review.approved"]
    assert await announced(world, handle) == [("payment.succeeded", None)]


async def test_a_transfers_beneficiary_cannot_decide_its_review(world: World) -> None:
    world.risk = REVIEW
    beneficiary = Actor(subject="sub-bob", username="bob", roles=["compliance_officer"])
    p = transfer(amount=9_000, beneficiary_id=beneficiary.subject)
    handle = await world.start(p)
    await in_review(world, handle, p)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await review_of(world, p).execute_update(
            ComplianceReviewWorkflow.approve, DecideInput(actor=beneficiary, reason="mine")
        )
    assert refused.value.cause.type == "OwnCase"  # type: ignore[attr-defined]
    await review_of(world, p).execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="checked")
    )
    assert (await finished(world, handle)).status == "succeeded"


async def test_a_rejected_review_voids_the_hold(world: World) -> None:
    world.risk = REVIEW
    p = transfer(amount=9_000)
    handle = await world.start(p)
    await in_review(world, handle, p)
    await review_of(world, p).execute_update(
        ComplianceReviewWorkflow.reject, DecideInput(actor=CORA, reason="mule pattern")
    )
    state = await finished(world, handle)

    assert (state.status, state.decline_code) == ("declined", "review_rejected")
    assert world.ledger.log == ledger_steps(p, "hold", "void")
    assert world.ledger.balances[OTHER_WALLET] == 0
    assert events(state) == [
        "accepted",
        "risk_scored",
        "funds_held",
        "review_opened",
        "hold_voided",
        "declined",
    ]
    assert await announced(world, handle) == [("payment.declined", "review_rejected")]
    assert await world.status_attribute(handle) == "declined"


async def test_an_expired_review_sla_voids_the_hold(world: World) -> None:
    world.risk = REVIEW
    p = topup(amount=9_000)
    handle = await world.start(p)
    await in_review(world, handle, p)
    state = await finished(world, handle)  # time skips through all three SLA deadlines

    assert (state.status, state.decline_code) == ("declined", "review_expired")
    assert world.ledger.log == ledger_steps(p, "hold", "void")
    assert world.gateway.calls == []
    assert [n.level for n in world.notices] == [1, 2]
    assert world.review_events[-1].action == "review.sla_expired"
    assert events(state)[-2:] == ["hold_voided", "declined"]
    assert await announced(world, handle) == [("payment.declined", "review_expired")]
    outcome = await review_of(world, p).result()
    assert (outcome.outcome, outcome.sla_expired) == ("rejected", True)


async def test_above_the_four_eyes_threshold_two_officers_must_approve(world: World) -> None:
    world.risk = REVIEW
    p = topup(amount=20_000, four_eyes_threshold_minor=10_000)
    handle = await world.start(p)
    await in_review(world, handle, p)
    review = review_of(world, p)

    first = await review.execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="looks fine")
    )
    assert (first.status, first.approvals, first.required_approvals) == ("open", [CAROL.subject], 2)
    assert (await handle.query(PaymentWorkflow.get_payment)).status == "in_review"
    assert world.gateway.calls == []

    await review.execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CORA, reason="agreed")
    )
    state = await finished(world, handle)
    assert state.status == "succeeded"
    assert detail(state, "review_approved") == f"{CAROL.subject},{CORA.subject}"
    assert len(world.gateway.applied) == 1


async def test_at_the_four_eyes_threshold_one_officer_is_enough(world: World) -> None:
    world.risk = REVIEW
    p = topup(amount=10_000, four_eyes_threshold_minor=10_000)
    handle = await world.start(p)
    await in_review(world, handle, p)
    decided = await review_of(world, p).execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="fine")
    )
    assert (decided.status, decided.required_approvals) == ("approved", 1)
    assert (await finished(world, handle)).status == "succeeded"


# ---- cancel ------------------------------------------------------------------------------


async def test_cancel_before_the_gateway_step_voids_the_hold_and_charges_nothing(
    world: World,
) -> None:
    world.hold_gate = asyncio.Event()
    p = topup()
    # A short task timeout makes the worker heartbeat its workflow task while the hold (a
    # local activity) runs, so the Update is delivered before the hold answers.
    handle = await world.start(p, task_timeout=timedelta(seconds=1))
    await asyncio.wait_for(world.hold_entered.wait(), timeout=10)
    cancel = await handle.start_update(
        PaymentWorkflow.cancel, wait_for_stage=WorkflowUpdateStage.ACCEPTED
    )
    world.hold_gate.set()
    canceled = await cancel.result()
    state = await finished(world, handle)

    assert canceled.status == state.status == "canceled"
    assert state.decline_code is None
    assert world.ledger.log == ledger_steps(p, "hold", "void")
    assert world.gateway.calls == []
    assert events(state) == ["accepted", "risk_scored", "funds_held", "hold_voided", "canceled"]
    assert await announced(world, handle) == [("payment.canceled", None)]
    assert await world.status_attribute(handle) == "canceled"


async def test_cancel_during_review_withdraws_the_case_and_voids_the_hold(world: World) -> None:
    world.risk = REVIEW
    p = topup(amount=9_000)
    handle = await world.start(p)
    await in_review(world, handle, p)
    canceled = await handle.execute_update(PaymentWorkflow.cancel)
    state = await finished(world, handle)

    assert canceled.status == state.status == "canceled"
    assert world.ledger.log == ledger_steps(p, "hold", "void")
    assert world.gateway.calls == []
    assert events(state) == [
        "accepted",
        "risk_scored",
        "funds_held",
        "review_opened",
        "review_withdrawn",
        "hold_voided",
        "canceled",
    ]
    with pytest.raises(WorkflowFailureError) as withdrawn:
        await review_of(world, p).result()
    assert isinstance(withdrawn.value.cause, CancelledError)  # the case ended, canceled
    assert [e.action for e in world.review_events] == ["review.opened", "review.withdrawn"]
    assert world.review_events[-1].details["status"] == "withdrawn"
    assert await announced(world, handle) == [("payment.canceled", None)]


@pytest.mark.parametrize("decision", ["reject", "approve"])
async def test_a_review_decided_just_before_the_cancel_reached_it_stands(
    world: World, decision: str
) -> None:
    """The officer decides; while the decision's audit line is written, the customer
    cancels. A rejection stands (declined, not canceled); after an approval the cancel is
    honoured, and the timeline says the case was approved, not withdrawn."""
    world.risk = REVIEW
    world.decision_record_gate = asyncio.Event()
    p = topup(amount=9_000)
    handle = await world.start(p)
    await in_review(world, handle, p)
    deciding = asyncio.create_task(
        review_of(world, p).execute_update(
            getattr(ComplianceReviewWorkflow, decision),
            DecideInput(actor=CAROL, reason="checked"),
        )
    )
    await asyncio.wait_for(world.decision_record_entered.wait(), timeout=10)
    canceling = asyncio.create_task(handle.execute_update(PaymentWorkflow.cancel))
    await asyncio.sleep(0.5)  # the cancel reaches the case while it writes the decision
    world.decision_record_gate.set()
    await deciding
    state = await finished(world, handle)

    assert (await canceling).status == state.status
    assert world.ledger.log == ledger_steps(p, "hold", "void")
    assert world.gateway.calls == []
    assert "review_withdrawn" not in events(state)
    actions = [e.action for e in world.review_events]
    assert "review.withdrawn" not in actions
    if decision == "reject":
        assert (state.status, state.decline_code) == ("declined", "review_rejected")
        assert await announced(world, handle) == [("payment.declined", "review_rejected")]
    else:
        assert state.status == "canceled"
        assert events(state)[-3:] == ["review_approved", "hold_voided", "canceled"]
        assert await announced(world, handle) == [("payment.canceled", None)]


async def test_cancel_after_the_gateway_step_started_is_refused(world: World) -> None:
    world.gateway.gate = asyncio.Event()
    p = topup()
    handle = await world.start(p)
    await asyncio.wait_for(world.gateway.entered.wait(), timeout=10)

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(PaymentWorkflow.cancel)
    assert refused.value.cause.type == "PaymentNotCancelable"  # type: ignore[attr-defined]

    world.gateway.gate.set()
    state = await finished(world, handle)
    assert state.status == "succeeded"
    assert world.ledger.log == ledger_steps(p, "hold", "post")
    assert len(world.gateway.applied) == 1
    assert "canceled" not in events(state)


# ---- failures after the charge: compensation ---------------------------------------------


async def test_a_post_refused_after_a_charge_refunds_then_voids(world: World) -> None:
    world.post_script = ["pending_transfer_expired"]
    p = topup(amount=4_000)
    handle = await world.start(p)
    state = await finished(world, handle)

    assert (state.status, state.decline_code) == ("failed", "pending_transfer_expired")
    [charge] = world.gateway.applied
    [refund] = world.gateway.refunds.values()
    assert (refund.charge_reference, refund.amount, refund.idempotency_key) == (
        charge.reference,
        4_000,
        f"{p.payment_id}:compensation-refund",
    )
    # Refund first, then release the hold: the order the saga's docstring promises.
    assert world.gateway.calls[-1] == ("refund", f"{p.payment_id}:compensation-refund")
    assert world.ledger.log == ledger_steps(p, "hold", "void")
    assert world.ledger.balances[WALLET] == 100_000
    assert events(state) == [
        "accepted",
        "risk_scored",
        "funds_held",
        "charged",
        "post_failed",
        "charge_refunded",
        "hold_voided",
        "failed",
    ]
    assert detail(state, "charge_refunded") == refund.reference
    assert await announced(world, handle) == [("payment.failed", "pending_transfer_expired")]
    assert await world.status_attribute(handle) == "failed"


@pytest.mark.parametrize("answer", ["decline:charge_disputed", "reject"])
async def test_a_compensation_refund_the_gateway_refuses_says_the_card_stays_charged(
    world: World, answer: str
) -> None:
    """The card cannot get its money back: the payment must not claim it did (timeline) nor
    fail mid-compensation (a refusal raised on); its code sends an operator to settle it."""
    world.post_script = ["pending_transfer_expired"]
    world.gateway.refund_script = [answer]
    p = topup(amount=4_000)
    handle = await world.start(p)
    state = await asyncio.wait_for(finished(world, handle), timeout=8)

    assert (state.status, state.decline_code) == ("failed", "charge_not_refunded")
    assert world.gateway.refunds == {}
    assert world.ledger.log == ledger_steps(p, "hold", "void")
    assert "charge_refunded" not in events(state)
    assert events(state)[-3:] == ["charge_refund_refused", "hold_voided", "failed"]
    assert await announced(world, handle) == [("payment.failed", "charge_not_refunded")]


async def test_a_post_refused_after_a_payout_keeps_the_hold_for_reconciliation(
    world: World,
) -> None:
    world.post_script = ["pending_transfer_expired"]
    p = payout(amount=4_000)
    handle = await world.start(p)
    state = await finished(world, handle)

    assert (state.status, state.decline_code) == ("failed", "post_failed_after_payout")
    assert world.ledger.log == ledger_steps(p, "hold")
    assert world.ledger.holds[f"{p.payment_id}:hold"].state == "pending"
    assert world.gateway.refunds == {}
    assert events(state)[-2:] == ["post_failed", "failed"]


async def test_a_step_that_keeps_failing_after_a_charge_is_compensated(world: World) -> None:
    """Not a ledger rule but an outage or a bug: once retries are exhausted the saga walks
    back (void, then refund) instead of leaving a charged card behind a held wallet."""
    world.post_script = ["error"]
    p = topup(amount=4_000)
    handle = await world.start(p)
    try:
        # Bounded retries end this in seconds (longer backoffs wait on durable timers, which
        # the test server skips); unbounded ones never end it.
        state = await asyncio.wait_for(finished(world, handle), timeout=8)
    except TimeoutError:
        attempts = world.post_attempts
        world.post_script = []  # let the retry in flight end, so the worker stops promptly
        await handle.terminate("the test gave up waiting")
        pytest.fail(
            f"after {attempts} failed posts the saga still retries the post: no refund, "
            "no void, and the card stays charged"
        )

    assert (state.status, state.decline_code) == ("failed", "processing_error")
    assert world.post_attempts > 1  # retried before giving up
    [charge] = world.gateway.applied
    [refund] = world.gateway.refunds.values()
    assert refund.charge_reference == charge.reference
    assert world.ledger.log == ledger_steps(p, "hold", "void")
    assert events(state)[-3:] == ["hold_voided", "charge_refunded", "failed"]
    assert await announced(world, handle) == [("payment.failed", "processing_error")]


async def test_a_post_that_landed_with_its_answer_lost_is_not_walked_back(world: World) -> None:
    """Retries exhausted, but the post had committed: the void finds the hold posted, so
    the card is not refunded and the payment succeeded (no money created or lost)."""
    world.post_script = ["lost"]
    p = topup(amount=4_100)
    handle = await world.start(p)
    state = await asyncio.wait_for(finished(world, handle), timeout=8)

    assert (state.status, state.decline_code) == ("succeeded", None)
    assert world.gateway.refunds == {}
    assert world.ledger.log == ledger_steps(p, "hold", "post")
    assert "hold_found_posted" in events(state)
    assert await announced(world, handle) == [("payment.succeeded", None)]


@pytest.mark.parametrize("make", [transfer, payout], ids=["transfer", "payout"])
async def test_a_hold_that_landed_with_its_answer_lost_is_voided(world: World, make: Any) -> None:
    """Retries of the hold ran out, but an attempt had committed: compensation voids the
    hold's fixed id, or the wallet's money would stay reserved behind a failed payment."""
    world.hold_script = ["lost"]
    p = make(amount=3_000)
    handle = await world.start(p)
    state = await asyncio.wait_for(finished(world, handle), timeout=8)

    assert (state.status, state.decline_code) == ("failed", "processing_error")
    assert world.ledger.log == ledger_steps(p, "hold", "void")
    assert world.ledger.available(WALLET) == 100_000
    assert world.gateway.calls == []


async def test_a_hold_that_never_landed_fails_with_nothing_to_release(world: World) -> None:
    world.hold_script = ["error"]
    p = transfer(amount=3_000)
    handle = await world.start(p)
    state = await asyncio.wait_for(finished(world, handle), timeout=8)

    assert (state.status, state.decline_code) == ("failed", "processing_error")
    assert world.ledger.log == []
    assert "nothing to void" in detail(state, "hold_voided")


async def test_a_payout_post_whose_answers_were_lost_is_retried_until_it_answers(
    world: World,
) -> None:
    """The payout left for the bank and cannot be called back: when the post's answers are
    lost past its usual retries, the saga keeps asking instead of ending ``failed`` over
    money that did move (the app would pay out again)."""
    world.post_script = ["lost_once"] * 25
    p = payout(amount=4_200)
    handle = await world.start(p)
    state = await asyncio.wait_for(finished(world, handle), timeout=15)

    assert (state.status, state.decline_code, state.captured_amount) == ("succeeded", None, 4_200)
    assert world.post_attempts == 26
    assert world.ledger.log == ledger_steps(p, "hold", "post")
    assert "post_retried" in events(state)
    assert await announced(world, handle) == [("payment.succeeded", None)]


async def test_a_payout_in_transit_is_looked_up_until_it_is_paid(world: World) -> None:
    """A provider answers a payout the bank has not paid yet as pending: that is neither a
    decline (the money is on its way) nor a success yet."""
    world.gateway.script = ["pending"]
    p = payout(amount=5_000)
    handle = await world.start(p)
    state = await asyncio.wait_for(finished(world, handle), timeout=8)

    assert (state.status, state.decline_code, state.captured_amount) == ("succeeded", None, 5_000)
    assert world.ledger.log == ledger_steps(p, "hold", "post")
    assert world.gateway.calls == [
        ("payout", f"{p.payment_id}:payout"),
        ("find_payout", p.payment_id),
        ("find_payout", p.payment_id),
    ]
    assert events(state)[3:5] == ["gateway_pending", "gateway_outcome_resolved"]


# ---- the gateway's answer gets lost ------------------------------------------------------


async def test_an_unknown_outcome_found_succeeded_is_not_charged_again(world: World) -> None:
    world.gateway.script = ["unknown+succeed"]
    p = topup(amount=6_000)
    handle = await world.start(p)
    state = await finished(world, handle)

    assert state.status == "succeeded"
    [charge] = world.gateway.applied
    assert world.gateway.calls == [
        ("charge", f"{p.payment_id}:topup"),
        ("find_charge", p.payment_id),
    ]
    assert state.gateway_reference == charge.reference
    assert world.ledger.log == ledger_steps(p, "hold", "post")
    assert events(state) == [
        "accepted",
        "risk_scored",
        "funds_held",
        "gateway_outcome_unknown",
        "gateway_outcome_resolved",
        "charged",
        "posted",
        "succeeded",
    ]
    assert detail(state, "gateway_outcome_resolved") == "succeeded"


@pytest.mark.parametrize("kind", ["topup", "payout"])
async def test_a_lookup_refused_while_the_outcome_is_unknown_walks_nothing_back(
    world: World, kind: str
) -> None:
    """The charge or payout was applied with its answer lost, and the gateway then refuses
    the lookups for a while: walking back would leave the card charged with nothing in the
    wallet, or pay out twice. The payment keeps asking until it knows."""
    world.gateway.script = ["unknown+succeed"]
    world.gateway.failing_lookups = 3
    p = topup(amount=6_000) if kind == "topup" else payout(amount=6_000)
    handle = await world.start(p)
    state = await finished(world, handle)

    assert (state.status, state.decline_code) == ("succeeded", None)
    assert len(world.gateway.applied) == 1 and world.gateway.refunds == {}
    assert world.ledger.log == ledger_steps(p, "hold", "post")
    assert events(state)[3:6] == [
        "gateway_outcome_unknown",
        "gateway_lookup_failed",
        "gateway_outcome_resolved",
    ]
    assert detail(state, "gateway_lookup_failed") == "GatewayRejected"


async def test_an_unknown_outcome_found_declined_voids_the_hold(world: World) -> None:
    world.gateway.script = ["unknown+decline:insufficient_funds"]
    p = topup(amount=6_000)
    handle = await world.start(p)
    state = await finished(world, handle)

    assert (state.status, state.decline_code) == ("declined", "insufficient_funds")
    assert [op for op, _ in world.gateway.calls] == ["charge", "find_charge"]
    assert world.ledger.log == ledger_steps(p, "hold", "void")
    assert events(state)[-4:] == [
        "gateway_outcome_unknown",
        "gateway_outcome_resolved",
        "hold_voided",
        "declined",
    ]
    assert await announced(world, handle) == [("payment.declined", "insufficient_funds")]


@pytest.mark.parametrize("make", [topup, payout], ids=["topup", "payout"])
async def test_an_absent_outcome_replays_the_same_key_after_three_lookups(
    world: World, make: Any
) -> None:
    world.gateway.script = ["unknown", "succeed"]  # the first request never arrived
    p = make(amount=6_000)
    handle = await world.start(p)
    state = await finished(world, handle)

    assert state.status == "succeeded"
    op = "charge" if p.kind == "topup" else "payout"
    key = f"{p.payment_id}:{p.kind}"
    assert world.gateway.calls == [
        (op, key),
        (f"find_{op}", p.payment_id),
        (f"find_{op}", p.payment_id),
        (f"find_{op}", p.payment_id),
        (op, key),  # the same Idempotency-Key as the first attempt, never a new one
    ]
    [movement] = world.gateway.applied
    assert movement.idempotency_key == key
    assert world.ledger.log == ledger_steps(p, "hold", "post")
    assert detail(state, "gateway_outcome_resolved") == "replayed: succeeded"


async def test_a_retryable_gateway_error_is_retried_with_one_charge(world: World) -> None:
    world.gateway.script = ["error", "error", "succeed"]
    p = topup()
    handle = await world.start(p)
    state = await finished(world, handle)

    assert state.status == "succeeded"
    key = f"{p.payment_id}:topup"
    assert world.gateway.calls == [("charge", key)] * 3
    assert len(world.gateway.applied) == 1
    assert world.ledger.log == ledger_steps(p, "hold", "post")
    assert "gateway_outcome_unknown" not in events(state)


# ---- what the outside sees while the saga waits ------------------------------------------


async def test_get_payment_says_what_the_saga_waits_for(world: World) -> None:
    world.risk = REVIEW
    world.gateway.gate = asyncio.Event()
    p = topup(amount=9_000)
    handle = await world.start(p)

    reviewing = await in_review(world, handle, p)
    assert reviewing.waiting_for == f"a compliance decision on {review_id_for(p.payment_id)}"
    assert (reviewing.risk, reviewing.amount, reviewing.currency) == (REVIEW, 9_000, "EUR")
    assert events(reviewing) == ["accepted", "risk_scored", "funds_held", "review_opened"]

    await review_of(world, p).execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="ok")
    )
    charging = await waiting_for(handle, "the card gateway")
    assert charging.status == "processing"
    assert await world.status_attribute(handle) == "processing"
    assert events(charging)[-1] == "review_approved"

    world.gateway.gate.set()
    assert (await finished(world, handle)).status == "succeeded"


# ---- the recorder of the replay histories ------------------------------------------------


async def test_the_history_recorder_still_records_replayable_paths(tmp_path: Path) -> None:
    written = await record_payment_histories.record(tmp_path)
    assert [p.name for p in written] == [
        f"payment_{name}.json" for name in record_payment_histories.PATHS
    ]
    replayer = Replayer(
        workflows=[PaymentWorkflow, RefundWorkflow], data_converter=platform_data_converter()
    )
    for path in written:
        result = await replayer.replay_workflow(
            WorkflowHistory.from_json(path.stem, path.read_text())
        )
        assert result.replay_failure is None
