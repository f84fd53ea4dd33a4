"""Payments end to end: the API, the stack's worker, the ledger and the card gateway sandbox.

Real tokens (alice and bob are customers, carol a compliance officer, olivia an operator),
real workflows, real money movements. Wallets are one per customer and currency and live
for the whole suite, so each test reasons about balance *changes*.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client

from api.payment_starter import SagaStarter
from infra.ledger_store import LedgerStore
from infra.payment_store import (
    IdempotencyKeyReused,
    NewPayment,
    PaymentStore,
    StoredPayment,
    StoredRefund,
)
from infra.settings import Settings
from models.ids import new_id
from models.ledger import Account
from tests.helpers.ledger import AccountFactory
from tests.helpers.logins import Logins
from tests.helpers.payments import (
    GatewayView,
    available,
    open_wallet,
    pay,
    pay_and_wait,
    wait_for,
    wait_for_refund,
)

pytestmark = pytest.mark.stack

CURRENCY = "EUR"


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[GatewayView]:
    view = GatewayView(settings)
    yield view
    await view.aclose()


@pytest.fixture
async def wallets(api: httpx.AsyncClient, logins: Logins) -> dict[str, str]:
    return {
        user: await open_wallet(api, logins.headers(user), CURRENCY) for user in ("alice", "bob")
    }


async def top_up(
    api: httpx.AsyncClient, logins: Logins, wallet: str, amount: int
) -> dict[str, Any]:
    payment = await pay_and_wait(
        api,
        logins.headers("alice"),
        {
            "kind": "topup",
            "destination_account_id": wallet,
            "amount": amount,
            "currency": CURRENCY,
            "payment_method": "pm_card_visa",
        },
    )
    assert payment["status"] == "succeeded", payment
    return payment


async def test_top_up_transfer_and_pay_out_move_exact_amounts(
    api: httpx.AsyncClient,
    logins: Logins,
    wallets: dict[str, str],
    gateway: GatewayView,
    store: PaymentStore,
) -> None:
    alice, bob = logins.headers("alice"), logins.headers("bob")
    a0 = await available(api, alice, wallets["alice"])
    b0 = await available(api, bob, wallets["bob"])

    topup = await top_up(api, logins, wallets["alice"], 10_000)
    assert topup["captured_amount"] == 10_000
    # The paying customer sees the band and reasons, never the model's score or version.
    assert topup["risk"] == {"band": "approve", "reasons": [], "score": None, "model_version": None}
    scored = next(e["detail"] for e in topup["timeline"] if e["event"] == "risk_scored")
    assert scored == "approve", scored
    staff_view = await api.get(f"/v1/payments/{topup['id']}", headers=logins.headers("olivia"))
    assert staff_view.json()["risk"]["model_version"].startswith("fraud-v1-")
    events = [e["event"] for e in topup["timeline"]]
    assert events[:5] == ["accepted", "risk_scored", "funds_held", "charged", "posted"]
    charges = await gateway.charges(topup["id"])
    assert [(c["status"], c["amount"]) for c in charges] == [("succeeded", 10_000)]

    transfer = await pay_and_wait(
        api,
        alice,
        {
            "kind": "transfer",
            "source_account_id": wallets["alice"],
            "destination_account_id": wallets["bob"],
            "amount": 2_500,
            "currency": CURRENCY,
        },
    )
    assert transfer["status"] == "succeeded", transfer
    assert await gateway.charges(transfer["id"]) == []  # wallet to wallet: no gateway
    # bob, whose wallet it pays, is named so that he could never decide its review.
    stored = await store.get(transfer["id"])
    assert stored is not None and stored.beneficiary_id == logins.subject("bob")

    payout = await pay_and_wait(
        api,
        alice,
        {
            "kind": "payout",
            "source_account_id": wallets["alice"],
            "amount": 1_500,
            "currency": CURRENCY,
            "payout_destination": "ba_bfc_ok",
        },
    )
    assert payout["status"] == "succeeded", payout
    assert [p["status"] for p in await gateway.payouts(payout["id"])] == ["paid"]

    assert await available(api, alice, wallets["alice"]) == a0 + 10_000 - 2_500 - 1_500
    assert await available(api, bob, wallets["bob"]) == b0 + 2_500


async def test_a_declined_card_leaves_balances_untouched(
    api: httpx.AsyncClient, logins: Logins, wallets: dict[str, str], gateway: GatewayView
) -> None:
    alice = logins.headers("alice")
    before = await available(api, alice, wallets["alice"])
    payment = await pay_and_wait(
        api,
        alice,
        {
            "kind": "topup",
            "destination_account_id": wallets["alice"],
            "amount": 4_200,
            "currency": CURRENCY,
            "payment_method": "pm_card_chargeDeclinedInsufficientFunds",
        },
    )
    assert (payment["status"], payment["decline_code"]) == ("declined", "insufficient_funds")
    assert "hold_voided" in [e["event"] for e in payment["timeline"]]
    assert payment["captured_amount"] == 0
    assert await available(api, alice, wallets["alice"]) == before
    assert [c["status"] for c in await gateway.charges(payment["id"])] != ["succeeded"]


async def test_an_overdraft_transfer_is_declined_with_insufficient_funds(
    api: httpx.AsyncClient, logins: Logins, wallets: dict[str, str]
) -> None:
    bob = logins.headers("bob")
    before = await available(api, bob, wallets["bob"])
    payment = await pay_and_wait(
        api,
        bob,
        {
            "kind": "transfer",
            "source_account_id": wallets["bob"],
            "destination_account_id": wallets["alice"],
            "amount": before + 1,
            "currency": CURRENCY,
        },
    )
    assert (payment["status"], payment["decline_code"]) == ("declined", "insufficient_funds")
    assert await available(api, bob, wallets["bob"]) == before


async def test_fifty_identical_posts_make_one_payment_and_one_charge(
    api: httpx.AsyncClient, logins: Logins, wallets: dict[str, str], gateway: GatewayView
) -> None:
    alice = logins.headers("alice")
    before = await available(api, alice, wallets["alice"])
    key = f"same-{uuid.uuid4()}"
    body = {
        "kind": "topup",
        "destination_account_id": wallets["alice"],
        "amount": 777,
        "currency": CURRENCY,
        "payment_method": "pm_card_visa",
    }
    answers = await asyncio.gather(
        *(
            api.post("/v1/payments", json=body, headers={**alice, "Idempotency-Key": key})
            for _ in range(50)
        )
    )
    assert {a.status_code for a in answers} == {202}
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 49
    payment = await wait_for(api, alice, ids.pop())
    assert payment["status"] == "succeeded"
    assert len(await gateway.charges(payment["id"])) == 1
    assert await available(api, alice, wallets["alice"]) == before + 777

    other = await api.post(
        "/v1/payments", json={**body, "amount": 778}, headers={**alice, "Idempotency-Key": key}
    )
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_key_reused"
    # Keys are the caller's: bob's request under alice's key is his own payment.
    bobs = await api.post(
        "/v1/payments",
        json={**body, "destination_account_id": wallets["bob"]},
        headers={**logins.headers("bob"), "Idempotency-Key": key},
    )
    assert bobs.status_code == 202 and bobs.json()["id"] != payment["id"]
    await wait_for(api, logins.headers("bob"), bobs.json()["id"])


async def test_requests_that_cannot_be_paid_are_refused_with_the_field_named(
    api: httpx.AsyncClient, logins: Logins, wallets: dict[str, str]
) -> None:
    alice = logins.headers("alice")
    body = {
        "kind": "transfer",
        "source_account_id": wallets["alice"],
        "destination_account_id": wallets["bob"],
        "amount": 100,
        "currency": CURRENCY,
    }

    no_key = await api.post("/v1/payments", json=body, headers=alice)
    assert no_key.status_code == 400
    assert no_key.json()["code"] == "idempotency_key_required"
    # An empty key is a missing one, not a malformed one.
    empty_key = await api.post("/v1/payments", json=body, headers={**alice, "Idempotency-Key": ""})
    assert empty_key.status_code == 400, empty_key.text
    assert empty_key.json()["code"] == "idempotency_key_required"

    async def refused(changes: dict[str, Any], headers: dict[str, str] = alice) -> dict[str, Any]:
        response = await api.post(
            "/v1/payments",
            json={**body, **changes},
            headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert response.status_code in {404, 409, 422}, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem: dict[str, Any] = response.json()
        return problem

    # A client cannot set a status, a fee or an id.
    for field in ("status", "fee", "id"):
        problem = await refused({field: "succeeded"})
        assert problem["code"] == "validation_failed"
        assert field in [e["field"] for e in problem["errors"]]
    assert (await refused({"amount": 10.5}))["errors"][0]["field"] == "amount"
    assert (await refused({"amount": 0}))["errors"][0]["field"] == "amount"
    assert (await refused({"currency": "XXX"}))["errors"][0]["field"] == "currency"
    missing = await refused(
        {"kind": "topup", "source_account_id": None, "destination_account_id": None}
    )
    assert {e["field"] for e in missing["errors"]} == {"destination_account_id", "payment_method"}
    # A customer moves money only out of their own wallets: bob's is "not found" for alice.
    theirs = await refused(
        {"source_account_id": wallets["bob"], "destination_account_id": wallets["alice"]}
    )
    assert theirs["code"] == "account_not_found"
    assert (await refused({"currency": "USD"}))["code"] == "currency_mismatch"
    # Another customer's wallet that cannot take the payment: not said why (closed, or
    # holding another currency, is its owner's business).
    bobs_usd = await open_wallet(api, logins.headers("bob"), "USD")
    elsewhere = await refused({"destination_account_id": bobs_usd})
    assert elsewhere["code"] == "destination_unavailable"
    assert "USD" not in elsewhere["detail"]
    assert [e["field"] for e in elsewhere["errors"]] == ["destination_account_id"]
    # Nothing half-done: no payment row for any refused request.
    listed = await api.get("/v1/payments", params={"limit": 100}, headers=alice)
    assert all(p["amount"] != 10.5 for p in listed.json()["data"])


async def test_customers_see_only_their_own_payments(
    api: httpx.AsyncClient, logins: Logins, wallets: dict[str, str]
) -> None:
    alice, bob = logins.headers("alice"), logins.headers("bob")
    payment = await top_up(api, logins, wallets["alice"], 300)
    assert (await api.get(f"/v1/payments/{payment['id']}", headers=bob)).status_code == 404
    assert (await api.post(f"/v1/payments/{payment['id']}/cancel", headers=bob)).status_code == 404
    olivia = await api.get(f"/v1/payments/{payment['id']}", headers=logins.headers("olivia"))
    assert olivia.status_code == 200
    mine = await api.get("/v1/payments", params={"kind": "topup"}, headers=alice)
    assert payment["id"] in {p["id"] for p in mine.json()["data"]}
    theirs = await api.get("/v1/payments", headers=bob)
    assert payment["id"] not in {p["id"] for p in theirs.json()["data"]}
    page = await api.get("/v1/payments", params={"limit": 1}, headers=alice)
    assert len(page.json()["data"]) == 1 and page.json()["next_cursor"]
    after = await api.get(
        "/v1/payments", params={"limit": 1, "cursor": page.json()["next_cursor"]}, headers=alice
    )
    assert after.json()["data"][0]["id"] < page.json()["data"][0]["id"]


async def test_list_filters_are_checked_and_applied(
    api: httpx.AsyncClient, logins: Logins, wallets: dict[str, str]
) -> None:
    alice = logins.headers("alice")
    payment = await top_up(api, logins, wallets["alice"], 200)

    async def listed(**params: str) -> set[str]:
        response = await api.get("/v1/payments", params={"limit": "100", **params}, headers=alice)
        assert response.status_code == 200, response.text
        return {p["id"] for p in response.json()["data"]}

    assert payment["id"] in await listed(status="succeeded", kind="topup")
    assert payment["id"] not in await listed(status="declined")
    assert payment["id"] not in await listed(kind="transfer")
    # A misspelt filter names itself; it is not an empty page that looks like "none".
    for name, value in (("status", "suceeded"), ("kind", "top-up")):
        response = await api.get("/v1/payments", params={name: value}, headers=alice)
        assert response.status_code == 422
        assert [e["field"] for e in response.json()["errors"]] == [name]


async def test_refunds_never_exceed_the_captured_amount(
    api: httpx.AsyncClient, logins: Logins, wallets: dict[str, str], gateway: GatewayView
) -> None:
    alice = logins.headers("alice")
    payment = await top_up(api, logins, wallets["alice"], 10_000)
    before = await available(api, alice, wallets["alice"])
    path = f"/v1/payments/{payment['id']}/refunds"

    async def refund(amount: int) -> httpx.Response:
        headers = {**alice, "Idempotency-Key": str(uuid.uuid4())}
        return await api.post(path, json={"amount": amount}, headers=headers)

    # Concurrent refunds: only as many as fit into the capture are accepted.
    answers = await asyncio.gather(*(refund(4_000) for _ in range(4)))
    accepted = [a for a in answers if a.status_code == 202]
    assert len(accepted) == 2, [a.text for a in answers]
    assert {a.json()["code"] for a in answers if a.status_code != 202} == {"refund_exceeds_capture"}
    for a in accepted:
        await wait_for_refund(api, alice, payment["id"], a.json()["id"])
    partially = await wait_for(api, alice, payment["id"])
    assert (partially["status"], partially["refunded_amount"]) == ("partially_refunded", 8_000)

    over = await refund(2_001)
    assert over.status_code == 409 and over.json()["code"] == "refund_exceeds_capture"
    last = await refund(2_000)
    assert last.status_code == 202
    await wait_for_refund(api, alice, payment["id"], last.json()["id"])
    done = await wait_for(api, alice, payment["id"])
    assert (done["status"], done["refunded_amount"]) == ("refunded", 10_000)

    intent = (await gateway.charges(payment["id"]))[0]["id"]
    assert sorted(r["amount"] for r in await gateway.refunds(intent)) == [2_000, 4_000, 4_000]
    assert await available(api, alice, wallets["alice"]) == before - 10_000
    assert (await refund(1)).json()["code"] in {"payment_not_refundable", "refund_exceeds_capture"}


async def test_a_refund_of_the_rest_replays_as_the_same_refund(
    api: httpx.AsyncClient, logins: Logins, wallets: dict[str, str]
) -> None:
    alice = logins.headers("alice")
    payment = await top_up(api, logins, wallets["alice"], 3_000)
    path = f"/v1/payments/{payment['id']}/refunds"
    part = await api.post(
        path, json={"amount": 1_000}, headers={**alice, "Idempotency-Key": str(uuid.uuid4())}
    )
    assert part.status_code == 202, part.text
    await wait_for_refund(api, alice, payment["id"], part.json()["id"])
    key = {**alice, "Idempotency-Key": str(uuid.uuid4())}
    rest = await api.post(path, json={}, headers=key)
    assert (rest.status_code, rest.json()["amount"]) == (202, 2_000), rest.text
    await wait_for_refund(api, alice, payment["id"], rest.json()["id"])
    # Fully refunded now, yet the same request under the same key is the same refund.
    again = await api.post(path, json={}, headers=key)
    assert (again.status_code, again.json()["id"]) == (202, rest.json()["id"]), again.text
    assert again.headers.get("Idempotent-Replayed") == "true"
    more = await api.post(path, json={}, headers={**alice, "Idempotency-Key": str(uuid.uuid4())})
    assert more.status_code == 409 and more.json()["code"] == "payment_not_refundable"


async def test_a_refund_with_no_body_gives_back_what_is_left(
    api: httpx.AsyncClient, logins: Logins, wallets: dict[str, str]
) -> None:
    alice = logins.headers("alice")
    first, second = await asyncio.gather(
        top_up(api, logins, wallets["alice"], 3_000), top_up(api, logins, wallets["alice"], 1_200)
    )
    path = f"/v1/payments/{first['id']}/refunds"
    part = await api.post(
        path, json={"amount": 1_000}, headers={**alice, "Idempotency-Key": str(uuid.uuid4())}
    )
    assert part.status_code == 202, part.text
    key = {**alice, "Idempotency-Key": str(uuid.uuid4())}
    bare = await api.post(path, headers=key)  # no body at all
    assert (bare.status_code, bare.json()["amount"]) == (202, 2_000), bare.text
    # No body and ``{}`` are the same request: under the same key, the same refund.
    same = await api.post(path, json={}, headers=key)
    assert (same.status_code, same.json()["id"]) == (202, bare.json()["id"]), same.text
    assert same.headers.get("Idempotent-Replayed") == "true"
    more = await api.post(path, headers={**alice, "Idempotency-Key": str(uuid.uuid4())})
    assert (more.status_code, more.json()["code"]) == (409, "refund_exceeds_capture")

    whole = await api.post(
        f"/v1/payments/{second['id']}/refunds",
        json={},
        headers={**alice, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert (whole.status_code, whole.json()["amount"]) == (202, 1_200), whole.text
    for payment_id, refund_id in (
        (first["id"], bare.json()["id"]),
        (second["id"], whole.json()["id"]),
    ):
        await wait_for_refund(api, alice, payment_id, refund_id)


async def test_a_refund_is_read_at_its_location(
    api: httpx.AsyncClient,
    logins: Logins,
    wallets: dict[str, str],
    pool: AsyncConnectionPool[Any],
) -> None:
    alice, bob = logins.headers("alice"), logins.headers("bob")
    payment, other = await asyncio.gather(
        top_up(api, logins, wallets["alice"], 900), top_up(api, logins, wallets["alice"], 400)
    )
    created = await api.post(
        f"/v1/payments/{payment['id']}/refunds",
        json={"amount": 300},
        headers={**alice, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert created.status_code == 202, created.text
    refund = created.json()
    location = created.headers["Location"]
    assert location == f"/v1/payments/{payment['id']}/refunds/{refund['id']}"
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT actor, action, details FROM audit_events WHERE subject = %s", (refund["id"],)
        )
        audited = await cur.fetchall()
    assert audited == [
        (
            logins.subject("alice"),
            "payment.refund_requested",
            {
                "payment_id": payment["id"],
                "amount": 300,
                "idempotency_scope": logins.subject("alice"),
            },
        )
    ]

    read = await api.get(location, headers=alice)
    assert read.status_code == 200, read.text
    listed = await api.get(f"/v1/payments/{payment['id']}/refunds", headers=alice)
    assert read.json().keys() == listed.json()[0].keys()  # the list's shape
    lasting = ("id", "object", "payment_id", "amount", "created_at")  # the worker moves the rest
    assert {k: read.json()[k] for k in lasting} == {k: refund[k] for k in lasting}
    staff = await api.get(location, headers=logins.headers("olivia"))
    assert (staff.status_code, staff.json()["id"]) == (200, refund["id"])
    # Someone else's payment answers like a missing one, refund or not.
    theirs = await api.get(location, headers=bob)
    assert (theirs.status_code, theirs.json()["code"]) == (404, "payment_not_found")
    for path in (
        f"/v1/payments/{payment['id']}/refunds/rfd_nothing",
        f"/v1/payments/{other['id']}/refunds/{refund['id']}",  # a refund of another payment
    ):
        missing = await api.get(path, headers=alice)
        assert (missing.status_code, missing.json()["code"]) == (404, "refund_not_found"), path
        assert missing.headers["content-type"].startswith("application/problem+json")
    await wait_for_refund(api, alice, payment["id"], refund["id"])


async def test_an_empty_idempotency_key_on_a_refund_is_a_missing_one(
    api: httpx.AsyncClient, logins: Logins
) -> None:
    # The key is checked before anything else: no payment is needed to see the answer.
    response = await api.post(
        "/v1/payments/pay_nothing/refunds",
        json={},
        headers=logins.headers("alice", **{"Idempotency-Key": ""}),
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "idempotency_key_required"


async def refund_insert_blocked(pool: AsyncConnectionPool[Any], holder_pid: int) -> None:
    """Until a session waits for the transaction of ``holder_pid`` (the racing INSERT)."""
    async with pool.connection() as conn:
        for _ in range(200):
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (holder_pid,),
            )
            row = await cur.fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("reserve_refund never waited on the uncommitted refund")


async def test_a_refund_key_raced_on_another_payment_is_refused_not_a_500(
    api: httpx.AsyncClient,
    logins: Logins,
    wallets: dict[str, str],
    store: PaymentStore,
    pool: AsyncConnectionPool[Any],
) -> None:
    """Two refunds under one key on two payments lock two different payment rows: both
    find the key free, and the second INSERT waits on the key's unique index. It must come
    out as the first one's replay or a reuse of the key, never as the index's error."""
    first, second = await asyncio.gather(
        top_up(api, logins, wallets["alice"], 500), top_up(api, logins, wallets["alice"], 500)
    )
    scope = f"race-{uuid.uuid4()}"

    async def race(
        held_payment: str, held_hash: str, request_hash: str
    ) -> tuple[str, asyncio.Task[tuple[StoredRefund, bool]]]:
        held_id = new_id("rfd")
        async with pool.connection() as holder:
            async with holder.transaction():
                # 'failed': the stack's sweep leaves it alone and it reserves nothing.
                await holder.execute(
                    "INSERT INTO payment_refunds (id, payment_id, amount, status, scope, "
                    "idempotency_key, request_hash, created_by) "
                    "VALUES (%s, %s, 1, 'failed', %s, %s, %s, %s)",
                    (held_id, held_payment, scope, held_hash, held_hash, scope),
                )
                racing = asyncio.create_task(
                    store.reserve_refund(
                        refund_id=new_id("rfd"),
                        payment_id=second["id"],
                        amount=None,
                        scope=scope,
                        key=held_hash,
                        request_hash=request_hash,
                        created_by=scope,
                    )
                )
                await refund_insert_blocked(pool, holder.info.backend_pid)
                assert not racing.done()
            # committed: the waiting INSERT now meets the key
            return held_id, racing

    # Another request (another payment) holds the key: refused as a reused key.
    _, racing = await race(first["id"], f"other-{uuid.uuid4()}", "this request")
    with pytest.raises(IdempotencyKeyReused):
        await racing
    assert await store.refunds_of(second["id"]) == []

    # The same request got there first: its refund is the answer, not a new one.
    same = f"same-{uuid.uuid4()}"
    held_id, racing = await race(second["id"], same, same)
    refund, created = await racing
    assert (refund.id, created) == (held_id, False)
    assert [r.id for r in await store.refunds_of(second["id"])] == [held_id]


async def test_one_refund_key_sent_for_two_payments_at_once_makes_one_refund(
    api: httpx.AsyncClient, logins: Logins, wallets: dict[str, str]
) -> None:
    alice = logins.headers("alice")
    payments = await asyncio.gather(
        top_up(api, logins, wallets["alice"], 600), top_up(api, logins, wallets["alice"], 600)
    )
    key = {**alice, "Idempotency-Key": str(uuid.uuid4())}
    answers = await asyncio.gather(
        *(api.post(f"/v1/payments/{p['id']}/refunds", json={}, headers=key) for p in payments)
    )
    assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 409)
    assert refused.json()["code"] == "idempotency_key_reused"
    accepted = next(a for a in answers if a.status_code == 202)
    payment_id = accepted.json()["payment_id"]
    await wait_for_refund(api, alice, payment_id, accepted.json()["id"])


async def test_a_large_payment_waits_for_review_and_carol_decides(
    api: httpx.AsyncClient, logins: Logins, wallets: dict[str, str], gateway: GatewayView
) -> None:
    alice = logins.headers("alice")
    before = await available(api, alice, wallets["alice"])
    body = {
        "kind": "topup",
        "destination_account_id": wallets["alice"],
        "amount": 100_000,
        "currency": CURRENCY,
        "payment_method": "pm_card_visa",
    }

    approved = await pay(api, alice, body)
    held = await wait_for(api, alice, approved["id"], {"in_review"})
    assert held["review_id"] == "rev_" + approved["id"].removeprefix("pay_")
    assert "large_amount" in held["risk"]["reasons"]
    assert "compliance decision" in held["waiting_for"]
    assert await gateway.charges(approved["id"]) == []  # nothing charged while in review
    decision = await api.post(
        f"/v1/reviews/{held['review_id']}/decision",
        json={"decision": "approve", "reason": "card holder verified by phone"},
        headers=logins.headers("carol"),
    )
    assert decision.status_code == 200, decision.text
    done = await wait_for(api, alice, approved["id"])
    assert done["status"] == "succeeded"
    # The customer sees that the review approved it, not which officer did; staff do.
    carol = logins.subject("carol")
    approval = [e["detail"] for e in done["timeline"] if e["event"] == "review_approved"]
    assert approval == [""]
    staff_view = (
        await api.get(f"/v1/payments/{approved['id']}", headers=logins.headers("olivia"))
    ).json()
    assert [e["detail"] for e in staff_view["timeline"] if e["event"] == "review_approved"] == [
        carol
    ]

    rejected = await pay(api, alice, body)
    held = await wait_for(api, alice, rejected["id"], {"in_review"})
    decision = await api.post(
        f"/v1/reviews/{held['review_id']}/decision",
        json={"decision": "reject", "reason": "card reported by the issuer"},
        headers=logins.headers("carol"),
    )
    assert decision.status_code == 200, decision.text
    final = await wait_for(api, alice, rejected["id"])
    assert (final["status"], final["decline_code"]) == ("declined", "review_rejected")
    assert await gateway.charges(rejected["id"]) == []
    assert await available(api, alice, wallets["alice"]) == before + 100_000


async def test_cancel_is_honoured_before_the_gateway_and_refused_after(
    api: httpx.AsyncClient, logins: Logins, wallets: dict[str, str], gateway: GatewayView
) -> None:
    alice = logins.headers("alice")
    for _ in range(2):  # below the review threshold each
        await top_up(api, logins, wallets["alice"], 70_000)
    before = await available(api, alice, wallets["alice"])
    # In review, the funds are on hold; cancel releases them and withdraws the case.
    payment = await pay(
        api,
        alice,
        {
            "kind": "payout",
            "source_account_id": wallets["alice"],
            "amount": 120_000,
            "currency": CURRENCY,
            "payout_destination": "ba_bfc_ok",
        },
    )
    held = await wait_for(api, alice, payment["id"], {"in_review"})
    canceled = await api.post(f"/v1/payments/{payment['id']}/cancel", headers=alice)
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    assert "review_withdrawn" in [e["event"] for e in canceled.json()["timeline"]]
    assert await gateway.payouts(payment["id"]) == []
    assert await available(api, alice, wallets["alice"]) == before
    queue = await api.get("/v1/reviews", headers=logins.headers("carol"))
    assert held["review_id"] not in {c["review_id"] for c in queue.json()["data"]}

    again = await api.post(f"/v1/payments/{payment['id']}/cancel", headers=alice)
    assert again.status_code == 409 and again.json()["code"] == "payment_not_cancelable"

    # Once the gateway is working on it (a slow card), cancel is refused and it completes.
    slow = await pay(
        api,
        alice,
        {
            "kind": "topup",
            "destination_account_id": wallets["alice"],
            "amount": 500,
            "currency": CURRENCY,
            "payment_method": "pm_bfc_slow",
        },
    )
    for _ in range(100):
        live = (await api.get(f"/v1/payments/{slow['id']}", headers=alice)).json()
        if "charged" in [e["event"] for e in live["timeline"]] or "gateway" in (
            live["waiting_for"] or ""
        ):
            break
        await asyncio.sleep(0.05)
    refused = await api.post(f"/v1/payments/{slow['id']}/cancel", headers=alice)
    assert refused.status_code == 409, refused.text
    assert (await wait_for(api, alice, slow["id"]))["status"] == "succeeded"


async def test_gateway_faults_end_succeeded_with_one_charge(
    api: httpx.AsyncClient, logins: Logins, wallets: dict[str, str], gateway: GatewayView
) -> None:
    alice = logins.headers("alice")
    before = await available(api, alice, wallets["alice"])
    payments = [
        await pay(
            api,
            alice,
            {
                "kind": "topup",
                "destination_account_id": wallets["alice"],
                "amount": 1_000,
                "currency": CURRENCY,
                "payment_method": method,
            },
        )
        for method in ("pm_bfc_timeoutAfterCharge", "pm_bfc_error500Twice")
    ]
    # A payout whose answer is lost too: found again by listing the payouts since the
    # payment, as at Stripe (which cannot search payouts).
    payout = await pay(
        api,
        alice,
        {
            "kind": "payout",
            "source_account_id": wallets["alice"],
            "amount": 300,
            "currency": CURRENCY,
            "payout_destination": "ba_bfc_timeoutAfterPayout",
        },
    )
    for payment in payments:
        final = await wait_for(api, alice, payment["id"], timeout=90)
        assert final["status"] == "succeeded", final
        assert len(await gateway.charges(payment["id"])) == 1
    timed_out = await wait_for(api, alice, payments[0]["id"])
    assert "gateway_outcome_unknown" in [e["event"] for e in timed_out["timeline"]]
    paid_out = await wait_for(api, alice, payout["id"], timeout=90)
    assert paid_out["status"] == "succeeded", paid_out
    events = [e["event"] for e in paid_out["timeline"]]
    assert "gateway_outcome_unknown" in events and "gateway_lookup_failed" not in events
    # Found by the lookup itself, not by replaying the key after it came back empty.
    resolved = [
        e["detail"] for e in paid_out["timeline"] if e["event"] == "gateway_outcome_resolved"
    ]
    assert resolved == ["succeeded"], paid_out["timeline"]
    assert [p["status"] for p in await gateway.payouts(payout["id"])] == ["paid"]
    assert await available(api, alice, wallets["alice"]) == before + 2_000 - 300


@pytest.fixture
def store(pool: AsyncConnectionPool[Any]) -> PaymentStore:
    return PaymentStore(pool)


async def committed_without_start(
    store: PaymentStore, ledger: LedgerStore, wallets: dict[str, str], amount: int
) -> StoredPayment:
    """What POST /v1/payments commits (alice to bob), with no start after it."""
    account = await ledger.get_account(wallets["alice"])
    assert account is not None and account.owner is not None
    payment, created = await store.create(
        NewPayment(
            id=new_id("pay"),
            kind="transfer",
            customer_id=account.owner,
            client_id=None,
            created_by=account.owner,
            amount=amount,
            currency=CURRENCY,
            source_account_id=wallets["alice"],
            destination_account_id=wallets["bob"],
            payment_method=None,
            payout_destination=None,
        ),
        scope=account.owner,
        key=f"no-start-{uuid.uuid4()}",
        request_hash="no-start",
    )
    assert created and payment.saga_started_at is None
    return payment


async def stamped(store: PaymentStore, payment_id: str) -> bool:
    row = await store.get(payment_id)
    assert row is not None
    return row.saga_started_at is not None


async def test_a_payment_whose_start_was_lost_is_started_by_the_sweep(
    api: httpx.AsyncClient,
    logins: Logins,
    wallets: dict[str, str],
    ledger: LedgerStore,
    store: PaymentStore,
    temporal: Client,
) -> None:
    """The API committed a payment and stopped before starting its saga: the row alone is
    the promise. The sweep starts the saga (once) and the money moves."""
    alice_h = logins.headers("alice")
    await top_up(api, logins, wallets["alice"], 2_000)
    before = await available(api, alice_h, wallets["alice"])
    stranded = await committed_without_start(store, ledger, wallets, 700)

    final = await wait_for(api, alice_h, stranded.id, timeout=60)
    assert final["status"] == "succeeded", final
    assert await available(api, alice_h, wallets["alice"]) == before - 700
    for _ in range(40):  # stamped by the sweep's next flush, a quarter second at most
        if await stamped(store, stranded.id):
            break
        await asyncio.sleep(0.05)
    assert await stamped(store, stranded.id)
    runs = [w async for w in temporal.list_workflows(f'WorkflowId = "{stranded.id}"')]
    assert len(runs) == 1


async def test_started_sagas_are_stamped_together_by_the_next_flush(
    api: httpx.AsyncClient,
    logins: Logins,
    wallets: dict[str, str],
    ledger: LedgerStore,
    store: PaymentStore,
    temporal: Client,
    settings: Settings,
) -> None:
    """A start writes nothing to its row; the flush stamps every row started since the
    last one with one statement."""
    alice_h = logins.headers("alice")
    await top_up(api, logins, wallets["alice"], 2_000)

    async def client() -> Client:
        return temporal

    starter = SagaStarter(
        store,
        client,
        task_queue=settings.task_queue,
        four_eyes_threshold_minor=settings.four_eyes_threshold_minor,
    )
    payments = [await committed_without_start(store, ledger, wallets, 300) for _ in range(3)]
    for payment in payments:
        assert await starter.start(payment)
    assert [await stamped(store, p.id) for p in payments] == [False, False, False]
    assert await starter.flush_stamps() == 3
    assert [await stamped(store, p.id) for p in payments] == [True, True, True]
    assert await starter.flush_stamps() == 0
    for payment in payments:
        final = await wait_for(api, alice_h, payment.id, timeout=60)
        assert final["status"] == "succeeded", final


async def test_a_start_the_sweep_could_not_make_does_not_hold_up_the_rest(
    api: httpx.AsyncClient,
    logins: Logins,
    wallets: dict[str, str],
    ledger: LedgerStore,
    store: PaymentStore,
    temporal: Client,
    settings: Settings,
) -> None:
    """The sweep used to stop at the first start that failed, so one row Temporal refused
    held up every stranded payment behind it on every pass."""
    await top_up(api, logins, wallets["alice"], 2_000)
    calls = 0

    async def refused_once() -> Client | None:
        nonlocal calls
        calls += 1
        return None if calls == 1 else temporal  # the first start cannot be made

    starter = SagaStarter(
        store,
        refused_once,
        task_queue=settings.task_queue,
        four_eyes_threshold_minor=settings.four_eyes_threshold_minor,
        grace=timedelta(0),  # before the stack's own sweep (5 s) looks at them
    )
    stranded = [await committed_without_start(store, ledger, wallets, 300) for _ in range(3)]
    assert await starter.sweep() >= 2
    for payment in stranded[1:]:
        await temporal.get_workflow_handle(payment.id).describe()  # started
    for payment in stranded:
        final = await wait_for(api, logins.headers("alice"), payment.id, timeout=60)
        assert final["status"] == "succeeded", final


async def test_a_finished_payment_whose_stamp_was_lost_is_not_started_again(
    pool: AsyncConnectionPool[Any],
    ledger: LedgerStore,
    store: PaymentStore,
    wallets: dict[str, str],
) -> None:
    """Its saga ran (the process died before the stamp was flushed): started again once
    Temporal has dropped the finished run, it would run the payment a second time."""
    payment = await committed_without_start(store, ledger, wallets, 100)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE payments SET status = 'declined', decline_code = 'insufficient_funds', "
            "completed_at = now() WHERE id = %s",
            (payment.id,),
        )
    stranded = await store.saga_not_started(older_than=timedelta(0), limit=1000)
    assert payment.id not in {p.id for p in stranded}


async def new_payer_paying_bob(
    accounts: AccountFactory, wallets: dict[str, str], amount: int
) -> tuple[Account, dict[str, Any]]:
    """A wallet of a customer of this test's own, funded with 10.00, and a transfer body
    from it to bob."""
    payer = await accounts.wallet(f"cus_{uuid.uuid4().hex[:12]}", CURRENCY)
    await accounts.fund(payer, 1_000)
    body = {
        "kind": "transfer",
        "source_account_id": payer.id,
        "destination_account_id": wallets["bob"],
        "amount": amount,
        "currency": CURRENCY,
    }
    return payer, body


async def test_a_retry_is_answered_with_its_payment_even_once_its_wallet_is_closed(
    api: httpx.AsyncClient,
    app_headers: dict[str, str],
    accounts: AccountFactory,
    ledger: LedgerStore,
    wallets: dict[str, str],
) -> None:
    """The key is looked up before a refusal is answered: a retry of a payment accepted
    before gets that payment, whatever its wallets are now; another request under the key
    is the key's 409, not the refusal."""
    payer, body = await new_payer_paying_bob(accounts, wallets, 400)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await api.post("/v1/payments", json=body, headers=app_headers | key)
    assert first.status_code == 202, first.text
    await wait_for(api, app_headers, first.json()["id"])
    await ledger.close_account(payer.id)

    again = await api.post("/v1/payments", json=body, headers=app_headers | key)
    assert (again.status_code, again.json()["id"]) == (202, first.json()["id"]), again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await api.post("/v1/payments", json={**body, "amount": 500}, headers=app_headers | key)
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_key_reused")
    fresh = await api.post(
        "/v1/payments", json=body, headers=app_headers | {"Idempotency-Key": str(uuid.uuid4())}
    )
    assert (fresh.status_code, fresh.json()["code"]) == (422, "account_closed")


async def test_an_app_sees_the_risk_score_its_customer_does_not(
    api: httpx.AsyncClient,
    app_headers: dict[str, str],
    accounts: AccountFactory,
    logins: Logins,
    wallets: dict[str, str],
) -> None:
    _, body = await new_payer_paying_bob(accounts, wallets, 300)
    started = await api.post(
        "/v1/payments", json=body, headers=app_headers | {"Idempotency-Key": str(uuid.uuid4())}
    )
    assert started.status_code == 202, started.text
    done = await wait_for(api, app_headers, started.json()["id"])
    risk = done["risk"]
    assert isinstance(risk["score"], float) and risk["model_version"].startswith("fraud-v1-")
    scored = next(e["detail"] for e in done["timeline"] if e["event"] == "risk_scored")
    assert scored.split(" ")[:2] == [risk["band"], str(risk["score"])], scored
