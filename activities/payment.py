"""Payment activities: the saga's side effects, each safe to run more than once.

Ledger steps use the saga's own transfer ids (``pay_…:hold``, ``pay_…:post``, …), so a
retried or re-run step returns the first outcome instead of moving money twice. Gateway
steps send the same Idempotency-Key on every attempt. Business refusals (a ledger rule, a
card decline) come back as data or as non-retryable ApplicationErrors named after the
error's class; anything else is retried by Temporal.

The quick steps (score, hold, post, void, record) run as local activities of the workflow;
the gateway calls are regular activities with their own timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from infra.fraud_model import FraudScorer
from infra.gateway import (
    CardGateway,
    GatewayDeclined,
    GatewayRejected,
    GatewayUnknownOutcome,
)
from infra.ledger_store import LedgerStore
from infra.payment_store import PaymentStore, RiskHistory
from models.errors import (
    LedgerError,
    PendingTransferAlreadyResolved,
    PendingTransferExpired,
    PendingTransferNotFound,
)
from models.gateway import GatewayCharge, GatewayPayout, GatewayRefund
from models.ledger import AccountKind, NewAccount, TransferKind, TransferRequest
from models.notifications import RecordedEvent
from models.payment import (
    CHARGE_CARD,
    FIND_CHARGE,
    FIND_PAYOUT,
    GATEWAY_CLEARING,
    GATEWAY_REJECTED,
    GATEWAY_UNKNOWN_OUTCOME,
    HOLD_FUNDS,
    POST_HOLD,
    POSTED,
    RECORD_PAYMENT,
    RECORD_REFUND,
    RECORD_REFUND_OUTCOME,
    REFUND_CHARGE,
    SCORE_PAYMENT,
    SEND_PAYOUT,
    VOID_HOLD,
    ChargeInput,
    GatewayResult,
    HoldInput,
    PaymentRecord,
    PayoutInput,
    RefundChargeInput,
    RefundOutcome,
    RefundRecord,
    ResolveHoldInput,
    RiskSummary,
    ScoreInput,
    platform_account_id,
)
from models.risk import RiskFeatures, RiskPolicy, assess


def ledger_refusal(exc: LedgerError) -> ApplicationError:
    """A ledger rule said no: final; the type names the rule (models.errors.LEDGER_ERRORS)."""
    return ApplicationError(exc.detail, type=type(exc).__name__, non_retryable=True)


T = TypeVar("T")


def risk_features(request: ScoreInput, history: RiskHistory) -> RiskFeatures:
    """What the rules and the model see of a payment and its customer's recent ones."""
    at = datetime.fromisoformat(request.created_at)
    first = history.first_payment_at
    return RiskFeatures(
        kind=request.kind,  # type: ignore[arg-type]  # validated by the API
        amount_minor=request.amount,
        currency=request.currency,
        # In UTC, as the model was trained: the time arrives in the database session's zone.
        hour_of_day=at.astimezone(UTC).hour,
        payments_last_hour=history.payments_last_hour,
        amount_last_24h_minor=history.amount_last_24h,
        new_beneficiary=request.beneficiary is not None and not history.known_beneficiary,
        customer_age_days=max(0, (at - first).days) if first else 0,
    )


class PaymentActivities:
    def __init__(
        self,
        ledger: LedgerStore,
        payments: PaymentStore,
        gateway: CardGateway,
        scorer: FraudScorer,
        *,
        policy: RiskPolicy,
    ) -> None:
        self._ledger = ledger
        self._payments = payments
        self._gateway = gateway
        self._scorer = scorer
        self._policy = policy
        self._platform_accounts: set[str] = set()

    # ---- risk ------------------------------------------------------------------------

    @activity.defn(name=SCORE_PAYMENT)
    async def score_payment(self, request: ScoreInput) -> RiskSummary:
        at = datetime.fromisoformat(request.created_at)
        history = await self._payments.risk_history(
            customer_id=request.customer_id,
            currency=request.currency,
            beneficiary=request.beneficiary,
            payment_id=request.payment_id,
            at=at,
        )
        features = risk_features(request, history)
        # The model is CPU work: off the event loop, so other activities keep moving.
        score = await asyncio.to_thread(self._scorer.score, features)
        result = assess(features, score, self._scorer.version, self._policy)
        return RiskSummary(
            band=str(result.band),
            score=result.score,
            reasons=list(result.reasons),
            model_version=result.model_version,
        )

    # ---- ledger ----------------------------------------------------------------------

    async def _ensure_platform_account(self, account_id: str, currency: str) -> None:
        if account_id in self._platform_accounts:
            return
        if account_id == platform_account_id(GATEWAY_CLEARING, currency):
            # Unlimited, so never locked: every top-up and payout touches it.
            await self._ledger.open_account(
                NewAccount(
                    id=account_id,
                    currency=currency,
                    kind=AccountKind.ASSET,
                    owner="platform",
                    code=GATEWAY_CLEARING,
                )
            )
        self._platform_accounts.add(account_id)

    @activity.defn(name=HOLD_FUNDS)
    async def hold_funds(self, hold: HoldInput) -> str:
        for account_id in (hold.debit_account_id, hold.credit_account_id):
            await self._ensure_platform_account(account_id, hold.currency)
        try:
            transfer_id = await self._ledger.record_transfer(
                TransferRequest(
                    id=hold.transfer_id,
                    kind=TransferKind.PENDING,
                    debit_account_id=hold.debit_account_id,
                    credit_account_id=hold.credit_account_id,
                    amount=hold.amount,
                    currency=hold.currency,
                    timeout_seconds=hold.timeout_seconds,
                    metadata={"payment_id": hold.payment_id},
                )
            )
        except LedgerError as exc:
            raise ledger_refusal(exc) from exc
        return transfer_id

    @activity.defn(name=POST_HOLD)
    async def post_hold(self, request: ResolveHoldInput) -> str:
        try:
            transfer_id = await self._ledger.record_transfer(
                TransferRequest(
                    id=request.transfer_id,
                    kind=TransferKind.POST_PENDING,
                    pending_id=request.hold_id,
                    metadata={"payment_id": request.payment_id},
                )
            )
        except LedgerError as exc:
            raise ledger_refusal(exc) from exc
        return transfer_id

    @activity.defn(name=VOID_HOLD)
    async def void_hold(self, request: ResolveHoldInput) -> str | None:
        """Release a hold. One that expired, was already resolved, or never landed (the
        saga voids a hold whose every answer was lost) needs no release."""
        try:
            transfer_id = await self._ledger.record_transfer(
                TransferRequest(
                    id=request.transfer_id,
                    kind=TransferKind.VOID_PENDING,
                    pending_id=request.hold_id,
                    metadata={"payment_id": request.payment_id},
                )
            )
        except (PendingTransferExpired, PendingTransferNotFound):
            return None
        except PendingTransferAlreadyResolved:
            # Voided before (a retry), or posted: a post whose answer was lost must not be
            # taken for a release, or the saga would refund money the wallet kept.
            post_id = request.post_id
            if post_id is not None and await self._ledger.find_transfer(post_id) is not None:
                return POSTED
            return None
        except LedgerError as exc:
            raise ledger_refusal(exc) from exc
        return transfer_id

    # ---- gateway ---------------------------------------------------------------------

    @activity.defn(name=CHARGE_CARD)
    async def charge_card(self, request: ChargeInput) -> GatewayResult:
        call = self._gateway.charge(
            idempotency_key=request.idempotency_key,
            payment_id=request.payment_id,
            amount=request.amount,
            currency=request.currency,
            payment_method=request.payment_method,
        )
        return charge_result(await _moving_money(call))

    @activity.defn(name=FIND_CHARGE)
    async def find_charge(self, payment_id: str) -> GatewayResult:
        return charge_result(await self._gateway.find_charge(payment_id))

    @activity.defn(name=SEND_PAYOUT)
    async def send_payout(self, request: PayoutInput) -> GatewayResult:
        call = self._gateway.payout(
            idempotency_key=request.idempotency_key,
            payment_id=request.payment_id,
            amount=request.amount,
            currency=request.currency,
            destination=request.destination,
        )
        return payout_result(await _moving_money(call))

    @activity.defn(name=FIND_PAYOUT)
    async def find_payout(self, payment_id: str) -> GatewayResult:
        # A provider lists payouts by time only (no search): ours was sent after the
        # payment was accepted, so the list starts there.
        payment = await self._payments.get(payment_id)
        if payment is None:  # the API writes the row before it starts the saga
            raise ApplicationError(
                f"no payment {payment_id} to look a payout up for",
                type="PaymentNotFound",
                non_retryable=True,
            )
        found = await self._gateway.find_payout(payment_id, created_since=payment.created_at)
        return payout_result(found)

    @activity.defn(name=REFUND_CHARGE)
    async def refund_charge(self, request: RefundChargeInput) -> GatewayResult:
        charge, key = request.gateway_reference, request.idempotency_key
        # Retryable and unknown outcomes are retried with the same key, which the provider
        # applies once, but only while it remembers the key (Stripe: 24 hours). A retry
        # therefore looks for a refund made under the key first.
        if activity.info().attempt > 1:
            earlier = await self._gateway.find_refund(charge, key)
            if earlier is not None:
                return refund_result(earlier)
        try:
            refund = await self._gateway.refund(
                idempotency_key=key,
                charge_id=charge,
                amount=request.amount,
                payment_id=request.payment_id,
            )
        except GatewayDeclined as exc:
            return GatewayResult("declined", decline_code=exc.code)
        except GatewayRejected as exc:
            # A refusal (charge_already_refunded, say) of a request an earlier attempt may
            # have applied is no proof that nothing was refunded: taken for a decline, the
            # saga would give the wallet its money back with the card refunded too.
            earlier = await self._gateway.find_refund(charge, key)
            if earlier is not None:
                return refund_result(earlier)
            raise ApplicationError(str(exc), type=GATEWAY_REJECTED, non_retryable=True) from exc
        return refund_result(refund)

    # ---- the payments table ----------------------------------------------------------

    @activity.defn(name=RECORD_PAYMENT)
    async def record_payment(self, record: PaymentRecord) -> RecordedEvent | None:
        """The saga's state, with its terminal event in the same transaction when it
        carries one (``announce`` then skips its own record step). Idempotent: a retry
        writes the same row and finds the event stored."""
        endpoint_ids = await self._payments.record(record)
        if record.event is None:
            return None
        return RecordedEvent(event_id=record.event.id, endpoint_ids=endpoint_ids)

    @activity.defn(name=RECORD_REFUND)
    async def record_refund(self, record: RefundRecord) -> str:
        """For refunds started before ``record_refund_outcome``: the payment's status."""
        return (await self._payments.record_refund(record)).payment_status

    @activity.defn(name=RECORD_REFUND_OUTCOME)
    async def record_refund_outcome(self, record: RefundRecord) -> RefundOutcome:
        return await self._payments.record_refund(record)


# Statuses of a refund object that mean no money goes back (Stripe's names), and the one
# that means it went back; any other is not settled yet.
REFUND_NOT_MADE = frozenset({"failed", "canceled"})
REFUND_MADE = "succeeded"
REFUND_PENDING = "RefundPending"


def refund_result(refund: GatewayRefund) -> GatewayResult:
    """What the saga hears of a refund the provider answered with (or holds). One not
    settled yet (``pending``, ``requires_action``) raises ``RefundPending``, which Temporal
    retries with backoff: the next attempt finds it by its key and reads it again, so the
    saga books a refund only once the money went back (a pending one can still fail)."""
    if refund.status in REFUND_NOT_MADE:
        # A provider may answer with the refund object and its end, not an error.
        return GatewayResult("declined", reference=refund.id, decline_code="refund_failed")
    if refund.status == REFUND_MADE:
        return GatewayResult("succeeded", reference=refund.id)
    raise ApplicationError(
        f"refund {refund.id} is {refund.status} at the provider; asked again later",
        type=REFUND_PENDING,
    )


async def _moving_money(call: Awaitable[T]) -> T | GatewayResult:
    """A charge or payout call, its outcome sorted by the connector's taxonomy. Retryable
    errors propagate: Temporal retries with the same key."""
    try:
        return await call
    except GatewayDeclined as exc:
        return GatewayResult("declined", decline_code=exc.code)
    except GatewayUnknownOutcome as exc:
        raise ApplicationError(str(exc), type=GATEWAY_UNKNOWN_OUTCOME, non_retryable=True) from exc
    except GatewayRejected as exc:
        raise ApplicationError(str(exc), type=GATEWAY_REJECTED, non_retryable=True) from exc


def charge_result(charge: GatewayCharge | GatewayResult | None) -> GatewayResult:
    """What the saga hears of a charge, whether the call answered it or a lookup found it."""
    if charge is None:
        return GatewayResult("absent")
    if isinstance(charge, GatewayResult):
        return charge
    if charge.succeeded:
        return GatewayResult("succeeded", reference=charge.id)
    # As the charge call itself reads it: anything but processing will not be captured
    # (a lookup that kept it pending would wait for it until the hold's expiry).
    if charge.settled_unpaid:
        return GatewayResult("declined", reference=charge.id, decline_code=charge.refusal_code)
    return GatewayResult("pending", reference=charge.id)


def payout_result(payout: GatewayPayout | GatewayResult | None) -> GatewayResult:
    """What the saga hears of a payout, whether the call answered it or a lookup found it."""
    if payout is None:
        return GatewayResult("absent")
    if isinstance(payout, GatewayResult):
        return payout
    if payout.paid:
        return GatewayResult("succeeded", reference=payout.id)
    if payout.failure_code is not None or payout.not_made:
        return GatewayResult(
            "declined", reference=payout.id,
            decline_code=payout.failure_code or f"payout_{payout.status}",
        )  # fmt: skip
    return GatewayResult("pending", reference=payout.id)
