"""What the card gateway tells us, as plain values (the connector is ``infra/gateway.py``).

Amounts are integer minor units; currencies are upper-case ISO 4217 codes (the wire's
lower case is converted at the connector). ``payment_id`` is our ``pay_…`` id, which the
gateway keeps as ``metadata[payment_id]`` and shows as ``reference`` in its reports.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

# A PaymentIntent's status; the sandbox answers only succeeded or requires_payment_method
# (declined), a real provider may also answer the intermediate ones.
CHARGE_SUCCEEDED = "succeeded"
CHARGE_PROCESSING = "processing"  # the only status still on its way to an outcome
PAYOUT_PAID = "paid"
PAYOUT_FAILED = "failed"
# A payout that never left: failed at the bank, or canceled before it was sent.
PAYOUT_NOT_MADE = frozenset({PAYOUT_FAILED, "canceled"})

SettlementType = Literal["charge", "refund", "payout"]
# A charge not captured and without a decline code: why, by its status. Any other status
# (requires_action, requires_confirmation) waits for the customer, which we do not ask.
_REFUSAL_BY_STATUS = {"requires_payment_method": "card_declined", "canceled": "canceled"}


@dataclass(frozen=True)
class GatewayCharge:
    """A payment intent at the gateway (``pi_…``): one card charge for one payment."""

    id: str
    status: str
    amount: int
    amount_received: int
    currency: str
    payment_id: str | None
    # Why the card was refused (insufficient_funds, …); None unless declined.
    decline_code: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == CHARGE_SUCCEEDED

    @property
    def settled_unpaid(self) -> bool:
        """Not captured and not going to be without the customer: declined, waiting for
        3-D Secure or another card, or canceled. (``processing`` is still on its way.)"""
        return not self.succeeded and self.status != CHARGE_PROCESSING

    @property
    def refusal_code(self) -> str:
        """Why it was not captured: the card's decline code, else what the status says."""
        if self.decline_code is not None:
            return self.decline_code
        return _REFUSAL_BY_STATUS.get(self.status, "authentication_required")


@dataclass(frozen=True)
class GatewayRefund:
    """A refund (``re_…``) of part or all of a charge; ``charge_id`` is the intent's id."""

    id: str
    charge_id: str
    amount: int
    status: str
    currency: str = ""
    payment_id: str | None = None
    # The idempotency key it was made under (our metadata), None for one made without.
    refund_key: str | None = None


@dataclass(frozen=True)
class GatewayPayout:
    """Money sent from the platform's gateway balance to a bank account (``po_…``)."""

    id: str
    status: str
    amount: int
    currency: str
    payment_id: str | None
    # Why the bank refused it (account_closed, …); None unless failed.
    failure_code: str | None = None

    @property
    def paid(self) -> bool:
        return self.status == PAYOUT_PAID

    @property
    def not_made(self) -> bool:
        return self.status in PAYOUT_NOT_MADE


@dataclass(frozen=True)
class SettlementLine:
    """One row of the gateway's daily settlement report.

    Signed from the platform's gateway balance: a charge is positive, a refund or payout
    negative; ``net = amount - fee``.
    """

    id: str
    type: SettlementType
    payment_intent: str | None
    amount: int
    currency: str
    fee: int
    net: int
    reference: str | None
    created: dt.datetime
