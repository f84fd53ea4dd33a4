"""The card gateway connector against a fake gateway (httpx.MockTransport).

What it sends (Stripe's wire format) and how every kind of answer or failure lands in the
error taxonomy of infra/gateway.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from activities.payment import charge_result, payout_result
from infra.gateway import (
    CardGateway,
    GatewayDeclined,
    GatewayError,
    GatewayRejected,
    GatewayRetryable,
    GatewayUnknownOutcome,
)
from infra.settings import Settings
from models.gateway import GatewayCharge, GatewayPayout
from models.payment import GatewayResult

Handler = Callable[[httpx.Request], httpx.Response]


def intent(**overrides: Any) -> dict[str, Any]:
    body = {
        "id": "pi_1",
        "object": "payment_intent",
        "status": "succeeded",
        "amount": 1050,
        "amount_received": 1050,
        "currency": "eur",
        "metadata": {"payment_id": "pay_1"},
        "latest_charge": "ch_1",
        "last_payment_error": None,
    }
    body.update(overrides)
    return body


def payout_object(**overrides: Any) -> dict[str, Any]:
    body = {
        "id": "po_1",
        "object": "payout",
        "status": "paid",
        "amount": 700,
        "currency": "gbp",
        "destination": "ba_bfc_ok",
        "metadata": {"payment_id": "pay_2"},
        "failure_code": None,
        "failure_message": None,
    }
    body.update(overrides)
    return body


def gateway(handler: Handler) -> CardGateway:
    return CardGateway(
        "http://gateway.test/",
        "sk_test_123",
        timeout=1.0,
        connect_timeout=0.5,
        transport=httpx.MockTransport(handler),
    )


async def charge(gw: CardGateway, **overrides: Any):
    args: dict[str, Any] = {
        "idempotency_key": "pay_1:charge",
        "payment_id": "pay_1",
        "amount": 1050,
        "currency": "EUR",
        "payment_method": "pm_card_visa",
    }
    args.update(overrides)
    return await gw.charge(**args)


def form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode(), strict_parsing=True).items()}


# -- what goes on the wire -------------------------------------------------------------------


async def test_charge_sends_stripe_form_with_key_metadata_and_lower_case_currency() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=intent())

    result = await charge(gateway(handler))

    (request,) = seen
    assert request.method == "POST"
    assert request.url == "http://gateway.test/v1/payment_intents"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["idempotency-key"] == "pay_1:charge"
    assert request.headers["authorization"] == "Bearer sk_test_123"
    assert form(request) == {
        "amount": "1050",
        "currency": "eur",
        "payment_method": "pm_card_visa",
        "payment_method_types[0]": "card",
        "confirm": "true",
        "metadata[payment_id]": "pay_1",
    }
    # Back at our side of the boundary the currency is upper case again.
    assert result.currency == "EUR"
    assert (result.id, result.amount_received, result.payment_id) == ("pi_1", 1050, "pay_1")
    assert result.succeeded


async def test_refund_and_payout_send_their_keys_and_references() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/refunds":
            return httpx.Response(
                200,
                json={
                    "id": "re_1",
                    "object": "refund",
                    "amount": 300,
                    "currency": "eur",
                    "payment_intent": "pi_1",
                    "status": "succeeded",
                    "metadata": {"payment_id": "pay_1"},
                },
            )
        return httpx.Response(200, json=payout_object())

    gw = gateway(handler)
    refund = await gw.refund(
        idempotency_key="pay_1:refund", charge_id="pi_1", amount=300, payment_id="pay_1"
    )
    payout = await gw.payout(
        idempotency_key="pay_2:payout",
        payment_id="pay_2",
        amount=700,
        currency="GBP",
        destination="ba_bfc_ok",
    )

    refund_request, payout_request = seen
    assert refund_request.headers["idempotency-key"] == "pay_1:refund"
    assert form(refund_request) == {
        "payment_intent": "pi_1",
        "amount": "300",
        "metadata[payment_id]": "pay_1",
        "metadata[refund_key]": "pay_1:refund",
    }
    assert payout_request.headers["idempotency-key"] == "pay_2:payout"
    assert form(payout_request) == {
        "amount": "700",
        "currency": "gbp",
        "destination": "ba_bfc_ok",
        "metadata[payment_id]": "pay_2",
    }
    assert (refund.id, refund.charge_id, refund.amount, refund.currency) == (
        "re_1",
        "pi_1",
        300,
        "EUR",
    )
    assert (payout.status, payout.currency, payout.payment_id) == ("paid", "GBP", "pay_2")


async def test_find_charge_searches_by_payment_id_and_prefers_the_succeeded_intent() -> None:
    queries: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        queries.append(request.url.params["query"])
        declined = intent(
            id="pi_declined",
            status="requires_payment_method",
            amount_received=0,
            last_payment_error={"code": "card_declined", "decline_code": "insufficient_funds"},
        )
        return httpx.Response(
            200,
            json={"object": "search_result", "has_more": False, "data": [declined, intent()]},
        )

    found = await gateway(handler).find_charge("pay_1")

    assert queries == ["metadata['payment_id']:'pay_1'"]
    assert found is not None
    assert (found.id, found.status) == ("pi_1", "succeeded")


async def test_find_charge_answers_none_when_the_gateway_has_no_intent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"object": "search_result", "has_more": False, "data": []})

    assert await gateway(handler).find_charge("pay_unknown") is None


async def test_refunds_of_follows_pages() -> None:
    def refund(n: int) -> dict[str, Any]:
        return {
            "id": f"re_{n}",
            "amount": n,
            "currency": "eur",
            "payment_intent": "pi_1",
            "status": "succeeded",
        }

    cursors: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("starting_after")
        cursors.append(after)
        if after is None:
            return httpx.Response(200, json={"has_more": True, "data": [refund(3), refund(2)]})
        return httpx.Response(200, json={"has_more": False, "data": [refund(1)]})

    refunds = await gateway(handler).refunds_of("pi_1")

    assert [r.id for r in refunds] == ["re_3", "re_2", "re_1"]
    assert cursors == [None, "re_2"]


async def test_settlement_report_parses_the_csv() -> None:
    csv_text = (
        "id,type,payment_intent,amount,currency,fee,net,reference,created\n"
        "ch_1,charge,pi_1,1000,eur,39,961,pay_1,2025-03-04T10:00:00Z\n"
        "po_1,payout,,-500,eur,0,-500,pay_2,2025-03-04T11:30:00Z\n"
    )
    dates: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        dates.append(request.url.params["date"])
        return httpx.Response(200, text=csv_text, headers={"content-type": "text/csv"})

    lines = await gateway(handler).settlement_report(dt.date(2025, 3, 4))

    assert dates == ["2025-03-04"]
    charge_line, payout_line = lines
    assert (charge_line.type, charge_line.amount, charge_line.fee, charge_line.net) == (
        "charge",
        1000,
        39,
        961,
    )
    assert charge_line.currency == "EUR"
    assert charge_line.reference == "pay_1"
    assert charge_line.created == dt.datetime(2025, 3, 4, 10, tzinfo=dt.UTC)
    assert payout_line.payment_intent is None
    assert payout_line.amount == -500


# -- the error taxonomy ------------------------------------------------------------------------


async def test_card_error_402_is_a_decline_with_the_decline_code() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        declined = intent(status="requires_payment_method", amount_received=0)
        return httpx.Response(
            402,
            json={
                "error": {
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": "insufficient_funds",
                    "message": "Your card has insufficient funds.",
                    "payment_intent": declined,
                }
            },
        )

    with pytest.raises(GatewayDeclined) as caught:
        await charge(gateway(handler))

    assert caught.value.code == "insufficient_funds"
    assert "insufficient funds" in caught.value.message
    assert caught.value.charge is not None
    assert caught.value.charge.status == "requires_payment_method"


async def test_failed_payout_is_a_decline_with_the_failure_code() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json=payout_object(
                status="failed",
                failure_code="account_closed",
                failure_message="The bank account has been closed.",
            ),
        )

    with pytest.raises(GatewayDeclined) as caught:
        await gateway(handler).payout(
            idempotency_key="k",
            payment_id="pay_2",
            amount=700,
            currency="GBP",
            destination="ba_bfc_closed",
        )

    assert caught.value.code == "account_closed"
    assert caught.value.payout is not None


@pytest.mark.parametrize("status", [500, 502, 503, 429, 409])
async def test_server_errors_and_throttling_are_retryable(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"type": "api_error", "message": "boom"}})

    with pytest.raises(GatewayRetryable) as caught:
        await charge(gateway(handler))
    assert caught.value.status == status


async def test_a_non_json_server_error_is_still_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>")

    with pytest.raises(GatewayRetryable):
        await charge(gateway(handler))


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.PoolTimeout("no free connection"),
    ],
)
async def test_a_request_that_never_left_is_retryable(failure: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(GatewayRetryable):
        await charge(gateway(handler))


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset by peer"),
        httpx.WriteTimeout("write timed out"),
    ],
)
async def test_a_charge_that_may_have_been_sent_has_an_unknown_outcome(failure: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    gw = gateway(handler)
    with pytest.raises(GatewayUnknownOutcome):
        await charge(gw)
    with pytest.raises(GatewayUnknownOutcome):
        await gw.payout(
            idempotency_key="k", payment_id="p", amount=1, currency="EUR", destination="ba"
        )


async def test_a_lookup_that_times_out_is_only_retryable() -> None:
    # A read changes nothing at the gateway, so its outcome is never "unknown".
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out")

    with pytest.raises(GatewayRetryable):
        await gateway(handler).find_charge("pay_1")


async def test_an_unreadable_success_leaves_the_charge_unknown() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="not json")

    with pytest.raises(GatewayUnknownOutcome):
        await charge(gateway(handler))


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (
            400,
            {"type": "idempotency_error", "message": "Keys for idempotent..."},
            "idempotency_error",
        ),
        (
            400,
            {"type": "invalid_request_error", "code": "resource_missing", "message": "No such"},
            "resource_missing",
        ),
        (401, {"type": "invalid_request_error", "message": "Invalid API Key provided."}, None),
        (404, {"type": "invalid_request_error", "code": "resource_missing", "message": "-"}, None),
    ],
)
async def test_invalid_requests_are_rejected(
    status: int, error: dict[str, str], code: str | None
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": error})

    with pytest.raises(GatewayRejected) as caught:
        await charge(gateway(handler))
    assert caught.value.status == status
    if code is not None:
        assert caught.value.code == code


async def test_every_failure_is_a_gateway_error() -> None:
    for cls in (GatewayDeclined, GatewayRetryable, GatewayUnknownOutcome, GatewayRejected):
        assert issubclass(cls, GatewayError)


async def test_from_settings_uses_the_configured_url_and_timeouts() -> None:
    settings = Settings(
        gateway_base_url="https://psp.example/",
        gateway_timeout_seconds=7.5,
        gateway_connect_timeout_seconds=1.5,
    )
    gw = CardGateway.from_settings(settings, "sk_live_secret")
    try:
        client = gw._client
        assert str(client.base_url) == "https://psp.example"
        assert client.timeout.read == 7.5
        assert client.timeout.connect == 1.5
        # The key is never shown in a repr.
        assert "sk_live_secret" not in repr(gw)
    finally:
        await gw.aclose()
    assert Settings().gateway_url == "http://127.0.0.1:8101"


@pytest.mark.parametrize(
    ("status", "decline_code", "outcome", "code"),
    [
        ("succeeded", None, "succeeded", None),
        ("processing", None, "pending", None),  # still on its way: looked up again
        ("requires_payment_method", "insufficient_funds", "declined", "insufficient_funds"),
        ("requires_payment_method", None, "declined", "card_declined"),
        ("requires_action", None, "declined", "authentication_required"),
        ("canceled", None, "declined", "canceled"),
    ],
)
def test_a_charge_a_lookup_finds_reads_as_the_charge_call_reads_it(
    status: str, decline_code: str | None, outcome: str, code: str | None
) -> None:
    """Read otherwise, a canceled intent or one waiting for 3-D Secure stayed pending, and
    the saga looked it up until its hold expired."""
    found = GatewayCharge(
        id="pi_1", status=status, amount=1050, amount_received=0, currency="EUR",
        payment_id="pay_1", decline_code=decline_code,
    )  # fmt: skip
    result = charge_result(found)
    assert (result.outcome, result.decline_code) == (outcome, code)


async def test_a_canceled_payout_never_left_and_reads_as_declined() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=payout_object(status="canceled"))

    with pytest.raises(GatewayDeclined) as caught:
        await gateway(handler).payout(
            idempotency_key="k", payment_id="pay_2", amount=700, currency="GBP",
            destination="ba_bfc_ok",
        )  # fmt: skip
    assert caught.value.code == "payout_canceled"
    found = GatewayPayout(id="po_1", status="canceled", amount=700, currency="GBP",
                          payment_id="pay_2")  # fmt: skip
    assert payout_result(found) == GatewayResult("declined", "po_1", "payout_canceled")
    in_transit = GatewayPayout(id="po_1", status="in_transit", amount=700, currency="GBP",
                               payment_id="pay_2")  # fmt: skip
    assert payout_result(in_transit).outcome == "pending"
