"""Platform events in the ``events`` table (migration ``0005_webhooks``), on the async pool.

An event is stored once: its id is derived from what happened (``event_id``), so a retry
inserts nothing. Recording it also answers which endpoints of its app are enabled and
subscribed to its type, which is what delivery needs next.

Two writers:

- the payment saga's final write (``PaymentStore.record``) stores the terminal event in
  the transaction that finishes the payment row, so a finished payment always has its
  event and the worker makes one round of writes instead of two;
- the ``record_event`` activity (``EventLog.record``) for everything else that announces.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
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


class EventLog:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def record(self, event: PlatformEvent) -> list[str]:
        async with self._pool.connection() as conn, conn.transaction():
            return await record_event(conn, event)
