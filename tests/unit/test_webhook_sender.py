"""The webhook sender against a fake receiver (httpx.MockTransport), the endpoint URL rules,
where webhooks may go when only public addresses are allowed, and the customer mail's
wording."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from typing import Any

import httpx
import pytest

from activities.notify import customer_message
from api.routes.webhooks import url_problem
from infra.settings import Settings
from infra.webhook_destinations import url_host_problem
from infra.webhooks import (
    DestinationRefused,
    EndpointGone,
    InvalidSignature,
    UnusableURL,
    WebhookFailed,
    WebhookSender,
    create_webhook_client,
    event_body,
    verify,
)
from models.notifications import PlatformEvent, event_id, payment_data

SECRET = "whsec-unit"
NOW = 1_790_000_000
BODY = event_body(event_id="evt_x", event_type="payment.failed", created_at="t", data={})


def sender(handler) -> WebhookSender:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return WebhookSender(client, SECRET, clock=lambda: NOW)


async def test_a_request_carries_the_event_id_type_and_a_signature_over_its_body() -> None:
    seen: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    accepted = await sender(receiver).send(
        url="https://app.example/hooks", event_id="evt_x", event_type="payment.failed", body=BODY
    )
    assert accepted.status_code == 204
    (request,) = seen
    assert request.method == "POST"
    assert request.content == BODY
    assert request.headers["BFC-Event-Id"] == "evt_x"
    assert request.headers["BFC-Event-Type"] == "payment.failed"
    assert request.headers["Content-Type"] == "application/json"
    verify(SECRET, request.headers["BFC-Signature"], request.content, now=NOW)


async def test_during_a_rollover_each_secret_signs_and_none_stands_for_the_platforms() -> None:
    seen: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    await sender(receiver).send(
        url="https://app.example/hooks",
        event_id="evt_x",
        event_type="payment.failed",
        body=BODY,
        secrets=("whsec_new", None),
    )
    header = seen[0].headers["BFC-Signature"]
    assert header.count("v1=") == 2
    for secret in ("whsec_new", SECRET):  # a receiver on either secret accepts it
        verify(secret, header, BODY, now=NOW)
    with pytest.raises(InvalidSignature):
        verify("whsec_someone_else", header, BODY, now=NOW)


@pytest.mark.parametrize("status", [301, 400, 404, 500, 503])
async def test_anything_but_2xx_raises_for_a_retry(status: int) -> None:
    receiver = sender(lambda _: httpx.Response(status, text="x" * 10_000))
    with pytest.raises(WebhookFailed) as failed:
        await receiver.send(url="https://a.example/", event_id="e", event_type="t", body=BODY)
    assert failed.value.status_code == status
    assert not isinstance(failed.value, EndpointGone)
    assert len(str(failed.value)) < 300  # an excerpt of the answer, not the whole of it


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        (b"gone\x00", "gone\ufffd"),
        (b"bad \xff\xfe utf-8", "bad \ufffd\ufffd utf-8"),
        ("x" * 199 + "é", "x" * 199 + "\ufffd"),  # the excerpt cuts a character in two
    ],
)
async def test_an_error_excerpt_is_text_postgres_can_store(answer: bytes | str, shown: str) -> None:
    # PostgreSQL text holds no NUL byte: one in the excerpt made the attempt's row fail to
    # insert, so the attempt went unrecorded.
    content = answer.encode() if isinstance(answer, str) else answer
    receiver = sender(lambda _: httpx.Response(500, content=content))
    with pytest.raises(WebhookFailed) as failed:
        await receiver.send(url="https://a.example/", event_id="e", event_type="t", body=BODY)
    message = str(failed.value)
    assert message == f"the endpoint answered 500: {shown}"
    assert "\x00" not in message
    message.encode()  # valid UTF-8 throughout (no lone surrogates)


async def test_410_gone_is_its_own_error() -> None:
    receiver = sender(lambda _: httpx.Response(410))
    with pytest.raises(EndpointGone):
        await receiver.send(url="https://a.example/", event_id="e", event_type="t", body=BODY)


async def test_no_answer_raises_for_a_retry() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(WebhookFailed) as failed:
        await sender(unreachable).send(
            url="https://a.example/", event_id="e", event_type="t", body=BODY
        )
    assert failed.value.status_code is None
    assert "ConnectError" in str(failed.value)


@pytest.mark.parametrize(
    ("url", "allow_http", "problem"),
    [
        ("https://app.example/hooks?x=1", False, None),
        ("http://127.0.0.1:9999/hooks", True, None),
        ("http://app.example/hooks", False, "must start with https://"),
        ("ftp://app.example/hooks", True, "must start with https:// or http://"),
        ("app.example/hooks", True, "must start with"),
        ("https:///hooks", True, "no host"),
        ("https://user:pw@app.example/", True, "credentials"),
        ("https://app.example/#frag", True, "fragment"),
        ("https://app.example:99999/", True, "cannot be parsed"),
        ("https://app.example/a b", True, "whitespace"),
        ("https://0177.0.0.1/", True, "cannot be parsed"),  # not an IPv4 address httpx takes
        ("https://xn--/", True, "cannot be parsed"),  # a malformed IDNA label
        ("https://bücher.example/hook", True, None),
    ],
)
def test_endpoint_url_rules(url: str, allow_http: bool, problem: str | None) -> None:
    found = url_problem(url, allow_http=allow_http)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://93.184.216.34/hooks", None),
        ("https://hooks.example/hooks", None),  # a name: checked when sending
        ("https://127.0.0.1/hooks", "not 127.0.0.1"),
        ("https://[::1]:8443/hooks", "not ::1"),
        ("https://[::ffff:127.0.0.1]/hooks", "not ::ffff:7f00:1"),  # loopback, IPv4-mapped
        ("https://10.1.2.3/hooks", "not 10.1.2.3"),
        ("https://192.168.0.10/hooks", "not 192.168.0.10"),
        ("https://169.254.169.254/latest/meta-data", "not 169.254.169.254"),
        ("https://100.64.0.1/hooks", "not 100.64.0.1"),
        ("https://localhost:8200/v1/sys", "not localhost"),
        ("https://localhost./v1/sys", "not localhost"),
        # IPv4 shorthand that resolvers read as loopback
        ("https://127.1/hooks", "not 127.0.0.1"),
        ("https://2130706433/hooks", "not 127.0.0.1"),
        ("https://0x7f000001/hooks", "not 127.0.0.1"),
        ("https://8.8.8.8/hooks", None),
        # IPv6 forms that lead to a private IPv4 address, and site-local
        ("https://[64:ff9b::a9fe:a9fe]/hooks", "not 64:ff9b::a9fe:a9fe"),  # NAT64
        ("https://[2002:a9fe:a9fe::]/hooks", "not 2002:a9fe:a9fe::"),  # 6to4
        ("https://[::7f00:1]/hooks", "not ::7f00:1"),  # IPv4-compatible
        ("https://[fec0::1]/hooks", "not fec0::1"),
        ("https://[::ffff:0:a9fe:a9fe]/hooks", "not ::ffff:0:a9fe:a9fe"),  # SIIT-translated
        ("https://[64:ff9b::808:808]/hooks", None),  # NAT64 of a public address
        ("https://[2606:4700:4700::1111]/hooks", None),
    ],
)
def test_only_public_addresses_register_when_private_ones_are_not_allowed(
    url: str, problem: str | None
) -> None:
    found = url_problem(url, allow_http=False, allow_private=False)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
    assert url_problem(url, allow_http=False, allow_private=True) is None


@pytest.mark.parametrize("url", ["https://0177.0.0.1/", "https://xn--/", "https://[::1]x/"])
def test_a_url_the_sender_cannot_parse_is_refused_in_every_configuration(url: str) -> None:
    # Registered, it would fail every delivery attempt (and, in production configuration,
    # the address check raised out of the registration: a 500).
    for allow_private in (False, True):
        found = url_problem(url, allow_http=True, allow_private=allow_private)
        assert found is not None and "cannot be parsed" in found
    problem = url_host_problem(url)
    assert problem is not None and "cannot be parsed" in problem


def public_only(handler, addresses: dict[str, list[str]]) -> WebhookSender:
    async def resolver(host: str, port: int) -> list[str]:
        if host not in addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return addresses[host]

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return WebhookSender(
        client, SECRET, clock=lambda: NOW, allow_private_addresses=False, resolver=resolver
    )


async def test_a_public_only_sender_connects_to_the_address_it_checked() -> None:
    seen: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    sender_ = public_only(receiver, {"hooks.example": ["93.184.216.34"]})
    await sender_.send(
        url="https://hooks.example:8443/in?x=1", event_id="e", event_type="t", body=BODY
    )
    (request,) = seen
    # Pinned to the checked address; still addressed to the name, its certificate checked
    # against the name, and signed as usual.
    assert (request.url.host, request.url.port, request.url.path) == ("93.184.216.34", 8443, "/in")
    assert request.headers["Host"] == "hooks.example:8443"
    assert request.extensions["sni_hostname"] == "hooks.example"
    verify(SECRET, request.headers["BFC-Signature"], request.content, now=NOW)


@pytest.mark.parametrize(
    ("url", "addresses", "connected", "host", "sni"),
    [
        # A non-ASCII name: resolved, named in Host and checked by TLS in its ASCII form.
        ("https://bücher.example/hook", {"xn--bcher-kva.example": ["93.184.216.34"]},
         "93.184.216.34", "xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("https://ß.example:8443/", {"xn--zca.example": ["93.184.216.34"]},
         "93.184.216.34", "xn--zca.example:8443", "xn--zca.example"),
        # An IPv6 literal keeps its brackets in Host, else its port reads as part of it.
        ("https://[2606:4700:4700::1111]:8443/", {}, "2606:4700:4700::1111",
         "[2606:4700:4700::1111]:8443", "2606:4700:4700::1111"),
        ("https://[2606:4700:4700::1111]/", {}, "2606:4700:4700::1111",
         "[2606:4700:4700::1111]", "2606:4700:4700::1111"),
        # The scheme's default port is left out, as httpx itself writes Host.
        ("https://hooks.example:443/", {"hooks.example": ["93.184.216.34"]},
         "93.184.216.34", "hooks.example", "hooks.example"),
        ("http://hooks.example:443/", {"hooks.example": ["93.184.216.34"]},
         "93.184.216.34", "hooks.example:443", None),
    ],
)  # fmt: skip
async def test_a_pinned_request_names_its_host_as_http_requires(
    url: str, addresses: dict[str, list[str]], connected: str, host: str, sni: str | None
) -> None:
    seen: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    await public_only(receiver, addresses).send(url=url, event_id="e", event_type="t", body=BODY)
    (request,) = seen
    assert request.url.host == connected
    assert request.headers["Host"] == host
    assert request.extensions.get("sni_hostname") == sni
    # Without pinning, httpx writes the same Host.
    assert httpx.Request("POST", url).headers["Host"] == host


async def test_a_public_only_sender_tries_the_next_address_it_cannot_connect_to() -> None:
    tried: list[str] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.host)
        if request.url.host == "2606:4700:4700::1111":  # a host without an IPv6 route, say
            raise httpx.ConnectError("Network is unreachable", request=request)
        return httpx.Response(200)

    names = {"dual.example": ["2606:4700:4700::1111", "93.184.216.34"]}
    accepted = await public_only(receiver, names).send(
        url="https://dual.example/in", event_id="e", event_type="t", body=BODY
    )
    assert accepted.status_code == 200
    assert tried == ["2606:4700:4700::1111", "93.184.216.34"]


async def test_only_a_failure_to_connect_moves_on_and_all_failing_is_one_retry() -> None:
    tried: list[str] = []

    def unreachable(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.host)
        raise httpx.ConnectTimeout("timed out", request=request)

    names = {"two.example": ["93.184.216.34", "93.184.216.35"]}
    with pytest.raises(WebhookFailed, match=r"93\.184\.216\.35") as failed:
        await public_only(unreachable, names).send(
            url="https://two.example/", event_id="e", event_type="t", body=BODY
        )
    assert tried == ["93.184.216.34", "93.184.216.35"] and failed.value.status_code is None

    # Once the request may have been sent (no answer in time), the next address is not
    # tried: the receiver might get the event twice within one attempt.
    tried.clear()

    def silent(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.host)
        raise httpx.ReadTimeout("no answer", request=request)

    with pytest.raises(WebhookFailed):
        await public_only(silent, names).send(
            url="https://two.example/", event_id="e", event_type="t", body=BODY
        )
    assert tried == ["93.184.216.34"]


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.0.0.7"],
        ["93.184.216.34", "127.0.0.1"],
        ["fd00::1"],
        ["169.254.169.254"],
        ["64:ff9b::a9fe:a9fe"],  # a DNS64 answer for the metadata service
        ["2002:7f00:1::"],
    ],
)
async def test_a_public_only_sender_refuses_a_name_with_any_private_address(
    addresses: list[str],
) -> None:
    seen: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    sender_ = public_only(receiver, {"in.example": addresses})
    with pytest.raises(DestinationRefused, match="non-public"):
        await sender_.send(url="https://in.example/", event_id="e", event_type="t", body=BODY)
    assert seen == []  # nothing left the building


async def test_a_name_that_does_not_resolve_is_a_failure_to_retry_not_a_refusal() -> None:
    sender_ = public_only(lambda _: httpx.Response(200), {})
    with pytest.raises(WebhookFailed) as failed:
        await sender_.send(url="https://gone.example/", event_id="e", event_type="t", body=BODY)
    assert not isinstance(failed.value, DestinationRefused)


async def test_the_real_resolver_refuses_localhost() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(200)))
    sender_ = WebhookSender(client, SECRET, allow_private_addresses=False)
    with pytest.raises(DestinationRefused):
        await sender_.send(url="http://localhost:8200/", event_id="e", event_type="t", body=BODY)


@pytest.mark.parametrize("allow_private", [True, False])
@pytest.mark.parametrize("url", ["https://0177.0.0.1/", "https://xn--/"])
async def test_a_stored_url_that_cannot_be_parsed_is_a_failed_attempt(
    url: str, allow_private: bool
) -> None:
    # Registered before registration refused it: the attempt fails (and is recorded)
    # instead of an exception escaping the sender.
    seen: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    sender_ = (
        sender(receiver) if allow_private else public_only(receiver, {"xn--": ["93.184.216.34"]})
    )
    with pytest.raises(UnusableURL, match="cannot be parsed") as failed:
        await sender_.send(url=url, event_id="e", event_type="t", body=BODY)
    assert failed.value.status_code is None
    assert seen == []


def test_event_ids_are_deterministic_per_business_fact() -> None:
    first = event_id("pay_1", "payment.succeeded")
    assert first == event_id("pay_1", "payment.succeeded")
    assert first != event_id("pay_1", "payment.refunded")
    assert first != event_id("pay_2", "payment.succeeded")
    assert first.startswith("evt_") and len(first) == 30


def test_an_event_refuses_an_unknown_type_or_a_foreign_id() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        PlatformEvent(id="evt_1", type="payment.teleported", created_at="", client_id=None,
                      customer_id=None)  # fmt: skip
    with pytest.raises(ValueError, match="evt_"):
        PlatformEvent(id="pay_1", type="payment.failed", created_at="", client_id=None,
                      customer_id=None)  # fmt: skip


@pytest.mark.parametrize(
    ("type_", "extra", "amount", "currency", "words"),
    [
        ("payment.succeeded", {}, 1050, "EUR", "of 10.50 EUR succeeded"),
        ("payment.declined", {"decline_code": "card_declined"}, 5, "USD",
         "of 0.05 USD was declined (reason: card_declined)"),
        ("payment.failed", {}, 1200, "JPY", "of 1200 JPY could not be completed"),
        ("payment.canceled", {}, 1001, "BHD", "of 1.001 BHD was canceled"),
        ("payment.refunded", {}, 1050, "EUR", "of 10.50 EUR was refunded in full"),
        ("payment.partially_refunded", {"amount_refunded": 250}, 1050, "EUR",
         "2.50 EUR of your payment pay_m of 10.50 EUR was refunded"),
        ("payment.refund_failed", {"decline_code": "charge_disputed", "amount_refunded": 0},
         1050, "EUR",
         "A refund of your payment pay_m of 10.50 EUR could not be made (reason: charge_disputed)"),
    ],
)  # fmt: skip
def test_the_customer_mail_says_what_happened_with_the_amount_in_major_units(
    type_: str, extra: dict[str, Any], amount: int, currency: str, words: str
) -> None:
    data = payment_data(
        payment_id="pay_m", kind="topup", amount=amount, currency=currency, status="x", **extra
    )
    event = PlatformEvent(
        id="evt_m", type=type_, created_at="2026-11-26T12:00:00+00:00", client_id=None,
        customer_id="user-1", data=data,
    )  # fmt: skip
    subject, body = customer_message(event)
    assert "pay_m" in subject
    assert words in body
    assert "evt_m" in body  # the reference a customer quotes to support


async def test_an_http_endpoint_gets_nothing_once_plain_http_is_not_allowed() -> None:
    """Registered while http was allowed: no signed event goes out in clear after."""
    sent: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    client = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    strict = WebhookSender(client, SECRET, clock=lambda: NOW, allow_http=False)
    with pytest.raises(UnusableURL, match="http://"):
        await strict.send(
            url="http://app.example/hooks", event_id="evt_x", event_type="payment.failed", body=BODY
        )
    assert sent == []


async def test_an_attempt_ends_when_its_time_is_up_however_the_receiver_trickles() -> None:
    async def trickling(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)  # each read within its timeout, the whole far beyond
        return httpx.Response(204)

    client = httpx.AsyncClient(transport=httpx.MockTransport(trickling))
    hurried = WebhookSender(client, SECRET, clock=lambda: NOW, attempt_seconds=0.2)
    started = asyncio.get_running_loop().time()
    with pytest.raises(WebhookFailed, match=re.escape("no answer within 0.2 s")):
        await hurried.send(
            url="https://app.example/hooks",
            event_id="evt_x",
            event_type="payment.failed",
            body=BODY,
        )
    assert asyncio.get_running_loop().time() - started < 2


async def test_no_connection_is_reused_for_another_send() -> None:
    """Sends to checked addresses go to the IP: a kept connection, its certificate checked
    for another name on that IP, must never carry the next request."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(len(BODY))
                # An answer read to its end (a short refusal) leaves a connection to keep.
                writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
                await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = create_webhook_client(Settings())
    sender_ = WebhookSender(client, SECRET, clock=lambda: NOW)
    try:
        for n in range(2):
            with pytest.raises(WebhookFailed, match="503: busy"):
                await sender_.send(
                    url=f"http://127.0.0.1:{port}/hooks",
                    event_id=f"evt_{n}",
                    event_type="payment.failed",
                    body=BODY,
                )
    finally:
        await client.aclose()
        server.close()
    assert connections == 2
