"""Starting each accepted payment's saga, once, whatever stops in between.

``POST /v1/payments`` answers as soon as the payment row and its idempotency key are
committed: that row is the platform's promise. The ``PaymentWorkflow`` is started right
after, off the request (``submit``). Starting it inside the request made every
acknowledgement wait for a Temporal write, which under load was most of the answer's time
(p50 37 ms, p99 400 ms at 35 payments/s on the dev server), and made an unreachable
Temporal refuse payments outright.

A started saga's row is stamped ``saga_started_at``. Stamps are written together every
quarter second (``flush_stamps``): one UPDATE and one commit for all the payments started
meanwhile, instead of one each.

What can go wrong between the commit and the start, and what picks it up:

- the API process stops (crash, deploy): the row stays unstamped;
- Temporal is unreachable or slow: the start fails and is not retried in place;
- more starts are in flight than ``max_in_flight``: the rest wait.

The sweep (``sweep_forever``, one per API process) starts every row left unstamped for
``grace`` seconds, oldest first. A start is idempotent: the workflow id is the payment id,
a second start finds the running (or finished) workflow, so two API processes sweeping
the same row start one saga, and a stamp lost with its process only makes the sweep start
that saga again, to find it started.

Refunds take the same road (``start_refund``): the reservation row committed by
``POST /v1/payments/{id}/refunds`` is the promise, the ``RefundWorkflow`` (id = the refund
id) is started right after within the request and the row stamped at once (refunds are
few; no batching), and the sweep starts a pending refund left unstamped. Without it, a
refund reserved while Temporal was away stayed ``pending`` for good, its amount reserved
against the payment and never given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, timedelta
from functools import partial
from typing import Any, cast

from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from infra.payment_store import PaymentStore, StoredPayment, StoredRefund
from models.payment import (
    GATEWAY_CLEARING,
    PAYMENT_WORKFLOW,
    REFUND_WORKFLOW,
    PaymentInput,
    PaymentKind,
    RefundInput,
    platform_account_id,
)

log = logging.getLogger(__name__)
# Starts the sweep lets fail one after another before it leaves the rest to its next pass.
SWEEP_FAILURES_IN_A_ROW = 3


def payment_search_attributes(
    *, status: str, kind: str, customer_id: str, amount: int, currency: str
) -> TypedSearchAttributes:
    """What operators find a payment by in the Web UI: ids, codes and amounts only."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(SearchAttributeKey.for_keyword("PaymentStatus"), status),
            SearchAttributePair(SearchAttributeKey.for_keyword("PaymentKind"), kind),
            SearchAttributePair(SearchAttributeKey.for_keyword("CustomerId"), customer_id),
            SearchAttributePair(SearchAttributeKey.for_int("AmountMinor"), amount),
            SearchAttributePair(SearchAttributeKey.for_keyword("Currency"), currency),
        ]
    )


async def start_once(
    client: Client,
    workflow: str,
    arg: object,
    *,
    id: str,
    task_queue: str,
    search_attributes: TypedSearchAttributes,
) -> None:
    """Start the workflow under ``id`` unless it was started before: running (a retry,
    another process's sweep) or finished, it is the same one, never run again."""
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(
            workflow,
            arg,
            id=id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=search_attributes,
        )


async def call_or_leave(
    temporal: Callable[[], Awaitable[Client | None]],
    call: Callable[[Client], Awaitable[None]],
    what: str,
) -> bool:
    """Run ``call`` (a start, a signal) with the process's Temporal client. False when
    Temporal could not be reached (no client, or the call failed), which leaves ``what``
    to the sweep."""
    client = await temporal()
    if client is None:
        return False
    try:
        await call(client)
    except RPCError as exc:
        log.warning("%s: Temporal call failed, left to the sweep: %s", what, exc)
        return False
    return True


class SagaStarter:
    """Starts payments' workflows for one API process (module docstring)."""

    def __init__(
        self,
        store: PaymentStore,
        temporal: Callable[[], Awaitable[Client | None]],
        *,
        task_queue: str,
        four_eyes_threshold_minor: int,
        grace: timedelta = timedelta(seconds=5),
        sweep_every: float = 2.0,
        stamp_every: float = 0.25,
        max_in_flight: int = 64,
        also_sweep: Sequence[Callable[[], Awaitable[int]]] = (),
    ) -> None:
        self._store = store
        self._temporal = temporal
        self._task_queue = task_queue
        self._four_eyes = four_eyes_threshold_minor
        self._grace = grace
        self._sweep_every = sweep_every
        self._stamp_every = stamp_every
        self._max_in_flight = max_in_flight
        self._also_sweep = also_sweep  # other promises' sweeps (onboarding), in this loop
        self._in_flight: set[asyncio.Task[bool]] = set()
        self._unstamped: list[str] = []  # started, not yet stamped
        self._stopping = asyncio.Event()

    def submit(self, payment: StoredPayment) -> None:
        """Start the saga soon, without waiting; with too many starts under way, the sweep
        will (a slow Temporal must not pile up tasks in the API without bound)."""
        if payment.saga_started_at is not None or len(self._in_flight) >= self._max_in_flight:
            return
        task = asyncio.get_running_loop().create_task(self.start(payment))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def start(self, payment: StoredPayment) -> bool:
        """Start the saga (or find it started); the row is stamped with the next flush.
        False if Temporal could not be reached, which leaves the row to the sweep."""
        started = await call_or_leave(
            self._temporal,
            lambda client: self._start_workflow(client, payment),
            f"payment {payment.id}",
        )
        if started:
            self._unstamped.append(payment.id)
        return started

    async def flush_stamps(self) -> int:
        """Stamp the rows of the sagas started since the last flush; how many. On a
        failure they stay for the next flush."""
        ids, self._unstamped = self._unstamped, []
        if not ids:
            return 0
        try:
            await self._store.mark_sagas_started(ids)
        except BaseException:
            self._unstamped.extend(ids)
            raise
        return len(ids)

    async def _start_workflow(self, client: Client, payment: StoredPayment) -> None:
        request = PaymentInput(
            payment_id=payment.id,
            kind=cast(PaymentKind, payment.kind),  # the table's CHECK allows only kinds
            customer_id=payment.customer_id,
            client_id=payment.client_id,
            amount=payment.amount,
            currency=payment.currency,
            source_account_id=payment.source_account_id,
            destination_account_id=payment.destination_account_id,
            payment_method=payment.payment_method,
            payout_destination=payment.payout_destination,
            created_at=payment.created_at.astimezone(UTC).isoformat(),
            four_eyes_threshold_minor=self._four_eyes,
            beneficiary_id=payment.beneficiary_id,
        )
        await start_once(
            client,
            PAYMENT_WORKFLOW,
            request,
            id=payment.id,
            task_queue=self._task_queue,
            search_attributes=payment_search_attributes(
                status="processing",
                kind=payment.kind,
                customer_id=payment.customer_id,
                amount=payment.amount,
                currency=payment.currency,
            ),
        )

    async def start_refund(self, payment: StoredPayment, refund: StoredRefund) -> bool:
        """Start the refund's workflow (or find it started) and stamp its row. False if
        Temporal could not be reached, which leaves the refund to the sweep."""
        started = await call_or_leave(
            self._temporal,
            lambda client: _start_refund_workflow(client, payment, refund, self._task_queue),
            f"refund {refund.id}",
        )
        if started:
            await self._store.mark_refund_started(refund.id)
        return started

    async def sweep(self, limit: int = 100) -> int:
        """Start the payments and refunds (and ``also_sweep``'s) left unstarted past the
        grace period; how many it started."""
        payments = await self._store.saga_not_started(older_than=self._grace, limit=limit)
        refunds = await self._store.refunds_not_started(older_than=self._grace, limit=limit)
        starts = [(f"payment {p.id}", partial(self.start, p)) for p in payments]
        starts += [(f"refund {r.id}", partial(self.start_refund, p, r)) for p, r in refunds]
        started = failed = 0
        for what, start in starts:
            if await start():
                log.info("%s: saga started by the sweep", what)
                started, failed = started + 1, 0
                continue
            # One row Temporal refuses must not hold up every one behind it; several in a
            # row is Temporal away, and the next sweep tries again.
            failed += 1
            if failed >= SWEEP_FAILURES_IN_A_ROW:
                return started
        for other in self._also_sweep:
            started += await other()
        return started

    async def sweep_forever(self) -> None:
        """Flush the stamps every ``stamp_every`` seconds and sweep every ``sweep_every``
        until ``stop``. Stopping is an event, not a task cancellation: a cancellation that
        lands inside the connection pool's wait can come out as an ordinary error, which
        this loop would log and carry on from."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while not self._stopping.is_set():
            try:
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + self._sweep_every
                    await self.sweep()
                await self.flush_stamps()
            except Exception:  # a database hiccup must not end the sweep for good
                if self._stopping.is_set():
                    break
                log.exception("payment start sweep failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._stamp_every)

    async def stop(self, sweeper: asyncio.Task[None], timeout: float = 5.0) -> None:
        """On shutdown: end the sweep, let the starts under way finish (for up to
        ``timeout`` seconds each) and stamp them; whatever is left is the next sweep's, in
        any process."""
        self._stopping.set()
        await _settle({sweeper}, timeout)
        await _settle(set(self._in_flight), timeout)
        try:
            await asyncio.wait_for(self.flush_stamps(), timeout)
        except Exception:  # the sweep will start these again and find them started
            log.exception("stamping %d started payments failed", len(self._unstamped))


async def _start_refund_workflow(
    client: Client, payment: StoredPayment, refund: StoredRefund, task_queue: str
) -> None:
    # The money goes back the way it came: out of the wallet that received it.
    destination = payment.destination_account_id or ""  # both kinds have one (table CHECK)
    if payment.kind == "topup":
        debit, credit = destination, platform_account_id(GATEWAY_CLEARING, payment.currency)
    else:
        debit, credit = destination, payment.source_account_id or ""
    await start_once(
        client,
        REFUND_WORKFLOW,
        RefundInput(
            refund_id=refund.id,
            payment_id=payment.id,
            kind=cast(PaymentKind, payment.kind),  # the table's CHECK allows only kinds
            customer_id=payment.customer_id,
            client_id=payment.client_id,
            amount=refund.amount,
            currency=payment.currency,
            debit_account_id=debit,
            credit_account_id=credit,
            gateway_reference=payment.gateway_reference if payment.kind == "topup" else None,
        ),
        id=refund.id,
        task_queue=task_queue,
        search_attributes=payment_search_attributes(
            status=payment.status,
            kind="refund",
            customer_id=payment.customer_id,
            amount=refund.amount,
            currency=payment.currency,
        ),
    )


async def _settle(tasks: set[asyncio.Task[Any]], timeout: float) -> None:
    """Wait up to ``timeout`` for the tasks, then cancel what is still running."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
