"""What the saga hears of a refund the provider answers with a refund object (not an error):
only a refund that gives money back is a success."""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest

from activities.payment import PaymentActivities
from infra.gateway import CardGateway
from models.payment import RefundChargeInput
from models.risk import RiskPolicy


def activities_answering(status: str) -> PaymentActivities:
    def provider(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "id": "re_1",
                "object": "refund",
                "payment_intent": "pi_1",
                "amount": 300,
                "currency": "eur",
                "status": status,
                "metadata": {"payment_id": "pay_1"},
            },
        )

    gateway = CardGateway(
        "http://gateway.test/",
        "sk_test_123",
        timeout=1.0,
        connect_timeout=0.5,
        transport=httpx.MockTransport(provider),
    )
    unused = cast(Any, None)  # the refund step touches neither the ledger nor the model
    return PaymentActivities(unused, unused, gateway, unused, policy=RiskPolicy())


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("succeeded", "succeeded"),
        ("pending", "succeeded"),  # taken on: the money is on its way back
        ("failed", "declined"),
        ("canceled", "declined"),
    ],
)
async def test_a_refund_object_counts_as_made_only_when_money_goes_back(
    status: str, outcome: str
) -> None:
    result = await activities_answering(status).refund_charge(
        RefundChargeInput(
            payment_id="pay_1", idempotency_key="rfd_1", gateway_reference="pi_1", amount=300
        )
    )
    assert (result.outcome, result.reference) == (outcome, "re_1")
