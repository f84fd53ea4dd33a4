"""The saga's final write: the payment row and its terminal event commit together.

A payment shown ``succeeded`` without its ``payment.succeeded`` event would never reach
the app's webhooks; an event without the row would announce what the API does not show.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from infra.payment_store import NewPayment, PaymentStore
from models.ids import new_id
from models.notifications import PlatformEvent, event_id, payment_data
from models.payment import PaymentRecord, TimelineEntry


async def _accepted(store: PaymentStore) -> str:
    payment, _ = await store.create(
        NewPayment(
            id=new_id("pay"),
            kind="transfer",
            customer_id="cus_record_test",
            client_id=None,
            created_by="cus_record_test",
            amount=1250,
            currency="EUR",
            source_account_id="acc_record_test_a",
            destination_account_id="acc_record_test_b",
            payment_method=None,
            payout_destination=None,
        ),
        scope="cus_record_test",
        key=f"record-{uuid.uuid4()}",
        request_hash="record-test",
    )
    return payment.id


def _finished(payment_id: str, *, event_id_override: str | None = None) -> PaymentRecord:
    event = PlatformEvent(
        id=event_id_override or event_id(payment_id, "payment.succeeded"),
        type="payment.succeeded",
        created_at="2026-11-26T12:00:00+00:00",
        client_id=None,
        customer_id="cus_record_test",
        data=payment_data(
            payment_id=payment_id,
            kind="transfer",
            amount=1250,
            currency="EUR",
            status="succeeded",
            decline_code=None,
        ),
    )
    return PaymentRecord(
        payment_id=payment_id,
        status="succeeded",
        decline_code=None,
        risk=None,
        review_id=None,
        gateway_reference=None,
        captured_amount=1250,
        timeline=[TimelineEntry("2026-11-26T12:00:00+00:00", "succeeded")],
        event=event,
    )


async def _event_count(pool: AsyncConnectionPool[Any], payment_id: str) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM events WHERE data->>'id' = %s", (payment_id,)
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_the_final_row_and_its_event_are_written_once(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = PaymentStore(pool)
    payment_id = await _accepted(store)
    assert await store.record(_finished(payment_id)) == []  # no app: no endpoints
    assert await store.record(_finished(payment_id)) == []  # a retry: nothing new
    row = await store.get(payment_id)
    assert row is not None and row.status == "succeeded" and row.completed_at is not None
    assert await _event_count(pool, payment_id) == 1


async def test_an_event_that_cannot_be_stored_leaves_the_payment_unfinished(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = PaymentStore(pool)
    payment_id = await _accepted(store)
    broken = _finished(payment_id, event_id_override="evt_" + "x" * 200)  # over the column
    with pytest.raises(Exception, match="too long"):
        await store.record(broken)
    row = await store.get(payment_id)
    assert row is not None and row.status == "processing" and row.completed_at is None
    assert await _event_count(pool, payment_id) == 0
    # The retry with a storable event finishes it.
    await store.record(_finished(payment_id))
    row = await store.get(payment_id)
    assert row is not None and row.status == "succeeded"


@pytest.mark.parametrize("owner", ["customer_id", "client_id"])
async def test_a_page_of_the_list_is_read_in_index_order_not_sorted(
    pool: AsyncConnectionPool[Any], owner: str
) -> None:
    """GET /v1/payments reads newest first by id within a customer or an app: an index in
    that order, or every page sorts the owner's whole history."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")  # the plan as on a big table
        cur = await conn.execute(
            f"EXPLAIN (FORMAT JSON) SELECT id FROM payments WHERE {owner} = 'x' "  # noqa: S608 - a column name of this test
            "AND id < 'pay_z' ORDER BY id DESC LIMIT 21"
        )
        row = await cur.fetchone()
    assert row is not None
    plan = str(row[0])
    assert "'Sort'" not in plan, plan
    assert "payments_by_" in plan, plan
