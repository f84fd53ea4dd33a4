"""Asking a running workflow something, within a bound.

A query or an update is answered by a worker. When none answers (the worker is down or
restarting, or all its workflow-task slots are busy), Temporal holds the call: a query
for about 30 s, an update for as long as the client keeps asking. A request of ours waits
at most:

- ``LIVE_VIEW_TIMEOUT`` for a read that has the database's view to fall back on (a
  payment's or an application's status and timeline): the row is answered instead;
- ``ANSWER_TIMEOUT`` for a read with no other source (a review case) and for a change (a
  cancel, a decision): then ``503 workflow_unavailable`` with ``Retry-After``. An update
  that timed out may still be applied once a worker takes it; the problem says so, and
  the resource's own state (GET) tells which.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import (
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError, RPCStatusCode

from api.errors import ProblemError, unavailable

T = TypeVar("T")

LIVE_VIEW_TIMEOUT = timedelta(seconds=1)
ANSWER_TIMEOUT = timedelta(seconds=5)


def workflow_unavailable(change: bool) -> ProblemError:
    detail = (
        "the change may still be applied when it answers: read the resource to see, or "
        "send the request again"
        if change
        else "ask again shortly"
    )
    return unavailable("workflow_unavailable", "The workflow did not answer in time", detail)


async def live_view(handle: WorkflowHandle[Any, Any], query: str, result_type: type[T]) -> T | None:
    """The workflow's own view, or None when it does not answer promptly (or at all)."""
    try:
        answer: T = await handle.query(
            query, result_type=result_type, rpc_timeout=LIVE_VIEW_TIMEOUT
        )
    except (RPCError, WorkflowQueryFailedError):
        return None
    return answer


async def ask(handle: WorkflowHandle[Any, Any], query: str, result_type: type[T]) -> T:
    """A query whose answer has no other source: 503 when no worker answers in time."""
    try:
        answer: T = await handle.query(query, result_type=result_type, rpc_timeout=ANSWER_TIMEOUT)
    except RPCError as exc:
        # The client's own deadline ends the call as CANCELLED ("Timeout expired").
        if exc.status in {RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED}:
            raise workflow_unavailable(change=False) from exc
        raise
    return answer


async def update(
    handle: WorkflowHandle[Any, Any],
    name: str,
    arg: object = None,
    *,
    result_type: type[T],
    update_id: str | None = None,
) -> T:
    """An update, waited for until it completes or ``ANSWER_TIMEOUT`` passes (then 503).
    Failures of the update itself (``WorkflowUpdateFailedError``) and RPC errors (the
    workflow is gone) reach the caller as they are."""
    args = [] if arg is None else [arg]
    try:
        # The SDK asks again and again until a worker accepts: only an outer bound ends it.
        async with asyncio.timeout(ANSWER_TIMEOUT.total_seconds()):
            result: T = await handle.execute_update(
                name, args=args, id=update_id, result_type=result_type
            )
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
        raise workflow_unavailable(change=True) from exc
    return result
