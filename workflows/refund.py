"""RefundWorkflow (``rfd_…``): give back part or all of a succeeded payment.

The API reserves the amount first (``payment_refunds``, under a lock on the payment), so
the refunds of a payment never add up to more than was captured. Then:

    1. hold the money in the wallet that received it    (local) undone by VOID; a refusal
                                                        (the customer spent it) -> failed.
                                                        Retries exhausted: void the hold's
                                                        fixed id (its answer may be what was
                                                        lost), failed ``processing_error``
    2. top-ups: refund the card at the gateway          a decline -> void, failed; retried
                                                        with the refund's own key, so the
                                                        gateway refunds once
    3. post the hold                                    (local) retried until the ledger
                                                        answers: after a card refund there is
                                                        nothing to walk back
    4. record it: the payment becomes ``partially_refunded`` or ``refunded``; notify, with
       the payment's amount and all that is refunded of it so far. A refund that failed is
       announced as ``payment.refund_failed`` with its code (the payment's status stays).

A refund's hold does not expire: only this saga resolves it, by a post or a void that each
retry until the ledger answers. An expiry could release money the card already got back.
Every failure records the refund ``failed``, which gives its reservation back.

Search attributes: PaymentKind ``refund`` with the payment's CustomerId, AmountMinor and
Currency (set at start); PaymentStatus becomes the payment's status after the refund.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from models.notifications import (
        PlatformEvent,
        event_id,
        payment_data,
    )
    from models.payment import (
        GATEWAY_CALL_TIMEOUT,
        GATEWAY_REJECTED,
        HOLD_FUNDS,
        POST_HOLD,
        RECORD_REFUND,
        RECORD_REFUND_OUTCOME,
        REFUND_CHARGE,
        REFUND_WORKFLOW,
        VOID_HOLD,
        GatewayResult,
        HoldInput,
        RefundChargeInput,
        RefundInput,
        RefundOutcome,
        RefundRecord,
        RefundResult,
        ResolveHoldInput,
    )

    # Shared, not re-imported into every run's sandbox (a module import per payment
    # was a measurable share of the worker's CPU).
    from workflows.notification import announce
    from workflows.retries import (
        LOCAL_RETRY_THRESHOLD,
        QUICK,
        UNTIL_ANSWERED,
        ledger_refusal_code,
    )

STATUS = SearchAttributeKey.for_keyword("PaymentStatus")

# The final record: retried until it lands (the refund's outcome is settled by then).
_RECORD = RetryPolicy(maximum_interval=timedelta(seconds=30))
# Refunds started before this saga resolved every hold itself kept the old bounded hold.
HOLD_TIMEOUT_SECONDS = 24 * 3600
RESOLVES_ITS_HOLD = "refund-resolves-its-hold"
# A refund that fails is announced too (``payment.refund_failed``): the app was told 202.
ANNOUNCE_FAILED_REFUNDS = "announce-failed-refunds"


@workflow.defn(name=REFUND_WORKFLOW)
class RefundWorkflow:
    @workflow.run
    async def run(self, refund: RefundInput) -> RefundResult:
        self._refund = refund
        # Recorded by refunds that started with this code; older histories replay as before.
        self._resolves_hold = workflow.patched(RESOLVES_ITS_HOLD)
        workflow.set_current_details("Waiting for the funds hold.")
        hold_id = f"{refund.refund_id}:hold"
        try:
            hold_id = await workflow.execute_local_activity(
                HOLD_FUNDS,
                HoldInput(
                    transfer_id=hold_id,
                    payment_id=refund.payment_id,
                    debit_account_id=refund.debit_account_id,
                    credit_account_id=refund.credit_account_id,
                    amount=refund.amount,
                    currency=refund.currency,
                    timeout_seconds=None if self._resolves_hold else HOLD_TIMEOUT_SECONDS,
                ),
                result_type=str,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=QUICK,
                local_retry_threshold=self._local_retry_threshold(),
            )
        except (ActivityError, ApplicationError) as exc:
            code = ledger_refusal_code(exc)
            if code is not None:
                return await self._finish("failed", code, None)
            if not self._resolves_hold:
                raise
            # Retries ran out; an attempt may have landed with only its answer lost.
            await self._void(hold_id)
            return await self._finish("failed", "processing_error", None)
        hold = ResolveHoldInput(f"{refund.refund_id}:post", refund.payment_id, hold_id)

        reference = None
        if refund.gateway_reference is not None:
            workflow.set_current_details("Waiting for the refund at the card gateway.")
            try:
                result: GatewayResult = await workflow.execute_activity(
                    REFUND_CHARGE,
                    RefundChargeInput(
                        payment_id=refund.payment_id,
                        idempotency_key=refund.refund_id,
                        gateway_reference=refund.gateway_reference,
                        amount=refund.amount,
                    ),
                    result_type=GatewayResult,
                    start_to_close_timeout=GATEWAY_CALL_TIMEOUT,
                    retry_policy=RetryPolicy(
                        maximum_interval=timedelta(minutes=5),
                        non_retryable_error_types=[GATEWAY_REJECTED],
                    ),
                )
            except ActivityError as exc:
                # A refused request (more than the charge has left, a closed charge) is as
                # final as a decline: release the hold and record the failure, or the amount
                # the API reserved for this refund is never given back.
                cause = exc.cause
                if not (isinstance(cause, ApplicationError) and cause.type == GATEWAY_REJECTED):
                    raise
                result = GatewayResult("declined", decline_code="gateway_rejected")
            if result.outcome != "succeeded":
                await self._void(hold_id)
                return await self._finish("failed", result.decline_code or "declined", None)
            reference = result.reference

        await self._resolve(POST_HOLD, hold)
        return await self._finish("succeeded", None, reference)

    async def _void(self, hold_id: str) -> None:
        r = self._refund
        void = ResolveHoldInput(f"{r.refund_id}:void", r.payment_id, hold_id)
        await self._resolve(VOID_HOLD, void)

    async def _resolve(self, activity: str, arg: ResolveHoldInput) -> None:
        await workflow.execute_local_activity(
            activity,
            arg,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=UNTIL_ANSWERED if self._resolves_hold else QUICK,
            local_retry_threshold=self._local_retry_threshold(),
        )

    def _local_retry_threshold(self) -> timedelta | None:
        # Refunds started before the patch kept the SDK's default (None) in their history.
        return LOCAL_RETRY_THRESHOLD if self._resolves_hold else None

    async def _finish(
        self, status: str, failure_code: str | None, reference: str | None
    ) -> RefundResult:
        r = self._refund
        record = RefundRecord(r.refund_id, r.payment_id, status, failure_code, reference)  # type: ignore[arg-type]
        if self._resolves_hold:
            outcome: RefundOutcome = await workflow.execute_local_activity(
                RECORD_REFUND_OUTCOME,
                record,
                result_type=RefundOutcome,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=_RECORD,
            )
        else:
            # What these refunds' events always said: the refund's own amount for both.
            status_after: str = await workflow.execute_local_activity(
                RECORD_REFUND, record, result_type=str,
                start_to_close_timeout=timedelta(seconds=10), retry_policy=_RECORD,
            )  # fmt: skip
            outcome = RefundOutcome(status_after, r.amount, r.amount)
        payment_status = outcome.payment_status
        workflow.upsert_search_attributes([STATUS.value_set(payment_status)])
        workflow.set_current_details("")
        if status == "succeeded":
            await announce(self._event("payment.refund", f"payment.{payment_status}", outcome))
        elif self._resolves_hold and workflow.patched(ANNOUNCE_FAILED_REFUNDS):
            failed = "payment.refund_failed"
            await announce(self._event(failed, failed, outcome, failure_code))
        return RefundResult(r.refund_id, status, failure_code, payment_status)

    def _event(
        self, name: str, event_type: str, outcome: RefundOutcome, failure_code: str | None = None
    ) -> PlatformEvent:
        """The refund's event: the payment's amount and status, and all refunded so far."""
        r = self._refund
        return PlatformEvent(
            id=event_id(r.payment_id, name, r.refund_id),
            type=event_type,
            created_at=workflow.now().isoformat(),
            client_id=r.client_id,
            customer_id=r.customer_id,
            data=payment_data(
                payment_id=r.payment_id,
                kind=r.kind,
                amount=outcome.payment_amount,
                currency=r.currency,
                status=outcome.payment_status,
                decline_code=failure_code,
                amount_refunded=outcome.refunded_amount,
            ),
        )


if __name__ == "__main__":  # the sandbox re-imports this module; nothing runs on import
    pass
