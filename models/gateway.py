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
PAYOUT_PAID = "paid"
PAYOUT_FAILED = "failed"

SettlementType = Literal["charge", "refund", "payout"]


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


@dataclass(frozen=True)
class GatewayRefund:
    """A refund (``re_…``) of part or all of a charge; ``charge_id`` is the intent's id."""

    id: str
    charge_id: str
    amount: int
    status: str
    currency: str = ""
    payment_id: str | None = None


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
