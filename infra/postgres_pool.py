"""PostgreSQL connections for the API and the worker: what a database restart costs them.

A restart of PostgreSQL (a crash, a failover, a minor-version upgrade) leaves every idle
pooled connection dead, and the pool learns of each one only when a caller uses it: after a
restart, as many requests failed as the pool held idle connections, one after another.
Checking every connection before handing it out would cost a round trip on every use.
Instead, the first connection that comes back broken makes ``PostgresPool`` check all its
idle ones at once (``check()``: one empty query each, dead ones replaced), so the restart
reaches the few callers that were using a connection at that moment, not every caller after
it.

While the database is away, a caller waits for a connection for at most ``timeout``
seconds and then gets ``PoolTimeout``. A pool made with ``outage_timeout`` (the API's)
answers sooner: once a connection came back broken, each caller first tries a connection
of its own to the server (for at most ``outage_timeout``); refused, it gets
``PoolTimeout`` at once; accepted, the server is back, and callers wait for the pool as
usual again (its reconnection after a restart can take a few seconds, which a caller
should wait out, not be refused for). The worker keeps the full wait: its activities retry
on their own, and a shorter wait would only spend their attempts sooner.

``DATABASE_UNAVAILABLE`` names the exceptions that mean "the database cannot answer right
now" on either of our paths (psycopg's pool and SQLAlchemy's engine); what the API answers
to them is in ``api/errors.py``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import sqlalchemy.exc
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

log = logging.getLogger(__name__)

DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,  # includes psycopg_pool.PoolTimeout
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.TimeoutError,
)


class PostgresPool(AsyncConnectionPool[AsyncConnection[Any]]):
    """An ``AsyncConnectionPool`` that checks its idle connections as soon as one of its
    connections is returned broken (module docstring)."""

    def __init__(
        self, conninfo: str, *, outage_timeout: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(conninfo, **kwargs)
        self._checking: asyncio.Task[None] | None = None
        self._outage_timeout = outage_timeout
        self._away = False  # a connection came back broken; cleared when the server answers

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[Any]:
        if self._away and self._outage_timeout is not None and not await self._server_answers():
            raise PoolTimeout("the database does not accept connections")
        return await super().getconn(timeout)

    async def _server_answers(self) -> bool:
        assert self._outage_timeout is not None  # noqa: S101 - getconn checked it
        try:
            probe = await asyncio.wait_for(
                AsyncConnection.connect(str(self.conninfo), autocommit=True),
                self._outage_timeout,
            )
        except (psycopg.OperationalError, TimeoutError):
            return False
        await probe.close()
        self._away = False
        return True

    async def putconn(self, conn: AsyncConnection[Any]) -> None:
        broken = conn.broken
        if broken:
            self._away = True
        await super().putconn(conn)
        if broken and (self._checking is None or self._checking.done()):
            log.warning("a database connection broke: checking the idle ones")
            self._checking = asyncio.get_running_loop().create_task(self._check_idle())

    async def _check_idle(self) -> None:
        try:
            await self.check()
        except Exception:  # a failed check leaves the old behaviour, one caller per dead one
            log.exception("checking the pool's idle connections failed")

    async def close(self, timeout: float = 5.0) -> None:
        if self._checking is not None and not self._checking.done():
            self._checking.cancel()
            await asyncio.gather(self._checking, return_exceptions=True)
        await super().close(timeout)
