"""Group commit for the ledger: concurrent requests from one process share a round trip.

Callers hand in a request (a linked batch of transfers) and await its outcome. Flusher
tasks take whatever has queued up (up to ``max_group`` requests, never two with the same
first id) and send it to ``ledger_submit_group`` in one statement and one commit. Under
load, requests queue while a group is in flight, so groups grow exactly when it pays; a
lone request goes out alone at once. Each request keeps its own outcome: the database
falls back to answering requests one by one whenever the set-wise path meets anything
unusual (see migration 0004).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from models.errors import TransientError

RETRIES = 8
# Deadlock, serialization failure, and our own "the same id is being created right now".
RETRY_SQLSTATES = frozenset({"40P01", "40001", "BFC02"})

T = TypeVar("T")


class LedgerBusy(TransientError):
    """Still deadlocked or contended after every retry."""


async def with_retries(call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call``, retrying the transient database conflicts with jittered backoff.

    Safe because every ledger request is idempotent by its transfer ids.
    """
    for attempt in range(RETRIES):
        try:
            return await call()
        except psycopg.Error as exc:
            if exc.sqlstate not in RETRY_SQLSTATES:
                raise
        await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))  # noqa: S311
    raise LedgerBusy("the ledger stayed contended after retries")


_Pending = tuple[str, list[dict[str, Any]], "asyncio.Future[dict[str, Any]]"]


class GroupCommitter:
    def __init__(
        self, pool: AsyncConnectionPool, *, max_group: int = 64, flushers: int = 3
    ) -> None:
        self._pool = pool
        self._max_group = max_group
        self._flushers = flushers
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def submit(self, request: list[dict[str, Any]]) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((request[0]["id"], request, future))
        self._wake.set()
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._flush_forever()) for _ in range(self._flushers)
            ]
        return await future

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while self._queue:
            _, _, future = self._queue.popleft()
            if not future.done():
                future.set_exception(LedgerBusy("the ledger client was closed"))

    def _take_group(self) -> list[_Pending]:
        group: list[_Pending] = []
        seen: set[str] = set()
        kept: deque[_Pending] = deque()
        while self._queue and len(group) < self._max_group:
            item = self._queue.popleft()
            if item[2].done():
                # Its caller gave up waiting (an activity's timeout): sent later, the
                # request could land after the caller's retries ran out and the saga
                # compensated, a hold nobody voids.
                continue
            # The same id twice in one group would get one answer; the second waits a turn.
            (kept if item[0] in seen else group).append(item)
            seen.add(item[0])
        self._queue.extendleft(reversed(kept))
        return group

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            group = self._take_group()
            if not self._queue:
                self._wake.clear()
            if not group:
                continue
            try:
                outcomes = await with_retries(lambda group=group: self._send(group))  # type: ignore[misc]
            except Exception as exc:  # every waiter learns of it; none is left hanging
                for _, _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for first_id, _, future in group:
                if not future.done():
                    future.set_result(outcomes[first_id])

    async def _send(self, group: list[_Pending]) -> dict[str, Any]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT ledger_submit_group(%s)", (Jsonb([request for _, request, _ in group]),)
            )
            row = await cur.fetchone()
        outcomes: dict[str, Any] = row[0] if row else {}
        return outcomes
