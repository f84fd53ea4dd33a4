"""Platform events and how they reach the world: signed webhooks and customer emails.

A workflow that reaches a terminal state builds one ``PlatformEvent`` and starts
``EventDeliveryWorkflow`` (workflow id = the event id, parent close policy ABANDON, so the
payment never waits for slow receivers). That workflow records the event, delivers it to
every enabled endpoint of the app that caused it, and mails the customer.

Everything here travels through Temporal and into webhook bodies, so it carries ids,
codes and amounts only: no names, no addresses, no card data.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from models.money import CURRENCY_EXPONENTS, Money

EVENT_DELIVERY_WORKFLOW = "EventDeliveryWorkflow"
RECORD_EVENT = "record_event"
DELIVER_WEBHOOK = "deliver_webhook"
EMAIL_CUSTOMER = "email_customer"

EVENT_TYPES: frozenset[str] = frozenset(
    {
        "payment.succeeded",
        "payment.declined",
        "payment.failed",
        "payment.canceled",
        "payment.refunded",
        "payment.partially_refunded",
        "payment.refund_failed",
    }
)


def not_an_event_type(value: str) -> str:
    """What a client is told of an event type we do not have."""
    return f"{value!r} is not one of: {', '.join(sorted(EVENT_TYPES))}"


# ApplicationError types deliver_webhook raises when retrying cannot help.
ENDPOINT_GONE = "EndpointGone"  # the receiver answered 410: the endpoint is now disabled
ENDPOINT_DISABLED = "EndpointDisabled"  # deleted or disabled before this attempt
FINAL_DELIVERY_ERRORS = (ENDPOINT_GONE, ENDPOINT_DISABLED)
# A payment's inline mail gave up at once, as one just failed (activities/notify.py).
INLINE_MAIL_PAUSED = "InlineMailPaused"


def event_id(*parts: str) -> str:
    """A deterministic ``evt_…`` id from the business facts that make the event unique,
    e.g. ``event_id(payment_id, "payment.succeeded")`` (add a sequence number for events
    that can happen more than once, such as partial refunds). Workflows call this instead of
    a random id: a replayed or retried start yields the same id, and Temporal refuses a
    second delivery workflow for it."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return "evt_" + base64.b32encode(digest).decode().lower()[:26]


@dataclass(frozen=True)
class PlatformEvent:
    """Something that happened which apps and customers hear about.

    ``data`` is the public object, e.g. for ``payment.*`` events (see ``payment_data``):
    ``{"object": "payment", "id": "pay_…", "kind": "topup", "amount": 1050,
    "currency": "EUR", "status": "succeeded"}`` plus ``decline_code`` or
    ``amount_refunded`` where they apply. Amounts are integer minor units.
    """

    id: str  # receivers de-duplicate on it
    type: str
    created_at: str  # ISO 8601 UTC; workflows pass workflow.now().isoformat()
    client_id: str | None  # the app whose endpoints get the webhook; None: no webhooks
    customer_id: str | None  # Keycloak user id of the customer to mail; None: no mail
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id.startswith("evt_"):
            raise ValueError(f"an event id starts with evt_, not {self.id!r}")
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}")


def payment_data(
    *,
    payment_id: str,
    kind: str,
    amount: int,
    currency: str,
    status: str,
    decline_code: str | None = None,
    amount_refunded: int | None = None,
) -> dict[str, Any]:
    """The public payment object of a ``payment.*`` event, with the keys receivers and the
    customer email read."""
    data: dict[str, Any] = {
        "object": "payment",
        "id": payment_id,
        "kind": kind,
        "amount": amount,
        "currency": currency,
        "status": status,
    }
    if decline_code is not None:
        data["decline_code"] = decline_code
    if amount_refunded is not None:
        data["amount_refunded"] = amount_refunded
    return data


def format_amount(amount: object, currency: object) -> str:
    """``1050, "EUR"`` -> ``"10.50 EUR"``, using the currency's exponent."""
    if isinstance(amount, int) and not isinstance(amount, bool) and currency in CURRENCY_EXPONENTS:
        if amount > 0:
            return str(Money(amount=amount, currency=str(currency)))
        exponent = CURRENCY_EXPONENTS[str(currency)]
        return f"{0:.{exponent}f} {currency}"
    return f"{amount} {currency}"  # not ours to judge here: say what we were given


# -- storage shapes (read back by the activities and the API) -----------------------------
@dataclass(frozen=True)
class WebhookEndpoint:
    id: str  # we_…
    client_id: str
    url: str
    event_types: list[str]
    enabled: bool
    created_at: datetime
    created_by: str  # subject of the caller that registered it
    deleted: bool = False
    # The endpoint's own signing secret as an envelope (never in the clear here); None for
    # an endpoint registered before endpoints had one (signed with the platform's secret).
    signing_secret: str | None = field(default=None, repr=False)
    # While its secret is rolled over: the one before, as an envelope (None: the platform's
    # secret), signing next to the new one until ``previous_secret_expires_at``.
    previous_signing_secret: str | None = field(default=None, repr=False)
    previous_secret_expires_at: datetime | None = None


@dataclass(frozen=True)
class DeliveryAttempt:
    event_id: str
    endpoint_id: str
    attempt: int
    status_code: int | None  # None: no answer (timeout, refused connection)
    error: str | None
    at: datetime


# -- activity and workflow inputs and results ----------------------------------------------
@dataclass(frozen=True)
class RecordedEvent:
    event_id: str
    endpoint_ids: list[str]  # enabled endpoints of the event's app subscribed to its type


@dataclass(frozen=True)
class WebhookDelivery:
    event_id: str
    endpoint_id: str


@dataclass(frozen=True)
class DeliveryResult:
    endpoint_id: str
    status_code: int
    attempt: int  # the attempt that the receiver accepted


WebhookOutcomeStatus = Literal["delivered", "endpoint_gone", "endpoint_disabled", "failed"]
EmailOutcomeStatus = Literal["sent", "already_sent", "no_address", "failed"]


@dataclass(frozen=True)
class WebhookOutcome:
    endpoint_id: str
    status: WebhookOutcomeStatus
    attempt: int | None = None  # of the accepted attempt, when delivered
    error: str | None = None


@dataclass(frozen=True)
class EmailOutcome:
    status: EmailOutcomeStatus
    error: str | None = None


@dataclass(frozen=True)
class DeliverySummary:
    """What the delivery workflow returns: one line per endpoint, and the email."""

    event_id: str
    event_type: str
    webhooks: list[WebhookOutcome]
    email: EmailOutcome | None  # None: the event concerns no customer
