"""Payments: the saga's inputs, state and activity contracts (ids, codes and amounts only).

Everything here travels through Temporal (encrypted, but still: no PII, no card data, no
secrets). A card is a gateway payment-method token such as ``pm_card_visa``; a bank account
for a payout is the gateway's token for it (``ba_…``).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from models.notifications import PlatformEvent

PAYMENT_WORKFLOW = "PaymentWorkflow"
REFUND_WORKFLOW = "RefundWorkflow"

# Activities, called by name so the workflow modules import no infrastructure.
SCORE_PAYMENT = "score_payment"
HOLD_FUNDS = "hold_funds"
POST_HOLD = "post_hold"
VOID_HOLD = "void_hold"
CHARGE_CARD = "charge_card"
FIND_CHARGE = "find_charge"
SEND_PAYOUT = "send_payout"
FIND_PAYOUT = "find_payout"
REFUND_CHARGE = "refund_charge"
RECORD_PAYMENT = "record_payment"
RECORD_REFUND = "record_refund"
RECORD_REFUND_OUTCOME = "record_refund_outcome"

PaymentKind = Literal["topup", "transfer", "payout"]
PaymentStatus = Literal[
    "processing",
    "in_review",
    "succeeded",
    "declined",
    "failed",
    "canceled",
    "partially_refunded",
    "refunded",
]
TERMINAL_STATUSES: frozenset[str] = frozenset(
    {"succeeded", "declined", "failed", "canceled", "partially_refunded", "refunded"}
)

# ApplicationError types the gateway activities raise (see infra/gateway.py's taxonomy).
GATEWAY_DECLINED = "GatewayDeclined"
GATEWAY_UNKNOWN_OUTCOME = "GatewayUnknownOutcome"
GATEWAY_REJECTED = "GatewayRejected"

# One gateway call: a few times the connector's read timeout (5 s). Kept short because it is
# also how long Temporal waits before retrying a call whose worker died mid-way.
GATEWAY_CALL_TIMEOUT = timedelta(seconds=20)

# The platform's account that money crosses on its way to and from the card gateway
# (an asset: what the gateway holds for us). One per currency, opened on first use.
GATEWAY_CLEARING = "gateway_clearing"


def platform_account_id(code: str, currency: str) -> str:
    return f"acc_platform_{code}_{currency.lower()}"


def wallet_account_id(owner: str, currency: str) -> str:
    """A customer's wallet: one per customer (Keycloak subject) and currency, named by a
    digest of both, so opening it is idempotent wherever it happens (API, onboarding)."""
    digest = hashlib.sha256(f"wallet:{owner}:{currency}".encode()).digest()
    return "acc_wallet_" + base64.b32encode(digest).decode().lower().rstrip("=")[:26]


def review_id_for(payment_id: str) -> str:
    """The compliance case of a payment shares its suffix: ``pay_X`` -> ``rev_X``."""
    return "rev_" + payment_id.removeprefix("pay_")


@dataclass(frozen=True)
class PaymentInput:
    payment_id: str
    kind: PaymentKind
    customer_id: str  # the Keycloak subject whose wallet pays (transfer/payout) or receives
    client_id: str | None  # the app that asked for it: its webhook endpoints hear about it
    amount: int
    currency: str
    source_account_id: str | None = None
    destination_account_id: str | None = None
    payment_method: str | None = None  # topup: the gateway's payment-method token
    payout_destination: str | None = None  # payout: the gateway's bank-account token
    created_at: str = ""  # ISO 8601, from the API
    # Cases about more than this need two officers (settings.four_eyes_threshold_minor).
    four_eyes_threshold_minor: int = 1_000_000
    # transfer: the Keycloak subject whose wallet receives it; it may not decide the review.
    beneficiary_id: str | None = None


@dataclass(frozen=True)
class TimelineEntry:
    at: str  # ISO 8601 (workflow time)
    event: str  # accepted, risk_scored, funds_held, review_opened, charged, …
    detail: str = ""


@dataclass(frozen=True)
class RiskSummary:
    band: str
    score: float
    reasons: list[str]
    model_version: str


@dataclass
class PaymentState:
    """What the ``get_payment`` query and the payments table show."""

    payment_id: str
    kind: str
    status: str
    amount: int
    currency: str
    decline_code: str | None = None
    risk: RiskSummary | None = None
    review_id: str | None = None
    gateway_reference: str | None = None
    captured_amount: int = 0
    waiting_for: str = ""
    timeline: list[TimelineEntry] = field(default_factory=list)


# ---- activity contracts ------------------------------------------------------------


@dataclass(frozen=True)
class ScoreInput:
    payment_id: str
    customer_id: str
    kind: str
    amount: int
    currency: str
    beneficiary: str | None  # destination wallet or bank token; None for a top-up
    created_at: str


@dataclass(frozen=True)
class HoldInput:
    transfer_id: str
    payment_id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    currency: str
    timeout_seconds: int | None  # None: held until the saga posts or voids it


@dataclass(frozen=True)
class ResolveHoldInput:
    transfer_id: str
    payment_id: str
    hold_id: str
    # void only: the id the saga posts the hold under, to tell "posted" from "expired"
    post_id: str | None = None


# What ``void_hold`` answers when the hold it was asked to release had been posted.
POSTED = "posted"


@dataclass(frozen=True)
class ChargeInput:
    payment_id: str
    idempotency_key: str
    amount: int
    currency: str
    payment_method: str


@dataclass(frozen=True)
class PayoutInput:
    payment_id: str
    idempotency_key: str
    amount: int
    currency: str
    destination: str


@dataclass(frozen=True)
class GatewayResult:
    """What the gateway did: ``succeeded``, ``declined`` (with code) or ``absent``
    (a lookup found nothing under our reference) or ``pending`` (not final yet)."""

    outcome: Literal["succeeded", "declined", "pending", "absent"]
    reference: str | None = None
    decline_code: str | None = None


@dataclass(frozen=True)
class RefundChargeInput:
    payment_id: str
    idempotency_key: str
    gateway_reference: str
    amount: int


@dataclass(frozen=True)
class PaymentRecord:
    """The saga's state written to the payments table (``record_payment``)."""

    payment_id: str
    status: str
    decline_code: str | None
    risk: RiskSummary | None
    review_id: str | None
    gateway_reference: str | None
    captured_amount: int
    timeline: list[TimelineEntry]
    # The terminal status's event, recorded by the same step (one step fewer per payment);
    # None in histories written before it was.
    event: PlatformEvent | None = None


@dataclass(frozen=True)
class PaymentResult:
    payment_id: str
    status: str
    decline_code: str | None = None


# ---- refunds -----------------------------------------------------------------------


@dataclass(frozen=True)
class RefundInput:
    refund_id: str
    payment_id: str
    kind: PaymentKind
    customer_id: str
    client_id: str | None
    amount: int
    currency: str
    # The wallet the refund takes back from, and where the money returns to.
    debit_account_id: str
    credit_account_id: str
    gateway_reference: str | None  # top-ups are refunded to the card at the gateway


@dataclass(frozen=True)
class RefundRecord:
    refund_id: str
    payment_id: str
    status: Literal["succeeded", "failed"]
    failure_code: str | None
    gateway_reference: str | None


@dataclass(frozen=True)
class RefundOutcome:
    """The payment after a refund was recorded: what its ``payment.*`` event reports."""

    payment_status: str
    payment_amount: int
    refunded_amount: int  # all of the payment's succeeded refunds, this one included


@dataclass(frozen=True)
class RefundResult:
    refund_id: str
    status: str
    failure_code: str | None
    payment_status: str  # the payment's status after this refund
