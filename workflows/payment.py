"""PaymentWorkflow (``pay_…``): one payment as a saga, from acceptance to a terminal status.

Steps, and what undoes each one if a later step fails (compensation runs backwards exactly
as far as the saga got):

    1. score risk             (local)  nothing to undo. Band ``decline`` -> declined.
    2. hold funds             (local)  a pending ledger transfer; undone by VOID. A ledger
                                       refusal (insufficient_funds, …) -> declined, nothing held.
                                       Retries exhausted: the hold may have landed with only
                                       its answer lost, so compensation voids its fixed id.
    3. review (review band)   (child)  a ComplianceReviewWorkflow case while the funds stay held;
                                       rejected -> void, declined ``review_rejected``; SLA
                                       expiry -> void, declined ``review_expired``;
                                       approved -> ``processing`` again, in the table too.
    4. gateway                (topup: charge the card; payout: send the payout; transfer: none)
                                       a decline -> void, declined with the gateway's code;
                                       a timeout is an UNKNOWN outcome, not a failure: the saga
                                       asks the gateway what happened (durable timers, backoff)
                                       and replays the same Idempotency-Key, never a new one.
                                       A payout still in transit (``pending``) is looked up
                                       the same way until it is paid or fails.
    5. post the hold          (local)  refused after a charge -> refund at the gateway, then
                                       void, failed (``charge_not_refunded`` when the
                                       gateway refuses the refund: an operator settles it).
                                       Retries exhausted instead: void first,
                                       as a post whose answer was lost shows up as posted
                                       (then the payment succeeded). A payout cannot be
                                       recalled: its post is retried until the ledger
                                       answers, and a refusal ends ``failed``,
                                       ``post_failed_after_payout``, for reconciliation.
    6. notify                 ``announce``: record the event, mail the customer (local);
                                       webhooks in an abandoned EventDeliveryWorkflow.

``cancel`` (an Update) is honoured until the point of no return: the gateway step for top-ups
and payouts, the post for transfers. A review decided a moment before the cancel reached
its case stands: a rejection declines the payment (``review_rejected``), an approval is
noted and the cancel then honoured. Terminal statuses are final.

Search attributes: PaymentStatus, PaymentKind, CustomerId, AmountMinor, Currency (set at
start by the API), RiskScore after scoring; current details say what the payment waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributeUpdate
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
)

with workflow.unsafe.imports_passed_through():
    from models.notifications import (
        PlatformEvent,
        RecordedEvent,
        event_id,
        payment_data,
    )
    from models.payment import (
        CHARGE_CARD,
        FIND_CHARGE,
        FIND_PAYOUT,
        GATEWAY_CALL_TIMEOUT,
        GATEWAY_CLEARING,
        GATEWAY_REJECTED,
        GATEWAY_UNKNOWN_OUTCOME,
        HOLD_FUNDS,
        PAYMENT_WORKFLOW,
        POST_HOLD,
        POSTED,
        RECORD_PAYMENT,
        REFUND_CHARGE,
        SCORE_PAYMENT,
        SEND_PAYOUT,
        TERMINAL_STATUSES,
        VOID_HOLD,
        ChargeInput,
        GatewayResult,
        HoldInput,
        PaymentInput,
        PaymentRecord,
        PaymentResult,
        PaymentState,
        PayoutInput,
        RefundChargeInput,
        ResolveHoldInput,
        RiskSummary,
        ScoreInput,
        TimelineEntry,
        platform_account_id,
        review_id_for,
    )
    from models.review import (
        REVIEW_WORKFLOW,
        OpenReviewInput,
        ReviewOutcome,
        ReviewReason,
        required_approvals,
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

T = TypeVar("T")

STATUS = SearchAttributeKey.for_keyword("PaymentStatus")
RISK_SCORE = SearchAttributeKey.for_float("RiskScore")

# Holds outlive the longest review (three SLA days) with room to spare; a saga that is
# somehow abandoned still gives the money back when its hold expires (the ledger's
# roll-up schedule releases expired holds).
HOLD_TIMEOUT_SECONDS = 7 * 24 * 3600

# Patches (workflow.patched): histories recorded before a change replay on the old path.
VOID_UNANSWERED_HOLD = "void-unanswered-hold"
PAYOUT_POST_UNTIL_ANSWERED = "payout-post-until-answered"
RECORD_REVIEW_APPROVAL = "record-review-approval"
# A lookup (or a same-key replay) that fails while the outcome is unknown leaves it unknown.
FAILED_LOOKUP_STAYS_UNKNOWN = "failed-lookup-stays-unknown"
# A review decided just before the cancel reached its case answers with the decision.
REVIEW_DECISION_BEFORE_CANCEL = "review-decision-before-cancel"

_GATEWAY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=["GatewayRejected", "GatewayUnknownOutcome"],
)
_UNKNOWN_FIRST_WAIT = timedelta(seconds=2)
_UNKNOWN_MAX_WAIT = timedelta(minutes=5)
_LOOKUPS_BEFORE_REPLAY = 3


class CancelTooLate:
    @staticmethod
    def error(status: str) -> ApplicationError:
        return ApplicationError(
            f"the payment can no longer be canceled (status {status}, or its money is already "
            "moving at the gateway)",
            type="PaymentNotCancelable",
            non_retryable=True,
        )


# Not sandboxed: the sandbox builds every run a fresh module world and re-executes this
# module in it, a tenth of the worker's CPU per payment under load. This module and the
# models it passes through are deterministic by review; the replay tests over recorded
# histories (tests/workflows/test_replay.py) catch a non-deterministic change.
@workflow.defn(name=PAYMENT_WORKFLOW, sandboxed=False)
class PaymentWorkflow:
    @workflow.init
    def __init__(self, payment: PaymentInput) -> None:
        self._payment = payment
        self._state = PaymentState(
            payment_id=payment.payment_id,
            kind=payment.kind,
            status="processing",
            amount=payment.amount,
            currency=payment.currency,
        )
        self._cancel_requested = False
        self._past_no_return = False
        self._hold_id: str | None = None
        self._charged: GatewayResult | None = None
        # The gateway refused to give a charge back: the card stays charged.
        self._charge_kept = False

    # ---- what the outside sees -------------------------------------------------------

    @workflow.query
    def get_payment(self) -> PaymentState:
        return self._state

    @workflow.update
    async def cancel(self) -> PaymentState:
        self._cancel_requested = True
        await workflow.wait_condition(lambda: self._terminal)
        return self._state

    @cancel.validator
    def _may_cancel(self) -> None:
        if self._terminal or self._past_no_return:
            raise CancelTooLate.error(self._state.status)

    def _cancel_asked(self) -> bool:
        # A method, not the attribute: the Update handler sets it between awaits.
        return self._cancel_requested

    @property
    def _terminal(self) -> bool:
        return self._state.status in TERMINAL_STATUSES

    def _note(self, event: str, detail: str = "") -> None:
        self._state.timeline.append(TimelineEntry(workflow.now().isoformat(), event, detail))

    def _waiting_for(self, what: str) -> None:
        self._state.waiting_for = what
        workflow.set_current_details(f"Waiting for {what}." if what else "")

    def _set_status(self, status: str) -> None:
        self._state.status = status
        updates: list[SearchAttributeUpdate[Any]] = [STATUS.value_set(status)]
        if self._state.risk is not None:
            # With the status, not on its own: each upsert is a visibility write.
            updates.append(RISK_SCORE.value_set(self._state.risk.score))
        workflow.upsert_search_attributes(updates)

    # ---- the saga ----------------------------------------------------------------------

    @workflow.run
    async def run(self, payment: PaymentInput) -> PaymentResult:
        self._note("accepted", payment.kind)
        try:
            await self._saga()
        except (ActivityError, ChildWorkflowError, ApplicationError) as exc:
            # An unexpected failure (retries exhausted, a refused request): walk back what
            # was done. A bug in this code instead fails the workflow task, and the payment
            # waits, untouched, for a fixed worker.
            if self._terminal:
                raise
            workflow.logger.warning(
                "payment %s failed: %r (cause %r)", payment.payment_id, exc, exc.__cause__
            )
            if await self._compensate(f"unexpected: {type(exc).__name__}"):
                # The post had landed after all (only its answer was lost): it succeeded.
                self._state.captured_amount = payment.amount
                await self._finish("succeeded")
            else:
                await self._finish("failed", self._failure_code("processing_error"))
        state = self._state
        return PaymentResult(state.payment_id, state.status, state.decline_code)

    async def _saga(self) -> None:  # noqa: PLR0911 - one return per business outcome
        """The steps in order; each early return is a business outcome (module docstring)."""
        p = self._payment
        risk = await self._score()
        if risk.band == "decline":
            return await self._finish("declined", "risk_declined")
        if self._cancel_asked():
            return await self._finish("canceled")

        refusal = await self._hold()
        if refusal is not None:
            return await self._finish("declined", refusal)
        if self._cancel_asked():
            return await self._undo_and_finish("canceled")

        if risk.band == "review":
            outcome = await self._review(risk)
            if outcome is None:
                return await self._undo_and_finish("canceled")
            if outcome.outcome == "rejected":
                code = "review_expired" if outcome.sla_expired else "review_rejected"
                return await self._undo_and_finish("declined", code)
            self._set_status("processing")
            self._note("review_approved", ",".join(outcome.decided_by))
            if workflow.patched(RECORD_REVIEW_APPROVAL):
                # The table too: until the payment ends, its list filters would still
                # show it in review while it is at the gateway.
                await self._record()

        # The point of no return: from here on, money moves outside the ledger.
        if self._cancel_asked():
            return await self._undo_and_finish("canceled")
        self._past_no_return = True
        if p.kind != "transfer":
            result = await self._gateway_step()
            if result.outcome != "succeeded":
                return await self._undo_and_finish("declined", result.decline_code or "declined")
            self._charged = result
            self._state.gateway_reference = result.reference
            self._note("charged" if p.kind == "topup" else "paid_out", result.reference or "")

        await self._post()

    async def _score(self) -> RiskSummary:
        p = self._payment
        self._waiting_for("the risk score")
        beneficiary = p.destination_account_id if p.kind == "transfer" else p.payout_destination
        risk = await self._quick(
            SCORE_PAYMENT,
            ScoreInput(
                payment_id=p.payment_id,
                customer_id=p.customer_id,
                kind=p.kind,
                amount=p.amount,
                currency=p.currency,
                beneficiary=beneficiary,
                created_at=p.created_at or workflow.now().isoformat(),
            ),
            RiskSummary,
        )
        self._state.risk = risk
        self._note("risk_scored", f"{risk.band} {risk.score} {','.join(risk.reasons)}".strip())
        return risk

    async def _hold(self) -> str | None:
        """Place the hold; a ledger refusal comes back as its code."""
        p = self._payment
        debit, credit = self._legs()
        self._waiting_for("the funds hold")
        hold_id = f"{p.payment_id}:hold"
        try:
            self._hold_id = await self._quick(
                HOLD_FUNDS,
                HoldInput(
                    transfer_id=hold_id,
                    payment_id=p.payment_id,
                    debit_account_id=debit,
                    credit_account_id=credit,
                    amount=p.amount,
                    currency=p.currency,
                    timeout_seconds=HOLD_TIMEOUT_SECONDS,
                ),
                str,
            )
        except (ActivityError, ApplicationError) as exc:
            code = ledger_refusal_code(exc)
            if code is None:
                if workflow.patched(VOID_UNANSWERED_HOLD):
                    # Retries ran out, but an attempt may have landed with only its answer
                    # lost: compensation voids the hold's fixed id (no such hold: nothing
                    # to void), or the wallet's money would stay reserved.
                    self._hold_id = hold_id
                raise
            return code
        self._note("funds_held", self._hold_id)
        return None

    async def _post(self) -> None:
        p = self._payment
        self._waiting_for("the ledger post")
        request = ResolveHoldInput(f"{p.payment_id}:post", p.payment_id, self._held())
        try:
            try:
                post_id = await self._quick(POST_HOLD, request, str)
            except (ActivityError, ApplicationError) as exc:
                if ledger_refusal_code(exc) is not None or not self._payout_left():
                    raise
                # The money is at the bank and cannot be called back, so walking back is
                # no option: the ledger must record it. Until it answers, the payment is
                # still processing.
                self._note("post_retried", "the payout left; its post must land")
                post_id = await self._quick(POST_HOLD, request, str, retry_policy=UNTIL_ANSWERED)
        except (ActivityError, ApplicationError) as exc:
            code = ledger_refusal_code(exc)
            if code is None:
                raise
            return await self._post_failed(code)
        self._state.captured_amount = p.amount
        self._note("posted", post_id)
        await self._finish("succeeded")

    def _payout_left(self) -> bool:
        return (
            self._payment.kind == "payout"
            and self._charged is not None
            and workflow.patched(PAYOUT_POST_UNTIL_ANSWERED)
        )

    def _held(self) -> str:
        if self._hold_id is None:
            raise ApplicationError("no hold was placed", type="SagaOrder", non_retryable=True)
        return self._hold_id

    def _legs(self) -> tuple[str, str]:
        p = self._payment
        clearing = platform_account_id(GATEWAY_CLEARING, p.currency)
        if p.kind == "topup":
            return clearing, _given(p.destination_account_id, "destination_account_id")
        source = _given(p.source_account_id, "source_account_id")
        if p.kind == "payout":
            return source, clearing
        return source, _given(p.destination_account_id, "destination_account_id")

    async def _quick(
        self, activity: str, arg: object, result_type: type[T], *, retry_policy: RetryPolicy = QUICK
    ) -> T:
        result: T = await workflow.execute_local_activity(
            activity,
            arg,
            result_type=result_type,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=retry_policy,
            local_retry_threshold=LOCAL_RETRY_THRESHOLD,
        )
        return result

    async def _review(self, risk: RiskSummary) -> ReviewOutcome | None:
        """Open the case and wait for its outcome; None when the payment was canceled."""
        p = self._payment
        review_id = review_id_for(p.payment_id)
        self._state.review_id = review_id
        self._set_status("in_review")
        self._note("review_opened", review_id)
        self._waiting_for(f"a compliance decision on {review_id}")
        await self._record()
        handle = await workflow.start_child_workflow(
            REVIEW_WORKFLOW,
            OpenReviewInput(
                review_id=review_id,
                kind="payment",
                subject_id=p.payment_id,
                customer_subject=p.customer_id,
                reasons=[
                    ReviewReason(code, {"score": risk.score, "model_version": risk.model_version})
                    for code in (risk.reasons or ["review_band"])
                ],
                required_approvals=required_approvals(p.amount, p.four_eyes_threshold_minor),
                amount_minor=p.amount,
                currency=p.currency,
                related_subjects=[p.beneficiary_id] if p.beneficiary_id else [],
            ),
            id=review_id,
            result_type=ReviewOutcome,
        )
        await workflow.wait_condition(lambda: handle.done() or self._cancel_requested)
        if not handle.done():
            handle.cancel()  # the case is withdrawn with the payment
            if not workflow.patched(REVIEW_DECISION_BEFORE_CANCEL):
                self._note("review_withdrawn", review_id)
                with contextlib.suppress(ChildWorkflowError, asyncio.CancelledError):
                    await handle
                return None
            try:
                decided: ReviewOutcome = await handle
            except (ChildWorkflowError, asyncio.CancelledError):
                self._note("review_withdrawn", review_id)
                return None
            # Decided while its audit line was written: the officer was told so, and the
            # case's trail says so. A rejection stands; after an approval the cancel is
            # still honoured, as nothing has left for the gateway.
            return decided
        outcome: ReviewOutcome = handle.result()
        return outcome

    async def _gateway_step(self) -> GatewayResult:
        p = self._payment
        key = f"{p.payment_id}:{p.kind}"
        self._waiting_for("the card gateway" if p.kind == "topup" else "the payout at the gateway")
        try:
            result = await self._gateway_call(key)
            if result.outcome != "pending":
                return result
            # A provider answers a payout in transit as pending: not a decline, not yet
            # a success. Its end is looked up as an unknown outcome's is.
            self._note("gateway_pending", result.reference or "")
        except ActivityError as exc:
            if _error_type(exc) != GATEWAY_UNKNOWN_OUTCOME:
                raise
            # UNKNOWN: the request may have been applied. Ask, with backoff on durable timers.
            self._note("gateway_outcome_unknown")
        wait = _UNKNOWN_FIRST_WAIT
        lookups = 0
        failing: str | None = None  # the last failed look's error, while looks fail
        while True:
            self._waiting_for(
                f"the gateway's answer about {p.payment_id} (next look in {wait}"
                + (f"; the last look failed: {failing})" if failing else ")")
            )
            await workflow.sleep(wait)
            wait = min(wait * 2, _UNKNOWN_MAX_WAIT)
            try:
                found: GatewayResult = await workflow.execute_activity(
                    FIND_CHARGE if p.kind == "topup" else FIND_PAYOUT,
                    p.payment_id,
                    result_type=GatewayResult,
                    start_to_close_timeout=GATEWAY_CALL_TIMEOUT,
                    retry_policy=_GATEWAY,
                )
            except ActivityError as exc:
                if not workflow.patched(FAILED_LOOKUP_STAYS_UNKNOWN):
                    raise
                # The look itself was refused (a 4xx, a lookup the provider does not
                # offer): the money may still have moved, and walking back now could pay
                # out or charge twice. Still unknown: noted once, asked again later.
                error = _error_type(exc) or type(exc).__name__
                if failing is None:
                    self._note("gateway_lookup_failed", error)
                failing = error
                continue
            failing = None
            lookups += 1
            if found.outcome in {"succeeded", "declined"}:
                self._note("gateway_outcome_resolved", found.outcome)
                return found
            if found.outcome == "absent" and lookups >= _LOOKUPS_BEFORE_REPLAY:
                # Nothing under our reference: replay the SAME key. The gateway applies a
                # key once, so this either returns the original answer or charges once.
                try:
                    replayed = await self._gateway_call(key)
                except ActivityError as exc:
                    if _error_type(exc) != GATEWAY_UNKNOWN_OUTCOME and not workflow.patched(
                        FAILED_LOOKUP_STAYS_UNKNOWN
                    ):
                        raise
                    continue
                if replayed.outcome == "pending":
                    continue
                self._note("gateway_outcome_resolved", f"replayed: {replayed.outcome}")
                return replayed

    async def _gateway_call(self, key: str) -> GatewayResult:
        p = self._payment
        arg: ChargeInput | PayoutInput
        if p.kind == "topup":
            method = _given(p.payment_method, "payment_method")
            activity, arg = (
                CHARGE_CARD,
                ChargeInput(p.payment_id, key, p.amount, p.currency, method),
            )
        else:
            bank = _given(p.payout_destination, "payout_destination")
            arg = PayoutInput(p.payment_id, key, p.amount, p.currency, bank)
            activity = SEND_PAYOUT
        result: GatewayResult = await workflow.execute_activity(
            activity,
            arg,
            result_type=GatewayResult,
            start_to_close_timeout=GATEWAY_CALL_TIMEOUT,
            retry_policy=_GATEWAY,
        )
        return result

    # ---- compensation and the end ----------------------------------------------------

    async def _post_failed(self, code: str) -> None:
        """The ledger refused the post (a rule, e.g. the hold expired): it certainly did not
        land, so the saga refunds at the gateway, then voids."""
        p = self._payment
        self._note("post_failed", code)
        if p.kind == "payout":
            # Money already left for the bank; the hold keeps the wallet's funds reserved
            # until reconciliation settles it.
            return await self._finish("failed", "post_failed_after_payout")
        await self._refund_charge()
        await self._release_hold(code)
        await self._finish("failed", self._failure_code(code))

    async def _compensate(self, why: str) -> bool:
        """Walk back after an unexpected failure (retries exhausted). The last step may have
        landed with only its answer lost, so the hold is released first: True when it turns
        out to be posted (the payment went through, nothing is walked back); otherwise the
        charge is refunded at the gateway."""
        if await self._release_hold(why) == POSTED:
            self._note("hold_found_posted", why)
            return True
        await self._refund_charge()
        return False

    async def _release_hold(self, why: str) -> str | None:
        p = self._payment
        # A payout that left cannot be recalled: its hold stays for reconciliation.
        if self._hold_id is None or (p.kind == "payout" and self._charged is not None):
            return None
        return await self._void(why)

    async def _refund_charge(self) -> None:
        p = self._payment
        if self._charged is None or not self._charged.reference or p.kind != "topup":
            return
        self._waiting_for("the refund at the card gateway")
        try:
            refund: GatewayResult = await workflow.execute_activity(
                REFUND_CHARGE,
                RefundChargeInput(
                    payment_id=p.payment_id,
                    idempotency_key=f"{p.payment_id}:compensation-refund",
                    gateway_reference=self._charged.reference,
                    amount=p.amount,
                ),
                result_type=GatewayResult,
                start_to_close_timeout=GATEWAY_CALL_TIMEOUT,
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=5)),
            )
        except ActivityError as exc:
            # Refused outright (a disputed or closed charge): as final as a decline. Raised
            # on, it would fail the workflow mid-compensation with the payment 'processing'.
            if _error_type(exc) != GATEWAY_REJECTED:
                raise
            refund = GatewayResult("declined", decline_code="gateway_rejected")
        if refund.outcome != "succeeded":
            self._charge_kept = True
            self._note("charge_refund_refused", refund.decline_code or refund.outcome)
            return
        self._note("charge_refunded", refund.reference or refund.outcome)

    def _failure_code(self, code: str) -> str:
        """The failed payment's code; ``charge_not_refunded`` when its card stays charged
        with nothing in the wallet, which only an operator can settle."""
        return "charge_not_refunded" if self._charge_kept else code

    async def _void(self, why: str) -> str | None:
        p = self._payment
        voided: str | None = await workflow.execute_local_activity(
            VOID_HOLD,
            ResolveHoldInput(
                f"{p.payment_id}:void", p.payment_id, self._held(), f"{p.payment_id}:post"
            ),
            result_type=str,  # None: expired or voided already; POSTED: it was posted
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
        )
        self._note("hold_voided", f"{voided or 'nothing to void'} ({why})")
        return voided

    async def _undo_and_finish(self, status: str, code: str | None = None) -> None:
        if self._hold_id is not None:
            await self._void(code or status)
        await self._finish(status, code)

    async def _finish(self, status: str, code: str | None = None) -> None:
        self._state.decline_code = code
        self._set_status(status)
        self._note(status, code or "")
        self._waiting_for("")
        event = self._event()
        # The row and its event in one step: a local activity fewer on every payment.
        recorded = await self._record(event)
        await announce(event, recorded)

    async def _record(self, event: PlatformEvent | None = None) -> RecordedEvent | None:
        """The saga's state to the payments table; at the end with its terminal event."""
        s = self._state
        recorded: RecordedEvent | None = await workflow.execute_local_activity(
            RECORD_PAYMENT,
            PaymentRecord(
                payment_id=s.payment_id,
                status=s.status,
                decline_code=s.decline_code,
                risk=s.risk,
                review_id=s.review_id,
                gateway_reference=s.gateway_reference,
                captured_amount=s.captured_amount,
                timeline=list(s.timeline),
                event=event,
            ),
            result_type=RecordedEvent,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
        )
        return recorded

    def _event(self) -> PlatformEvent:
        """The terminal status's event (``payment.succeeded``, ``payment.declined``, …)."""
        s, p = self._state, self._payment
        return PlatformEvent(
            id=event_id(p.payment_id, f"payment.{s.status}"),
            type=f"payment.{s.status}",
            created_at=workflow.now().isoformat(),
            client_id=p.client_id,
            customer_id=p.customer_id,
            data=payment_data(
                payment_id=p.payment_id,
                kind=p.kind,
                amount=p.amount,
                currency=p.currency,
                status=s.status,
                decline_code=s.decline_code,
            ),
        )


def _given(value: str | None, name: str) -> str:
    if value is None:  # the API validates each kind's fields; this is a broken input
        raise ApplicationError(f"{name} is required", type="InvalidPayment", non_retryable=True)
    return value


def _error_type(exc: ActivityError) -> str | None:
    cause = exc.cause
    return cause.type if isinstance(cause, ApplicationError) else None


if __name__ == "__main__":  # the sandbox re-imports this module; nothing runs on import
    pass
