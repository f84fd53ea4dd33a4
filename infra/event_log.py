"""Platform events in the ``events`` table (migration ``0005_webhooks``), on the async pool.

An event is stored once: its id is derived from what happened (``event_id``), so a retry
inserts nothing. Recording it also answers which endpoints of its app are enabled and
subscribed to its type, which is what delivery needs next.

Two writers:

- the payment saga's final write (``PaymentStore.record``) stores the terminal event in
  the transaction that finishes the payment row, so a finished payment always has its
  event and the worker makes one round of writes instead of two;
- the ``record_event`` activity (``EventLog.record``) for everything else that announces.

One reader: the API's ``GET /v1/events`` (``EventLog.page``, ``EventLog.find``), where an app
reads back its own events, e.g. those no endpoint of it accepted while its receiver was down
or its endpoint disabled. What it reads is the webhook's body, field for field.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from models.notifications import PlatformEvent


async def record_event(conn: AsyncConnection[Any], event: PlatformEvent) -> list[str]:
    """Store ``event`` once on ``conn`` (the caller's transaction); its endpoint ids."""
    await conn.execute(
        "INSERT INTO events (id, type, client_id, customer_id, data, created_at) "
        "VALUES (%(id)s, %(type)s, %(client)s, %(customer)s, %(data)s, %(created_at)s) "
        "ON CONFLICT (id) DO NOTHING",
        {
            "id": event.id,
            "type": event.type,
            "client": event.client_id,
            "customer": event.customer_id,
            "data": Jsonb(event.data),
            "created_at": datetime.fromisoformat(event.created_at),
        },
    )
    if event.client_id is None:
        return []
    cur = await conn.execute(
        "SELECT id FROM webhook_endpoints WHERE client_id = %(client)s AND enabled "
        "AND deleted_at IS NULL AND event_types @> ARRAY[%(type)s]::text[] ORDER BY id",
        {"client": event.client_id, "type": event.type},
    )
    return [str(row[0]) for row in await cur.fetchall()]


_EVENT_COLUMNS = "e.id, e.type, e.created_at, e.client_id, e.customer_id, e.data"
# An endpoint accepted the event: one of its attempts got a 2xx.
_ACCEPTED = (
    "EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id "
    "AND d.status_code BETWEEN 200 AND 299)"
)


def event_from_row(row: Mapping[Any, Any]) -> PlatformEvent:
    """An ``events`` row as the event: stored as timestamptz, ``created_at`` read back in
    UTC is the ISO text the webhook carried."""
    return PlatformEvent(
        id=row["id"],
        type=row["type"],
        created_at=row["created_at"].astimezone(UTC).isoformat(),
        client_id=row["client_id"],
        customer_id=row["customer_id"],
        data=row["data"],
    )


class EventLog:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def record(self, event: PlatformEvent) -> list[str]:
        async with self._pool.connection() as conn, conn.transaction():
            return await record_event(conn, event)

    async def find(self, *, client_id: str, event_id: str) -> PlatformEvent | None:
        """The app's event ``event_id``; None when there is none or it is another app's."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events e WHERE e.id = %s AND e.client_id = %s",  # noqa: S608 - constant column list
                [event_id, client_id],
            )
            row = await cur.fetchone()
        return None if row is None else event_from_row(row)

    async def page(
        self,
        *,
        client_id: str,
        event_type: str | None = None,
        created_gte: datetime | None = None,
        delivered: bool | None = None,
        before: str | None = None,
        limit: int = 20,
    ) -> list[PlatformEvent]:
        """The app's events, newest first (``created_at``, then id). ``before`` is the id of
        the last event of the previous page; ``delivered`` keeps only events that an endpoint
        accepted (True) or that none did (False)."""
        where: list[str] = ["e.client_id = %s"]
        params: list[Any] = [client_id]
        if event_type is not None:
            where.append("e.type = %s")
            params.append(event_type)
        if created_gte is not None:
            where.append("e.created_at >= %s")
            params.append(created_gte)
        if delivered is not None:
            where.append(_ACCEPTED if delivered else f"NOT {_ACCEPTED}")
        if before is not None:
            # A cursor that is not one of the app's events ends the list.
            where.append(
                "(e.created_at, e.id) < (SELECT c.created_at, c.id FROM events c "
                "WHERE c.id = %s AND c.client_id = %s)"
            )
            params.extend([before, client_id])
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events e WHERE {' AND '.join(where)} "  # noqa: S608 - constant clauses, values bound
                "ORDER BY e.created_at DESC, e.id DESC LIMIT %s",
                [*params, limit],
            )
            return [event_from_row(row) for row in await cur.fetchall()]
