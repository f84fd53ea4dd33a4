"""Payments survive faults: a worker killed with SIGKILL at random moments, a Temporal server
restarted mid-run, PostgreSQL restarted mid-run. Whatever happens, every payment ends in a
terminal status, the gateway charged each payment at most once (exactly once if it
succeeded), every ledger leg was posted once, and the trial balance is zero. A mail relay
that is down delays the customers' mails, not the payments.

Runs last (marker ``lifecycle``): it kills the stack's worker and restarts Temporal,
PostgreSQL and the SMTP sink. The kill moments come from a seeded random generator; the seed
and the moments are printed so a failing run can be repeated (``BFC_FAULT_SEED``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from infra.ledger_store import LedgerStore, create_ledger_pool
from infra.settings import Settings
from infra.stack.launcher import Stack
from models.notifications import event_id
from tests.helpers.logins import Logins
from tests.helpers.payments import (
    GatewayView,
    available,
    open_wallet,
    pay,
    wait_for,
    wait_for_refund,
)
from tests.helpers.stack import stopped

pytestmark = pytest.mark.lifecycle
log = logging.getLogger(__name__)

CURRENCY = "EUR"


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[GatewayView]:
    view = GatewayView(settings)
    yield view
    await view.aclose()


def _mix(alice: str, bob: str, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Every kind, some through the slow card so kills land inside a gateway call."""
    bodies = []
    for i in range(count):
        amount = 100 + rng.randrange(900)
        kind = ("topup", "topup", "transfer", "payout")[i % 4]
        if kind == "topup":
            method = "pm_bfc_slow" if i % 3 == 0 else "pm_card_visa"
            bodies.append(
                {
                    "kind": kind,
                    "destination_account_id": alice,
                    "amount": amount,
                    "currency": CURRENCY,
                    "payment_method": method,
                }
            )
        elif kind == "transfer":
            bodies.append(
                {
                    "kind": kind,
                    "source_account_id": alice,
                    "amount": amount,
                    "destination_account_id": bob,
                    "currency": CURRENCY,
                }
            )
        else:
            bodies.append(
                {
                    "kind": kind,
                    "source_account_id": alice,
                    "amount": amount,
                    "currency": CURRENCY,
                    "payout_destination": "ba_bfc_ok",
                }
            )
    return bodies


async def _fund(api: httpx.AsyncClient, logins: Logins, wallet: str) -> None:
    payment = await pay(
        api,
        logins.headers("alice"),
        {
            "kind": "topup",
            "destination_account_id": wallet,
            "amount": 90_000,
            "currency": CURRENCY,
            "payment_method": "pm_card_visa",
        },
    )
    assert (await wait_for(api, logins.headers("alice"), payment["id"]))["status"] == "succeeded"


async def _funded_wallets(
    api: httpx.AsyncClient, logins: Logins
) -> tuple[dict[str, str], str, str, int]:
    """Alice's headers, her funded wallet, bob's wallet, and what alice has available."""
    alice_h = logins.headers("alice")
    alice = await open_wallet(api, alice_h, CURRENCY)
    bob = await open_wallet(api, logins.headers("bob"), CURRENCY)
    await _fund(api, logins, alice)
    return alice_h, alice, bob, await available(api, alice_h, alice)


async def _gone(stack: Stack, pid: int) -> None:
    """SIGKILL is delivered at once but the process is torn down a moment later: until
    then it still looks alive, and ``up`` would take it for the running worker."""
    for _ in range(100):
        if stack.pid("worker") != pid:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker {pid} still alive 5 s after SIGKILL")


async def _check_exactly_once(
    payments: list[dict[str, Any]], gateway: GatewayView, ledger: LedgerStore
) -> int:
    """Every payment terminal, one charge/payout per succeeded one, one post per leg.
    Returns alice's expected balance change."""
    change = 0
    for p in payments:
        assert p["status"] in {"succeeded", "declined", "failed", "canceled"}, p
        legs = {
            leg
            for leg in ("hold", "post", "void")
            if await ledger.find_transfer(f"{p['id']}:{leg}")
        }
        if p["kind"] == "topup":
            charges = await gateway.charges(p["id"])
            assert len(charges) <= 1, (p["id"], charges)
            moved = [c for c in charges if c["status"] == "succeeded"]
        elif p["kind"] == "payout":
            moved = [x for x in await gateway.payouts(p["id"]) if x["status"] == "paid"]
            assert len(await gateway.payouts(p["id"])) <= 1
        else:
            moved = []
        if p["status"] == "succeeded":
            assert legs == {"hold", "post"}, (p["id"], legs)
            assert len(moved) == (0 if p["kind"] == "transfer" else 1), (p["id"], moved)
            change += p["amount"] if p["kind"] == "topup" else -p["amount"]
        else:
            assert "post" not in legs and moved == [], (p["id"], p["status"], legs, moved)
    lines = await ledger.trial_balance()
    assert all(line.balanced for line in lines), lines
    assert await ledger.conservation_errors() == []
    return change


async def test_payments_survive_a_worker_killed_at_random_moments(
    stack: Stack,
    api: httpx.AsyncClient,
    logins: Logins,
    ledger: LedgerStore,
    gateway: GatewayView,
) -> None:
    seed = int(os.environ.get("BFC_FAULT_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)  # noqa: S311 - kill moments, not secrets
    alice_h, alice, bob, before = await _funded_wallets(api, logins)

    bodies = _mix(alice, bob, 30, rng)
    kill_at = sorted(rng.uniform(0.0, 2.5) for _ in range(3))
    log.warning("fault seed %s: SIGKILL the worker at %s s", seed, [round(t, 2) for t in kill_at])

    async def submit() -> list[dict[str, Any]]:
        started = []
        for body in bodies:
            started.append(await pay(api, alice_h, body))
            await asyncio.sleep(0.05)
        return started

    async def kill_and_restart() -> None:
        t0 = time.monotonic()
        for moment in kill_at:
            await asyncio.sleep(max(0.0, moment - (time.monotonic() - t0)))
            pid = stack.pid("worker")
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                log.warning("killed worker %s at %.2f s", pid, time.monotonic() - t0)
                await _gone(stack, pid)
            await asyncio.to_thread(stack.up, ("worker",))

    started, _ = await asyncio.gather(submit(), kill_and_restart())
    final = [await wait_for(api, alice_h, p["id"], timeout=120) for p in started]
    change = await _check_exactly_once(final, gateway, ledger)
    assert await available(api, alice_h, alice) == before + change


async def test_payments_survive_a_temporal_restart(
    stack: Stack,
    api: httpx.AsyncClient,
    logins: Logins,
    ledger: LedgerStore,
    gateway: GatewayView,
) -> None:
    alice_h, alice, bob, before = await _funded_wallets(api, logins)
    started = [await pay(api, alice_h, body) for body in _mix(alice, bob, 12, random.Random(7))]  # noqa: S311

    # Its data is on disk: the server comes back with every open workflow.
    async with stopped(stack, "temporal"):
        # Meanwhile the API still accepts payments: the committed row is the promise, and
        # the sweep starts each saga once Temporal is back.
        accepted = [
            await pay(api, alice_h, body)
            for body in _mix(alice, bob, 4, random.Random(8))  # noqa: S311
        ]
        assert {p["status"] for p in accepted} == {"processing"}

    final = [await wait_for(api, alice_h, p["id"], timeout=120) for p in started + accepted]
    change = await _check_exactly_once(final, gateway, ledger)
    assert await available(api, alice_h, alice) == before + change
    # And the platform takes new payments after the restart.
    after = await pay(
        api,
        alice_h,
        {
            "kind": "transfer",
            "source_account_id": alice,
            "destination_account_id": bob,
            "amount": 100,
            "currency": CURRENCY,
        },
    )
    assert (await wait_for(api, alice_h, after["id"], timeout=60))["status"] == "succeeded"


async def test_a_refund_asked_for_while_temporal_is_down_is_made_once_it_is_back(
    stack: Stack, api: httpx.AsyncClient, logins: Logins, gateway: GatewayView
) -> None:
    alice_h, carol_h = logins.headers("alice"), logins.headers("carol")
    alice = await open_wallet(api, alice_h, CURRENCY)
    topup = {
        "kind": "topup",
        "destination_account_id": alice,
        "amount": 2_000,
        "currency": CURRENCY,
        "payment_method": "pm_card_visa",
    }
    payment = await wait_for(api, alice_h, (await pay(api, alice_h, topup))["id"])
    assert payment["status"] == "succeeded", payment
    before = await available(api, alice_h, alice)
    refunds = f"/v1/payments/{payment['id']}/refunds"
    asked = {**alice_h, "Idempotency-Key": str(uuid.uuid4())}

    async with stopped(stack, "temporal"):
        # The reservation is committed: that is the promise, answered 202 (it was a 500 and
        # a reservation that stayed pending, and reserved, for good).
        t0 = time.monotonic()
        refund = await api.post(refunds, json={"amount": 700}, headers=asked)
        assert refund.status_code == 202, refund.text
        assert refund.json()["status"] == "pending"
        assert time.monotonic() - t0 < 8
        again = await api.post(refunds, json={"amount": 700}, headers=asked)
        assert (again.status_code, again.json()["id"]) == (202, refund.json()["id"])
        assert again.headers["Idempotent-Replayed"] == "true"
        # Calls that need Temporal itself answer 503 with Retry-After (they were 500s after
        # ten seconds of the client's retries).
        for call in (
            api.get("/v1/reviews", headers=carol_h),
            api.get("/v1/reviews/rev_00000000000000000000000000", headers=carol_h),
        ):
            t0 = time.monotonic()
            answer = await call
            assert answer.status_code == 503, answer.text
            assert (answer.json()["code"], answer.headers["Retry-After"]) == ("unavailable", "1")
            assert time.monotonic() - t0 < 8

    # Nobody sends the refund again: the API's sweep starts it once Temporal is back.
    done = await wait_for_refund(api, alice_h, payment["id"], refund.json()["id"], timeout=90)
    assert done["amount"] == 700
    intent = (await gateway.charges(payment["id"]))[0]["id"]
    assert [r["amount"] for r in await gateway.refunds(intent)] == [700]
    after = await wait_for(api, alice_h, payment["id"], {"partially_refunded"})
    assert after["refunded_amount"] == 700
    assert await available(api, alice_h, alice) == before - 700


async def test_payments_survive_a_postgres_restart(
    settings: Settings,
    stack: Stack,
    api: httpx.AsyncClient,
    logins: Logins,
    gateway: GatewayView,
) -> None:
    alice_h, alice, bob, before = await _funded_wallets(api, logins)
    rng = random.Random(11)  # noqa: S311
    started = [await pay(api, alice_h, body) for body in _mix(alice, bob, 12, rng)]

    # Sagas are in flight (the slow card among them) when the database goes away.
    body = _mix(alice, bob, 1, rng)[0]
    key = f"pg-restart-{started[0]['id']}"
    async with stopped(stack, "postgres"):
        refused = await api.post(
            "/v1/payments", json=body, headers={**alice_h, "Idempotency-Key": key}
        )
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["code"] == "database_unavailable"
        # Once a connection came back broken, each request tries the server itself and
        # hears "unavailable" at once, instead of waiting out the pool's 5 s.
        for _ in range(3):
            t0 = time.monotonic()
            again = await api.get(f"/v1/payments/{started[0]['id']}", headers=alice_h)
            assert (again.status_code, again.json()["code"]) == (503, "database_unavailable")
            assert time.monotonic() - t0 < 2.5

    # Right after the restart: no caller meets a connection the restart cut.
    answers = await asyncio.gather(
        *(api.get(f"/v1/payments/{p['id']}", headers=alice_h) for p in started)
    )
    assert [a.status_code for a in answers] == [200] * len(started)
    # The refused request left nothing behind: the same key now makes the payment, once.
    retried = await pay(api, alice_h, body, key=key)
    assert (await pay(api, alice_h, body, key=key))["id"] == retried["id"]

    final = [await wait_for(api, alice_h, p["id"], timeout=120) for p in [*started, retried]]
    # A pool opened after the restart: the ``ledger`` fixture's connections were cut by it.
    pool = create_ledger_pool(settings, min_size=1, max_size=4)
    await pool.open()
    ledger = LedgerStore(pool)
    try:
        change = await _check_exactly_once(final, gateway, ledger)
    finally:
        await ledger.close()
        await pool.close()
    assert await available(api, alice_h, alice) == before + change


async def test_payments_keep_flowing_while_the_mail_relay_is_down(
    stack: Stack, api: httpx.AsyncClient, logins: Logins, temporal: Client
) -> None:
    alice_h, alice, bob, _ = await _funded_wallets(api, logins)
    body = {
        "kind": "transfer",
        "source_account_id": alice,
        "destination_account_id": bob,
        "amount": 1,
        "currency": CURRENCY,
    }
    async with stopped(stack, "smtp"):
        # More payments than the worker has workflow-task slots (100). Before, each one held
        # a slot retrying its mail, and the payments after them waited in `processing`.
        started = [await pay(api, alice_h, body) for _ in range(110)]
        final = [await wait_for(api, alice_h, p["id"]) for p in started]
        assert {p["status"] for p in final} == {"succeeded"}
        # And every saga ended: none is left holding a slot for its mail.
        handles = [temporal.get_workflow_handle(p["id"]) for p in started]
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 60)
        assert {r["status"] for r in results} == {"succeeded"}

    # Each mail went to its EventDeliveryWorkflow, which sends it once the relay is back.
    wanted = {event_id(p["id"], "payment.succeeded") for p in started}
    deadline = time.monotonic() + 90
    while True:
        mails = "\n".join(m.read_text() for m in stack.smtp.mailbox.glob("*.eml"))
        missing = {e for e in wanted if e not in mails}
        if not missing or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert missing == set(), f"{len(missing)} of {len(wanted)} mails never arrived"


async def test_reads_and_changes_do_not_hang_while_the_worker_is_down(
    stack: Stack, api: httpx.AsyncClient, logins: Logins
) -> None:
    alice_h, carol_h = logins.headers("alice"), logins.headers("carol")
    alice = await open_wallet(api, alice_h, CURRENCY)
    # A case that only the review workflow knows, open before the worker goes.
    large = {
        "kind": "topup",
        "destination_account_id": alice,
        "amount": 100_000,
        "currency": CURRENCY,
        "payment_method": "pm_card_visa",
    }
    in_review = await wait_for(api, alice_h, (await pay(api, alice_h, large))["id"], {"in_review"})

    async def timed(call: Any) -> tuple[httpx.Response, float]:
        t0 = time.monotonic()
        # Bounded here too, so that a call that hangs fails the test instead of stalling it.
        response = await asyncio.wait_for(call, 45)
        return response, time.monotonic() - t0

    async with stopped(stack, "worker"):
        payment = await pay(
            api,
            alice_h,
            {
                "kind": "topup",
                "destination_account_id": alice,
                "amount": 300,
                "currency": CURRENCY,
                "payment_method": "pm_card_visa",
            },
        )
        # A read falls back to the table's view after a second (it took Temporal's 30 s).
        read, took = await timed(api.get(f"/v1/payments/{payment['id']}", headers=alice_h))
        assert (read.status_code, read.json()["status"]) == (200, "processing")
        assert took < 5, took
        # A read only the workflow can answer, and changes: 503 after the bound (they hung).
        for call in (
            api.get(f"/v1/reviews/{in_review['review_id']}", headers=carol_h),
            api.post(f"/v1/payments/{payment['id']}/cancel", headers=alice_h),
        ):
            answer, took = await timed(call)
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "workflow_unavailable"
            assert answer.headers["Retry-After"]
            assert took < 15, took

    # The cancel was admitted: once a worker takes it, it is applied (or the saga had passed
    # the point of no return); either way the payment ends, and its money agrees.
    final = await wait_for(api, alice_h, payment["id"], timeout=60)
    assert final["status"] in {"canceled", "succeeded"}, final
    decided = await api.post(
        f"/v1/reviews/{in_review['review_id']}/decision",
        json={"decision": "reject", "reason": "test case, closed after the outage"},
        headers={**carol_h, "Idempotency-Key": f"after-outage-{in_review['id']}"},
    )
    assert decided.status_code == 200, decided.text
    ended = await wait_for(api, alice_h, in_review["id"], timeout=60)
    assert (ended["status"], ended["decline_code"]) == ("declined", "review_rejected")
