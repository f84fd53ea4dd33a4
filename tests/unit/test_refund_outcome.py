"""What the saga hears of a refund: only a refund that gives money back is a success, and
a retry or a refusal first looks for a refund already made under the same key (the
provider forgets keys: Stripe after 24 hours)."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.payment import PaymentActivities
from infra.gateway import CardGateway
from models.payment import GATEWAY_REJECTED, GatewayResult, RefundChargeInput
from models.risk import RiskPolicy

REQUEST = RefundChargeInput(
    payment_id="pay_1", idempotency_key="rfd_1", gateway_reference="pi_1", amount=300
)


def refund_object(
    status: str, *, key: str | None = "rfd_1", refund_id: str = "re_1"
) -> dict[str, Any]:
    metadata = {"payment_id": "pay_1"} | ({"refund_key": key} if key else {})
    return {
        "id": refund_id,
        "object": "refund",
        "payment_intent": "pi_1",
        "amount": 300,
        "currency": "eur",
        "status": status,
        "metadata": metadata,
    }


class Provider:
    """Answers POST /v1/refunds with ``created`` and lists ``held`` for GET /v1/refunds."""

    def __init__(self, created: httpx.Response, held: list[dict[str, Any]]) -> None:
        self.created = created
        self.held = held
        self.posted: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.posted.append(dict(httpx.QueryParams(request.content.decode())))
            return self.created
        return httpx.Response(200, json={"object": "list", "has_more": False, "data": self.held})

    def activities(self) -> PaymentActivities:
        gateway = CardGateway(
            "http://gateway.test/",
            "sk_test_123",
            timeout=1.0,
            connect_timeout=0.5,
            transport=httpx.MockTransport(self),
        )
        unused = cast(Any, None)  # the refund step touches neither the ledger nor the model
        return PaymentActivities(unused, unused, gateway, unused, policy=RiskPolicy())


async def refund(provider: Provider, *, attempt: int = 1) -> GatewayResult:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt)
    result: GatewayResult = await env.run(provider.activities().refund_charge, REQUEST)
    return result


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("succeeded", "succeeded"),
        ("failed", "declined"),
        ("canceled", "declined"),
    ],
)
async def test_a_refund_object_counts_as_made_only_when_money_goes_back(
    status: str, outcome: str
) -> None:
    provider = Provider(httpx.Response(200, json=refund_object(status)), held=[])
    result = await refund(provider)
    assert (result.outcome, result.reference) == (outcome, "re_1")
    assert provider.posted[0]["metadata[refund_key]"] == "rfd_1"  # findable later


async def test_a_retry_takes_the_refund_made_under_its_key_and_sends_nothing() -> None:
    made = refund_object("succeeded", refund_id="re_made")
    other = refund_object("succeeded", key="rfd_other", refund_id="re_other")
    provider = Provider(httpx.Response(500), held=[other, made])
    result = await refund(provider, attempt=2)
    assert (result.outcome, result.reference) == ("succeeded", "re_made")
    assert provider.posted == []


async def test_a_refusal_after_the_key_was_forgotten_is_not_taken_for_nothing_refunded() -> None:
    """The first attempt refunded; its answer was lost and the retry came after the provider
    forgot the key, so the request is new to it: refused, as the charge is refunded."""
    already = httpx.Response(
        400,
        json={"error": {"type": "invalid_request_error", "code": "charge_already_refunded",
                        "message": "Charge pi_1 has already been refunded."}},
    )  # fmt: skip
    provider = Provider(already, held=[refund_object("succeeded", refund_id="re_first")])
    result = await refund(provider)
    assert (result.outcome, result.reference) == ("succeeded", "re_first")


async def test_a_refusal_with_no_refund_under_its_key_stays_a_refusal() -> None:
    refused = httpx.Response(
        400, json={"error": {"type": "invalid_request_error", "message": "No such charge"}}
    )
    provider = Provider(refused, held=[refund_object("succeeded", key=None)])
    with pytest.raises(ApplicationError) as caught:
        await refund(provider)
    assert caught.value.type == GATEWAY_REJECTED
    assert len(provider.posted) == 1  # sent once, then looked up, not sent again


@pytest.mark.parametrize("status", ["pending", "requires_action"])
async def test_a_refund_not_settled_is_asked_about_again_not_booked(status: str) -> None:
    """A pending refund can still fail: booked at once, the wallet would be debited for
    money the card never got back. The attempt fails, retryable, and the next one reads
    the refund made under the key."""
    provider = Provider(httpx.Response(200, json=refund_object(status)), held=[])
    with pytest.raises(ApplicationError) as caught:
        await refund(provider)
    assert (caught.value.type, caught.value.non_retryable) == ("RefundPending", False)

    provider.held = [refund_object(status)]  # still not settled at the next attempt
    with pytest.raises(ApplicationError):
        await refund(provider, attempt=2)
    provider.held = [refund_object("succeeded")]
    result = await refund(provider, attempt=3)
    assert (result.outcome, result.reference) == ("succeeded", "re_1")
    assert len(provider.posted) == 1  # the later attempts only read it
