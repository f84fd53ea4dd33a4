"""Record the PaymentWorkflow histories that ``test_replay.py`` replays.

Each path runs once against the in-memory world of ``payment_world.py`` on a fresh
time-skipping test server, and its history is written to
``tests/workflows/histories/payment_<path>.json``:

    .venv/bin/python -m tests.workflows.record_payment_histories

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

from models.payment import review_id_for
from models.review import DecideInput, ReviewOutcome
from tests.helpers.time_skipping import fresh_environment
from tests.workflows.payment_world import (
    CAROL,
    REVIEW,
    WALLET,
    World,
    topup,
    waiting_for,
)
from workflows.payment import PaymentWorkflow
from workflows.review import ComplianceReviewWorkflow

HISTORIES = Path(__file__).parent / "histories"

Handle = WorkflowHandle[PaymentWorkflow, Any]


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


PATHS: dict[str, Callable[[World], Awaitable[Handle]]] = {
    "topup_succeeded": topup_succeeded,
    "review_approved": review_approved,
    "unknown_outcome_resolved": unknown_outcome_resolved,
    "canceled_in_review": canceled_in_review,
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


async def record(directory: Path = HISTORIES) -> list[Path]:
    """Run every path and write its history; returns the files written."""
    written = []
    for name, drive in PATHS.items():
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
    for path in asyncio.run(record()):
        sys.stdout.write(f"recorded {path}\n")


if __name__ == "__main__":
    main()
