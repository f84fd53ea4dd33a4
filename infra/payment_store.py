"""The payments table: what the API accepted, what the saga recorded, what the risk score counts.

Idempotency: a payment request is keyed by ``(scope, Idempotency-Key)`` where the scope is
the caller. The payment row and its key row are written in one transaction; a concurrent
duplicate waits on the key's primary key and then finds the first request's payment, so 50
identical POSTs make one payment. The same key with another body is refused.

Refunds are reserved under a row lock on the payment: the sum of refunds that have not
failed never exceeds the captured amount, however many arrive at once. A refund's key is
the caller's across payments, so that lock does not cover it: two refunds under one key on
two payments both find it free, and the later INSERT meets the key's unique constraint. That
one looks the key up again once the winner has committed (``reserve_refund``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from infra.audit import add_audit_event
from infra.event_log import record_event
from models.errors import BusinessRuleError
from models.payment import PaymentRecord, RefundOutcome, RefundRecord


class IdempotencyKeyReused(BusinessRuleError):
    code = "idempotency_key_reused"
    status = 409


class RefundExceedsCapture(BusinessRuleError):
    code = "refund_exceeds_capture"
    status = 409


class PaymentNotRefundable(BusinessRuleError):
    code = "payment_not_refundable"
    status = 409


@dataclass(frozen=True)
class NewPayment:
    id: str
    kind: str
    customer_id: str
    client_id: str | None
    created_by: str
    amount: int
    currency: str
    source_account_id: str | None
    destination_account_id: str | None
    payment_method: str | None
    payout_destination: str | None
    # transfer: the customer whose wallet receives it (never the case's officer)
    beneficiary_id: str | None = None


@dataclass(frozen=True)
class StoredPayment:
    id: str
    kind: str
    status: str
    customer_id: str
    client_id: str | None
    created_by: str
    amount: int
    currency: str
    source_account_id: str | None
    destination_account_id: str | None
    payment_method: str | None
    payout_destination: str | None
    decline_code: str | None
    risk_band: str | None
    risk_score: float | None
    risk_reasons: list[str] | None
    model_version: str | None
    review_id: str | None
    gateway_reference: str | None
    captured_amount: int
    refunded_amount: int
    timeline: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    saga_started_at: datetime | None = None  # None: accepted, its workflow not started yet
    beneficiary_id: str | None = None


@dataclass(frozen=True)
class StoredRefund:
    id: str
    payment_id: str
    amount: int
    status: str
    failure_code: str | None
    gateway_reference: str | None
    created_by: str
    created_at: datetime
    completed_at: datetime | None
    saga_started_at: datetime | None


@dataclass(frozen=True)
class RiskHistory:
    """The customer's recent payments as the risk rules count them (this one excluded)."""

    payments_last_hour: int
    amount_last_24h: int
    known_beneficiary: bool
    first_payment_at: datetime | None


_PAYMENT_COLUMNS = ", ".join(StoredPayment.__dataclass_fields__)
_PREFIXED_COLUMNS = ", ".join(f"p.{c}" for c in StoredPayment.__dataclass_fields__)
_REFUND_COLUMNS = (
    "id, payment_id, amount, status, failure_code, gateway_reference, created_by, "
    "created_at, completed_at, saga_started_at"
)
# UNIQUE (scope, idempotency_key) of payment_refunds (migration 0004).
_REFUND_KEY_CONSTRAINT = "payment_refunds_scope_idempotency_key_key"
# Attempts that moved no money do not count toward limits and velocity.
_COUNTED = "status NOT IN ('declined', 'failed', 'canceled')"


class PaymentStore:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def create(
        self, payment: NewPayment, *, scope: str, key: str, request_hash: str
    ) -> tuple[StoredPayment, bool]:
        """The payment for this key: newly created (True) or the one a retry refers to."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            # One statement, so one round trip and all or nothing: the key is claimed and
            # the payment inserted only if the key was free. A concurrent request with the
            # same key waits on the key's index entry and then inserts nothing. (The
            # foreign key from the request to the payment is checked at the statement's end.)
            await cur.execute(
                "WITH claimed AS ("  # noqa: S608 - constant column lists
                " INSERT INTO payment_requests (scope, idempotency_key, request_hash, "
                " payment_id) VALUES (%(scope)s, %(key)s, %(request_hash)s, %(id)s) "
                " ON CONFLICT DO NOTHING RETURNING payment_id) "
                "INSERT INTO payments (id, kind, status, customer_id, client_id, "
                "created_by, amount, currency, source_account_id, "
                "destination_account_id, payment_method, payout_destination, beneficiary_id) "
                "SELECT %(id)s, %(kind)s, 'processing', %(customer_id)s, %(client_id)s, "
                "%(created_by)s, %(amount)s, %(currency)s, %(source_account_id)s, "
                "%(destination_account_id)s, %(payment_method)s, %(payout_destination)s, "
                "%(beneficiary_id)s "
                f"FROM claimed RETURNING {_PAYMENT_COLUMNS}",
                {**asdict(payment), "scope": scope, "key": key, "request_hash": request_hash},
            )
            created = await cur.fetchone()
            if created is not None:
                return StoredPayment(**created), True
            existing = await self._existing(conn, scope, key, request_hash)
            if existing is None:  # keys are never deleted; the conflicting row must be there
                raise RuntimeError(f"idempotency key of {scope} vanished")
            return existing, False

    async def answered(self, *, scope: str, key: str, request_hash: str) -> StoredPayment | None:
        """The payment a used key answered with; None for a key not used yet;
        ``IdempotencyKeyReused`` when it was used for another request."""
        async with self._pool.connection() as conn:
            return await self._existing(conn, scope, key, request_hash)

    async def _existing(
        self, conn: AsyncConnection[Any], scope: str, key: str, request_hash: str
    ) -> StoredPayment | None:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT r.request_hash, {_PREFIXED_COLUMNS} "  # noqa: S608 - constant columns
            "FROM payment_requests r JOIN payments p ON p.id = r.payment_id "
            "WHERE r.scope = %s AND r.idempotency_key = %s",
            (scope, key),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        if row.pop("request_hash") != request_hash:
            raise IdempotencyKeyReused("this Idempotency-Key was used for another request")
        return StoredPayment(**row)

    async def mark_sagas_started(self, payment_ids: Sequence[str]) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE payments SET saga_started_at = now() "
                "WHERE id = ANY(%s) AND saga_started_at IS NULL",
                (list(payment_ids),),
            )

    async def saga_not_started(self, *, older_than: timedelta, limit: int) -> list[StoredPayment]:
        """Accepted payments whose workflow was not started within ``older_than``, oldest
        first (the partial index ``payments_saga_not_started`` serves this)."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_PAYMENT_COLUMNS} FROM payments "  # noqa: S608 - constant column lists
                # A finished payment's saga ran, whatever its stamp: one lost (the process
                # died before its stamps were flushed) must not start it again, which
                # Temporal refuses only while it still keeps the finished run.
                "WHERE saga_started_at IS NULL AND status IN ('processing', 'in_review') "
                "AND created_at < now() - %s ORDER BY created_at LIMIT %s",
                (older_than, limit),
            )
            rows = await cur.fetchall()
        return [StoredPayment(**row) for row in rows]

    async def mark_refund_started(self, refund_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE payment_refunds SET saga_started_at = now() "
                "WHERE id = %s AND saga_started_at IS NULL",
                (refund_id,),
            )

    async def refunds_not_started(
        self, *, older_than: timedelta, limit: int
    ) -> list[tuple[StoredPayment, StoredRefund]]:
        """Reserved refunds whose workflow was not started within ``older_than``, oldest
        first, each with its payment (the partial index ``payment_refunds_saga_not_started``
        serves this). Only pending ones: a finished refund was started, whatever its stamp."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_REFUND_COLUMNS} FROM payment_refunds "  # noqa: S608 - constant column lists
                "WHERE saga_started_at IS NULL AND status = 'pending' "
                "AND created_at < now() - %s ORDER BY created_at LIMIT %s",
                (older_than, limit),
            )
            refunds = [StoredRefund(**row) for row in await cur.fetchall()]
            if not refunds:
                return []
            await cur.execute(
                f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id = ANY(%s)",  # noqa: S608 - constant column lists
                ([r.payment_id for r in refunds],),
            )
            payments = {row["id"]: StoredPayment(**row) for row in await cur.fetchall()}
        return [(payments[r.payment_id], r) for r in refunds]

    async def get(self, payment_id: str) -> StoredPayment | None:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id = %s",  # noqa: S608 - constant column lists
                (payment_id,),
            )
            row = await cur.fetchone()
        return StoredPayment(**row) if row else None

    async def list_payments(
        self,
        *,
        customer_id: str | None = None,
        client_id: str | None = None,
        status: str | None = None,
        kind: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[StoredPayment]:
        """Newest first; ``before`` is the id of the last payment of the previous page
        (ids sort by creation time)."""
        where, params = [], []
        for column, value in (
            ("customer_id", customer_id),
            ("client_id", client_id),
            ("status", status),
            ("kind", kind),
        ):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        if before is not None:
            where.append("id < %s")
            params.append(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_PAYMENT_COLUMNS} FROM payments {clause} ORDER BY id DESC LIMIT %s",  # noqa: S608 - constant column lists
                [*params, limit],
            )
            return [StoredPayment(**row) for row in await cur.fetchall()]

    async def record(self, record: PaymentRecord) -> list[str]:
        """The saga's state, and its terminal event in the same transaction when the record
        carries one; the ids of the endpoints that want the event (none without one). A
        terminal row is never moved by a late or repeated write: only refunds
        (``record_refund``) change a finished payment."""
        risk = record.risk
        # Pipelined: the row, the event and the endpoints' answer travel in one round trip,
        # and COMMIT in a second, instead of one each (the saga's last write, per payment).
        async with self._pool.connection() as conn, conn.pipeline(), conn.transaction():
            await conn.execute(
                "UPDATE payments SET status = %(status)s, decline_code = %(decline_code)s, "
                "risk_band = %(band)s, risk_score = %(score)s, risk_reasons = %(reasons)s, "
                "model_version = %(model)s, review_id = %(review_id)s, "
                "gateway_reference = %(gateway_reference)s, "
                "captured_amount = %(captured)s, timeline = %(timeline)s, updated_at = now(), "
                "completed_at = CASE WHEN %(status)s IN ('succeeded', 'declined', 'failed', "
                "'canceled') THEN now() END "
                "WHERE id = %(id)s AND status IN ('processing', 'in_review')",
                {
                    "id": record.payment_id,
                    "status": record.status,
                    "decline_code": record.decline_code,
                    "band": risk.band if risk else None,
                    "score": risk.score if risk else None,
                    "reasons": risk.reasons if risk else None,
                    "model": risk.model_version if risk else None,
                    "review_id": record.review_id,
                    "gateway_reference": record.gateway_reference,
                    "captured": record.captured_amount,
                    "timeline": Jsonb([asdict(entry) for entry in record.timeline]),
                },
            )
            if record.event is None:
                return []
            return await record_event(conn, record.event)

    async def risk_history(
        self, *, customer_id: str, currency: str, beneficiary: str | None, payment_id: str,
        at: datetime,
    ) -> RiskHistory:  # fmt: skip
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT "  # noqa: S608 - constant column lists
                f"  count(*) FILTER (WHERE created_at > %(hour)s AND {_COUNTED}) AS last_hour, "
                "   coalesce(sum(amount) FILTER (WHERE created_at > %(day)s AND "
                f"    currency = %(currency)s AND {_COUNTED}), 0) AS last_day, "
                "   coalesce(bool_or(status = 'succeeded' AND (destination_account_id = %(b)s "
                "    OR payout_destination = %(b)s)), false) AS known, "
                "   min(created_at) AS first_at "
                "FROM payments WHERE customer_id = %(customer)s AND id <> %(id)s "
                "AND created_at <= %(at)s",
                {
                    "hour": at - timedelta(hours=1),
                    "day": at - timedelta(days=1),
                    "currency": currency,
                    "b": beneficiary,
                    "customer": customer_id,
                    "id": payment_id,
                    "at": at,
                },
            )
            row = _row(await cur.fetchone())
        return RiskHistory(
            payments_last_hour=row["last_hour"],
            amount_last_24h=int(row["last_day"]),
            known_beneficiary=row["known"],
            first_payment_at=row["first_at"],
        )

    async def reserve_refund(
        self,
        *,
        refund_id: str,
        payment_id: str,
        amount: int | None,
        scope: str,
        key: str,
        request_hash: str,
        created_by: str,
    ) -> tuple[StoredRefund, bool]:
        """Reserve ``amount`` (None: all that is left) of the captured money for a refund,
        or find the refund a retry of the same request made. Raises when the payment cannot
        give that much back."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(
                    "SELECT status, captured_amount FROM payments WHERE id = %s FOR UPDATE",
                    (payment_id,),
                )
                payment = await cur.fetchone()
                if payment is None:
                    raise LookupError(payment_id)
                existing = await self._refund_by_key(conn, scope, key, request_hash)
                if existing is not None:
                    return existing, False
                if payment["status"] not in {"succeeded", "partially_refunded"}:
                    raise PaymentNotRefundable(f"a {payment['status']} payment cannot be refunded")
                await cur.execute(
                    "SELECT coalesce(sum(amount), 0) AS reserved FROM payment_refunds "
                    "WHERE payment_id = %s AND status <> 'failed'",
                    (payment_id,),
                )
                reserved = _row(await cur.fetchone())
                left = payment["captured_amount"] - int(reserved["reserved"])
                if amount is None:
                    amount = left
                if amount <= 0:
                    raise RefundExceedsCapture("the payment is refunded in full")
                if amount > left:
                    raise RefundExceedsCapture(
                        f"{amount} exceeds what is left to refund ({left} of "
                        f"{payment['captured_amount']} captured)"
                    )
                # A concurrent refund under this key on another payment makes this wait for its
                # transaction and, once that commits, fail on the key (caught below).
                await cur.execute(
                    "INSERT INTO payment_refunds (id, payment_id, amount, status, scope, "  # noqa: S608 - constant column lists
                    "idempotency_key, request_hash, created_by) "
                    f"VALUES (%s, %s, %s, 'pending', %s, %s, %s, %s) RETURNING {_REFUND_COLUMNS}",
                    (refund_id, payment_id, amount, scope, key, request_hash, created_by),
                )
                refund = StoredRefund(**_row(await cur.fetchone()))
                # Who took money back out of a wallet, with the request that did it.
                details = {"payment_id": payment_id, "amount": amount, "idempotency_scope": scope}
                await add_audit_event(conn, actor=created_by, action="payment.refund_requested",
                                      subject=refund_id, details=details)  # fmt: skip
                return refund, True
        except UniqueViolation as exc:
            if exc.diag.constraint_name != _REFUND_KEY_CONSTRAINT:
                raise
        # Lost the race for the key to a refund of another payment (its row lock is not
        # ours). The INSERT waited for that transaction and failed only once it committed,
        # so a fresh look finds its row. Catching the violation, rather than serialising on
        # the key with an advisory lock, costs the common path nothing and holds whoever
        # else writes the table.
        async with self._pool.connection() as conn:
            existing = await self._refund_by_key(conn, scope, key, request_hash)
        if existing is None:  # keys are never deleted; the conflicting row must be there
            raise RuntimeError(f"refund idempotency key of {scope} vanished")
        return existing, False

    async def _refund_by_key(
        self, conn: AsyncConnection[Any], scope: str, key: str, request_hash: str
    ) -> StoredRefund | None:
        """The refund made under this key, if any; the key used for another request raises."""
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT request_hash, {_REFUND_COLUMNS} FROM payment_refunds "  # noqa: S608 - constant column lists
            "WHERE scope = %s AND idempotency_key = %s",
            (scope, key),
        )
        existing = await cur.fetchone()
        if existing is None:
            return None
        if existing.pop("request_hash") != request_hash:
            raise IdempotencyKeyReused("this Idempotency-Key was used for another refund")
        return StoredRefund(**existing)

    async def record_refund(self, record: RefundRecord) -> RefundOutcome:
        """Finish a refund once; the payment as it stands after it."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT captured_amount FROM payments WHERE id = %s FOR UPDATE",
                (record.payment_id,),
            )
            await cur.execute(
                "UPDATE payment_refunds SET status = %s, failure_code = %s, "
                "gateway_reference = %s, completed_at = now() "
                "WHERE id = %s AND status = 'pending'",
                (record.status, record.failure_code, record.gateway_reference, record.refund_id),
            )
            await cur.execute(
                "UPDATE payments p SET refunded_amount = r.done, updated_at = now(), "
                "status = CASE WHEN r.done = 0 THEN p.status "
                "              WHEN r.done >= p.captured_amount THEN 'refunded' "
                "              ELSE 'partially_refunded' END "
                "FROM (SELECT coalesce(sum(amount), 0) AS done FROM payment_refunds "
                "      WHERE payment_id = %s AND status = 'succeeded') r "
                "WHERE p.id = %s RETURNING p.status, p.amount, p.refunded_amount",
                (record.payment_id, record.payment_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise LookupError(record.payment_id)
        return RefundOutcome(
            payment_status=row["status"],
            payment_amount=row["amount"],
            refunded_amount=row["refunded_amount"],
        )

    async def refund(self, payment_id: str, refund_id: str) -> StoredRefund | None:
        """One refund of the payment; None for an unknown one or one of another payment."""
        found = await self._refunds("id = %s AND payment_id = %s", (refund_id, payment_id))
        return found[0] if found else None

    async def refunds_of(self, payment_id: str) -> list[StoredRefund]:
        return await self._refunds("payment_id = %s ORDER BY created_at, id", (payment_id,))

    async def _refunds(self, where: str, params: tuple[str, ...]) -> list[StoredRefund]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_REFUND_COLUMNS} FROM payment_refunds WHERE {where}",  # noqa: S608 - constant clauses
                params,
            )
            return [StoredRefund(**row) for row in await cur.fetchall()]


def _row(row: dict[str, Any] | None) -> dict[str, Any]:
    """A row a statement always returns (an INSERT … RETURNING, an aggregate)."""
    if row is None:
        raise RuntimeError("the database returned no row where one is certain")
    return row


__all__ = [
    "IdempotencyKeyReused",
    "NewPayment",
    "PaymentNotRefundable",
    "PaymentStore",
    "RefundExceedsCapture",
    "RiskHistory",
    "StoredPayment",
    "StoredRefund",
]
