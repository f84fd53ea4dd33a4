"""Record the PaymentWorkflow histories that ``test_replay.py`` replays.

Each path runs once against the in-memory world of ``payment_world.py`` on a fresh
time-skipping test server, and its history is written to
``tests/workflows/histories/payment_<path>.json``:

    .venv/bin/python -m tests.workflows.record_payment_histories [PATH ...]

Named paths only (e.g. a new one), or every path without a name.

Re-record only for a deliberate change of the saga's path, and keep the old histories of
paths that running payments may still be on (that change needs ``workflow.patched``).
Never re-record to make a failing replay test pass: the failure is the point.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle

from models.payment import RefundInput, review_id_for
from models.review import DecideInput, ReviewOutcome
from tests.helpers.time_skipping import fresh_environment
from tests.workflows.payment_world import (
    CAROL,
    CLEARING_EUR,
    CLIENT_ID,
    CUSTOMER,
    REVIEW,
    WALLET,
    World,
    payout,
    topup,
    transfer,
    waiting_for,
)
from workflows.payment import PaymentWorkflow
from workflows.review import ComplianceReviewWorkflow

HISTORIES = Path(__file__).parent / "histories"

Handle = WorkflowHandle[Any, Any]


async def topup_succeeded(world: World) -> Handle:
    return await world.start(topup(payment_id="pay_recorded_topup"))


async def review_approved(world: World) -> Handle:
    world.risk = REVIEW
    payment = topup(payment_id="pay_recorded_review", amount=9_000)
    handle = await world.start(payment)
    await waiting_for(handle, "a compliance decision")
    review: WorkflowHandle[ComplianceReviewWorkflow, ReviewOutcome] = (
        world.client.get_workflow_handle_for(
            ComplianceReviewWorkflow.run, review_id_for(payment.payment_id)
        )
    )
    await review.execute_update(
        ComplianceReviewWorkflow.approve, DecideInput(actor=CAROL, reason="source of funds ok")
    )
    return handle


async def unknown_outcome_resolved(world: World) -> Handle:
    # The first request never arrived: three lookups find nothing, then the key is replayed.
    world.gateway.script = ["unknown", "succeed"]
    return await world.start(topup(payment_id="pay_recorded_unknown"))


async def canceled_in_review(world: World) -> Handle:
    world.risk = REVIEW
    handle = await world.start(topup(payment_id="pay_recorded_cancel", amount=9_000))
    await waiting_for(handle, "a compliance decision")
    await handle.execute_update(PaymentWorkflow.cancel)
    return handle


async def hold_answer_lost(world: World) -> Handle:
    # Every answer of the hold is lost after it landed: compensation voids its fixed id.
    world.hold_script = ["lost"]
    return await world.start(transfer(payment_id="pay_recorded_hold_lost"))


async def payout_in_transit(world: World) -> Handle:
    world.gateway.script = ["pending"]
    return await world.start(payout(payment_id="pay_recorded_payout_pending"))


async def payout_post_retried(world: World) -> Handle:
    # The post's answers are lost past its quick retries; after a payout it must land.
    world.post_script = ["lost_once"] * 20
    return await world.start(payout(payment_id="pay_recorded_payout_post"))


async def charge_not_refunded(world: World) -> Handle:
    world.post_script = ["pending_transfer_expired"]
    world.gateway.refund_script = ["reject"]
    return await world.start(topup(payment_id="pay_recorded_not_refunded"))


async def topup_refunded(world: World) -> Handle:
    # A RefundWorkflow: part of a captured top-up back to the card.
    world.captured["pay_recorded_refunded"] = 5_000
    refund = RefundInput(
        refund_id="rfd_recorded_refund",
        payment_id="pay_recorded_refunded",
        kind="topup",
        customer_id=CUSTOMER,
        client_id=CLIENT_ID,
        amount=2_000,
        currency="EUR",
        debit_account_id=WALLET,
        credit_account_id=CLEARING_EUR,
        gateway_reference="ch_recorded",
    )
    return await world.start_refund(refund)


PATHS: dict[str, Callable[[World], Awaitable[Handle]]] = {
    "topup_succeeded": topup_succeeded,
    "review_approved": review_approved,
    "unknown_outcome_resolved": unknown_outcome_resolved,
    "canceled_in_review": canceled_in_review,
    # Recorded after the patches of the failure paths and of the review's approval.
    "review_approval_recorded": review_approved,
    "hold_answer_lost": hold_answer_lost,
    "payout_in_transit": payout_in_transit,
    "payout_post_retried": payout_post_retried,
    "charge_not_refunded": charge_not_refunded,
    "topup_refunded": topup_refunded,
}


def without_stack_traces(history: dict[str, Any]) -> str:
    """The history as JSON without failures' stack traces: they name this machine's paths,
    and replay does not read them."""

    def scrub(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: scrub(v) for k, v in node.items() if k != "stackTrace"}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        return node

    return json.dumps(scrub(history), indent=2) + "\n"


async def record(directory: Path = HISTORIES, only: list[str] | None = None) -> list[Path]:
    """Run every path (or the ``only`` ones) and write its history; the files written."""
    written = []
    for name, drive in PATHS.items():
        if only and name not in only:
            continue
        async with fresh_environment() as env:
            world = World(env.client)
            world.ledger.fund(WALLET, 100_000)
            async with world.worker():
                handle = await drive(world)
                await handle.result()
                history = await handle.fetch_history()
        path = directory / f"payment_{name}.json"
        path.write_text(without_stack_traces(history.to_json_dict()))
        written.append(path)
    return written


def main() -> None:
    for path in asyncio.run(record(only=sys.argv[1:] or None)):
        sys.stdout.write(f"recorded {path}\n")


if __name__ == "__main__":
    main()
