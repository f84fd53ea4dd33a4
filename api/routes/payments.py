"""Payments over REST: start one, read it, list them, cancel it, refund it.

``POST /v1/payments`` needs an ``Idempotency-Key`` (400 without). The key is scoped to the
caller: the same key with the same body answers with the same payment (however many arrive
at once), with another body ``409 idempotency_key_reused``. The answer comes once the
payment row is committed; the PaymentWorkflow is started right after under the payment's
id, and a start that was lost is made by the sweep (``api/payment_starter.py``).

Who may move what: a customer only out of (or, for a top-up, into) their own wallets; an
``app`` for any customer's wallet, and it sees the payments it created; operators and admins
see everything. Someone else's payment answers 404, exactly like a missing one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.auth import Principal, require_role
from api.deps import (
    IdempotencyHeader,
    LedgerDep,
    TemporalClientDep,
    require_idempotency_key,
    temporal_or_503,
)
from api.errors import ProblemError, invalid_fields, temporal_unavailable
from api.payment_starter import SagaStarter
from api.workflow_calls import live_view, update
from infra.ledger_store import LedgerStore
from infra.payment_store import NewPayment, PaymentStore, StoredPayment, StoredRefund
from models.ids import new_id
from models.ledger import Account
from models.payment import (
    TERMINAL_STATUSES,
    PaymentKind,
    PaymentState,
    PaymentStatus,
)
from models.payment_schemas import (
    PaymentCreate,
    PaymentList,
    PaymentPublic,
    RefundCreate,
    RefundPublic,
    RiskPublic,
    TimelinePublic,
)

router = APIRouter(prefix="/v1/payments", tags=["payments"])

Payer = Annotated[Principal, require_role("customer", "app")]
# Compliance officers read payments (they decide their reviews) but do not move money.
Reader = Annotated[
    Principal, require_role("customer", "app", "operator", "admin", "compliance_officer")
]
Actor = Annotated[Principal, require_role("customer", "app", "operator", "admin")]
WALLET = "customer_wallet"


def _payments(request: Request) -> PaymentStore:
    store: PaymentStore = request.app.state.payments
    return store


def _starter(request: Request) -> SagaStarter:
    starter: SagaStarter = request.app.state.saga_starter
    return starter


def _invalid(field: str, code: str, message: str, status_code: int = 422) -> ProblemError:
    return ProblemError(
        status_code,
        code,
        "The payment cannot be made",
        message,
        errors=[{"field": field, "code": code, "message": message}],
    )


def _wallet(
    accounts: dict[str, Account],
    account_id: str,
    field: str,
    currency: str,
    owner: str | None,
    *,
    opaque: bool = False,
) -> Account:
    """A customer wallet in the payment's currency; ``owner`` set: it must be theirs.
    ``opaque``: another customer's wallet, which a refusal must not describe."""
    account = accounts.get(account_id)
    if account is None or account.code != WALLET or (owner is not None and account.owner != owner):
        # Someone else's wallet answers like a missing one.
        raise _invalid(field, "account_not_found", f"no wallet {account_id}", 404)
    if opaque and (account.closed or account.currency != currency):
        # Whether it is closed, and what it holds, is its owner's business.
        raise _invalid(field, "destination_unavailable",
                       f"wallet {account_id} cannot receive this payment")  # fmt: skip
    if account.closed:
        raise _invalid(field, "account_closed", f"wallet {account_id} is closed")
    if account.currency != currency:
        raise _invalid(field, "currency_mismatch", f"wallet {account_id} holds {account.currency}")
    return account


def _fingerprint(body: PaymentCreate | RefundCreate, payment_id: str | None = None) -> str:
    canonical = json.dumps(
        {"body": body.model_dump(mode="json", exclude_none=True), "payment": payment_id},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _visible(principal: Principal, payment: StoredPayment | None, payment_id: str) -> StoredPayment:
    if payment is not None and (
        _sees_all(principal)
        or payment.customer_id == principal.subject
        or ("app" in principal.roles and payment.client_id == principal.own_client())
    ):
        return payment
    raise ProblemError(404, "payment_not_found", "No such payment", f"no payment {payment_id}")


def _risk(
    payment: StoredPayment, live: PaymentState | None, viewer: Principal
) -> RiskPublic | None:
    if live is not None and live.risk is not None:
        r = live.risk
        risk = RiskPublic(
            band=r.band, score=r.score, reasons=r.reasons, model_version=r.model_version
        )
    elif payment.risk_band is None:
        return None
    else:
        risk = RiskPublic(
            band=payment.risk_band,
            score=payment.risk_score or 0.0,
            reasons=payment.risk_reasons or [],
            model_version=payment.model_version or "",
        )
    if _sees_scores(viewer):
        return risk
    return risk.model_copy(update={"score": None, "model_version": None})


def _sees_all(principal: Principal) -> bool:
    return principal.is_staff or "compliance_officer" in principal.roles


def _sees_scores(principal: Principal) -> bool:
    """Apps and staff see the model's score and version; a paying customer does not."""
    return _sees_all(principal) or "app" in principal.roles


# Timeline entries whose detail names staff (the officers who approved a review): a
# customer or an app sees that it happened, not who decided.
_STAFF_DETAILS = frozenset({"review_approved"})


def _without_score(detail: str) -> str:
    """``risk_scored``'s detail ("<band> <score> <reasons>") without the score."""
    band, _, rest = detail.partition(" ")
    _score, _, reasons = rest.partition(" ")
    return f"{band} {reasons}".strip()


def _timeline(
    payment: StoredPayment, live: PaymentState | None, viewer: Principal
) -> list[TimelinePublic]:
    entries = (
        [TimelinePublic(at=e.at, event=e.event, detail=e.detail) for e in live.timeline]
        if live is not None
        else [TimelinePublic(**e) for e in payment.timeline]
    )
    if _sees_all(viewer):
        return entries
    scores = _sees_scores(viewer)

    def shown(e: TimelinePublic) -> TimelinePublic:
        if e.event in _STAFF_DETAILS:
            return e.model_copy(update={"detail": ""})
        if e.event == "risk_scored" and not scores:
            return e.model_copy(update={"detail": _without_score(e.detail)})
        return e

    return [shown(e) for e in entries]


def _public(
    payment: StoredPayment, live: PaymentState | None = None, *, viewer: Principal
) -> PaymentPublic:
    """The payment as ``viewer`` may see it."""
    return PaymentPublic(
        id=payment.id,
        kind=payment.kind,
        status=live.status if live else payment.status,
        amount=payment.amount,
        currency=payment.currency,
        source_account_id=payment.source_account_id,
        destination_account_id=payment.destination_account_id,
        payment_method=payment.payment_method,
        payout_destination=payment.payout_destination,
        decline_code=live.decline_code if live else payment.decline_code,
        risk=_risk(payment, live, viewer),
        review_id=live.review_id if live else payment.review_id,
        captured_amount=live.captured_amount if live else payment.captured_amount,
        refunded_amount=payment.refunded_amount,
        waiting_for=(live.waiting_for or None) if live else None,
        timeline=_timeline(payment, live, viewer),
        created_at=payment.created_at,
        completed_at=payment.completed_at,
    )


async def _payer_and_beneficiary(
    body: PaymentCreate, principal: Principal, ledger: LedgerStore
) -> tuple[str, str | None]:
    """The customer whose wallet pays (or a top-up fills) and a transfer's beneficiary,
    once the wallets are checked; a ``ProblemError`` naming the field otherwise."""
    problems = body.kind_problems()
    if problems:
        raise invalid_fields(problems)
    acting_customer = None if "app" in principal.roles else principal.subject
    # Both wallets of a transfer in one query: a round trip fewer on every payment.
    accounts = await ledger.get_accounts(
        [a for a in (body.source_account_id, body.destination_account_id) if a is not None]
    )
    if body.kind == "topup":
        assert body.destination_account_id is not None  # noqa: S101 - kind_problems checked
        wallet = _wallet(accounts, body.destination_account_id, "destination_account_id",
                         body.currency, acting_customer)  # fmt: skip
        return wallet.owner, None
    assert body.source_account_id is not None  # noqa: S101 - kind_problems checked
    wallet = _wallet(accounts, body.source_account_id, "source_account_id",
                     body.currency, acting_customer)  # fmt: skip
    if body.kind != "transfer":
        return wallet.owner, None
    assert body.destination_account_id is not None  # noqa: S101
    if body.destination_account_id == body.source_account_id:
        raise _invalid("destination_account_id", "accounts_must_be_different",
                       "a transfer needs two different wallets")  # fmt: skip
    destination = _wallet(accounts, body.destination_account_id,
                          "destination_account_id", body.currency, None,
                          opaque=acting_customer is not None)  # fmt: skip
    return wallet.owner, destination.owner


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=PaymentPublic)
async def create_payment(  # noqa: PLR0917 - FastAPI passes dependencies by name
    body: PaymentCreate,
    request: Request,
    response: Response,
    principal: Payer,
    ledger: LedgerDep,
    key: IdempotencyHeader = None,
) -> PaymentPublic:
    """Move money: top up a wallet by card, transfer between wallets, or pay out to a bank."""
    key = require_idempotency_key(key)
    store = _payments(request)
    fingerprint = _fingerprint(body)
    try:
        customer, beneficiary = await _payer_and_beneficiary(body, principal, ledger)
    except ProblemError:
        # A retry of a payment accepted before gets its answer, whatever its wallets are
        # now (closed since, say); under a key used for another request it is the 409.
        earlier = await store.answered(scope=principal.subject, key=key, request_hash=fingerprint)
        if earlier is None:
            raise
        payment, created = earlier, False
    else:
        payment, created = await store.create(
            NewPayment(
                id=new_id("pay"),
                kind=body.kind,
                customer_id=customer,
                client_id=principal.own_client() if "app" in principal.roles else None,
                created_by=principal.subject,
                amount=body.amount,
                currency=body.currency,
                source_account_id=body.source_account_id,
                destination_account_id=body.destination_account_id,
                payment_method=body.payment_method,
                payout_destination=body.payout_destination,
                beneficiary_id=beneficiary,
            ),
            scope=principal.subject,
            key=key,
            request_hash=fingerprint,
        )
    if payment.status not in TERMINAL_STATUSES:
        _starter(request).submit(payment)  # committed above: the answer need not wait
    response.headers["Location"] = f"/v1/payments/{payment.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return _public(payment, viewer=principal)


async def _live(client: Client | None, payment: StoredPayment) -> PaymentState | None:
    """The saga's own view while it runs (status, timeline, what it waits for)."""
    if client is None or payment.status in TERMINAL_STATUSES:
        return None
    # None when the saga does not answer promptly: the table's view is still a true one,
    # only older.
    return await live_view(client.get_workflow_handle(payment.id), "get_payment", PaymentState)


@router.get("/{payment_id}", response_model=PaymentPublic)
async def get_payment(
    payment_id: str, request: Request, principal: Reader, temporal: TemporalClientDep
) -> PaymentPublic:
    """Status, amounts, decline code, risk band and reasons, timeline."""
    payment = _visible(principal, await _payments(request).get(payment_id), payment_id)
    return _public(payment, await _live(temporal, payment), viewer=principal)


@router.get("", response_model=PaymentList)
async def list_payments(  # noqa: PLR0917 - FastAPI passes query parameters by name
    request: Request,
    principal: Reader,
    # Typed, so a misspelt filter is a 422 naming it rather than an empty page.
    status_: Annotated[PaymentStatus | None, Query(alias="status")] = None,
    kind: PaymentKind | None = None,
    customer_id: Annotated[str | None, Query(max_length=100)] = None,
    cursor: Annotated[str | None, Query(pattern=r"^pay_[0-9a-z]{26}$")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> PaymentList:
    """Your payments, newest first; ``next_cursor`` pages. Staff may filter by customer."""
    store = _payments(request)
    scope: dict[str, str | None] = {}
    if _sees_all(principal):
        scope["customer_id"] = customer_id
    elif "app" in principal.roles:
        scope["client_id"] = principal.own_client()
    else:
        scope["customer_id"] = principal.subject
    rows = await store.list_payments(
        **scope, status=status_, kind=kind, before=cursor, limit=limit + 1
    )
    page = rows[:limit]
    return PaymentList(
        data=[_public(p, viewer=principal) for p in page],
        next_cursor=page[-1].id if len(rows) > limit and page else None,
    )


@router.post("/{payment_id}/cancel", response_model=PaymentPublic)
async def cancel_payment(
    payment_id: str, request: Request, principal: Actor, temporal: TemporalClientDep
) -> PaymentPublic:
    """Cancel, honoured until the money starts moving at the gateway (or, for a transfer,
    until it is posted). 409 ``payment_not_cancelable`` after that."""
    store = _payments(request)
    payment = _visible(principal, await store.get(payment_id), payment_id)
    client = temporal_or_503(temporal)
    too_late = ProblemError(
        409, "payment_not_cancelable", "The payment can no longer be canceled",
        f"payment {payment_id} is {payment.status}",
    )  # fmt: skip
    if payment.status in TERMINAL_STATUSES:
        raise too_late
    if payment.saga_started_at is None and not await _starter(request).start(payment):
        raise temporal_unavailable()
    try:
        state = await update(
            client.get_workflow_handle(payment_id), "cancel", result_type=PaymentState
        )
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.type == "PaymentNotCancelable":
            raise ProblemError(
                409, "payment_not_cancelable", "The payment can no longer be canceled",
                cause.message,
            ) from exc  # fmt: skip
        raise
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise  # Temporal away: 503 (api.errors)
        raise too_late from exc  # the saga finished meanwhile
    refreshed = await store.get(payment_id)
    return _public(refreshed or payment, state, viewer=principal)


def _refund_public(refund: StoredRefund) -> RefundPublic:
    return RefundPublic(
        id=refund.id,
        payment_id=refund.payment_id,
        amount=refund.amount,
        status=refund.status,
        failure_code=refund.failure_code,
        created_at=refund.created_at,
        completed_at=refund.completed_at,
    )


@router.post(
    "/{payment_id}/refunds", status_code=status.HTTP_202_ACCEPTED, response_model=RefundPublic
)
async def refund_payment(  # noqa: PLR0917 - FastAPI passes dependencies by name
    payment_id: str,
    request: Request,
    response: Response,
    principal: Actor,
    key: IdempotencyHeader = None,
    body: RefundCreate | None = None,
) -> RefundPublic:
    """Give back part or all of a succeeded top-up or transfer; with no body (or no
    ``amount``), everything not yet refunded. The refunds of a payment never add up to more
    than was captured (409 ``refund_exceeds_capture``)."""
    key = require_idempotency_key(key)
    # No body is the same request as ``{}``: one fingerprint, so either replays the other.
    body = body or RefundCreate()
    store = _payments(request)
    payment = _visible(principal, await store.get(payment_id), payment_id)
    if payment.kind == "payout":
        raise ProblemError(409, "payment_not_refundable", "Payouts cannot be refunded",
                           "a payout has left for the bank")  # fmt: skip
    if payment.kind == "transfer" and not (
        principal.is_staff or "app" in principal.roles
    ):  # the sender cannot pull money back out of someone else's wallet
        raise ProblemError(403, "forbidden", "Not allowed",
                           "transfers are refunded by operators or the app")  # fmt: skip
    refund, created = await store.reserve_refund(
        refund_id=new_id("rfd"),
        payment_id=payment_id,
        amount=body.amount,
        scope=principal.subject,
        key=key,
        request_hash=_fingerprint(body, payment_id),
        created_by=principal.subject,
    )
    # The committed reservation is the promise: with Temporal away the answer is still 202
    # and the sweep starts the refund once it is back (api/payment_starter.py).
    if refund.status == "pending" and refund.saga_started_at is None:
        await _starter(request).start_refund(payment, refund)
    response.headers["Location"] = f"/v1/payments/{payment_id}/refunds/{refund.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return _refund_public(refund)


@router.get("/{payment_id}/refunds", response_model=list[RefundPublic])
async def list_refunds(payment_id: str, request: Request, principal: Reader) -> list[RefundPublic]:
    store = _payments(request)
    _visible(principal, await store.get(payment_id), payment_id)
    return [_refund_public(r) for r in await store.refunds_of(payment_id)]


@router.get("/{payment_id}/refunds/{refund_id}", response_model=RefundPublic)
async def get_refund(
    payment_id: str, refund_id: str, request: Request, principal: Reader
) -> RefundPublic:
    """One refund of the payment: where a refund's ``Location`` points."""
    store = _payments(request)
    _visible(principal, await store.get(payment_id), payment_id)
    refund = await store.refund(payment_id, refund_id)
    if refund is None:  # a refund of another payment is not one of this payment's
        raise ProblemError(
            404, "refund_not_found", "No such refund",
            f"no refund {refund_id} of payment {payment_id}",
        )  # fmt: skip
    return _refund_public(refund)
