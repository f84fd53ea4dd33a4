"""Signed webhooks: the signature scheme, and the sender that posts events to apps.

Every request carries::

    BFC-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{raw body}")>
    BFC-Event-Id: evt_…       (the receiver's de-duplication key; the same on every retry)
    BFC-Event-Type: payment.succeeded

A receiver recomputes the HMAC over the raw body it received (before parsing it) with the
signing secret and compares in constant time; the timestamp is signed too, so a captured
request cannot be replayed after the tolerance (five minutes). ``verify`` does exactly
that, for receivers and for our tests. Each endpoint has a secret of its own
(``new_signing_secret``), shown to its app once at registration, so no app holds a key to
another app's webhooks; an endpoint registered before that is signed with the platform's
secret, Vault's ``webhooks.signing_secret``.

The sender raises on anything but a 2xx answer so that Temporal retries the activity with
backoff; a 410 Gone means the receiver wants no more events (``EndpointGone``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from infra.settings import Settings
from infra.webhook_destinations import Resolver, ascii_host, parse_url, pinned, resolve

SIGNATURE_HEADER = "BFC-Signature"
EVENT_ID_HEADER = "BFC-Event-Id"
EVENT_TYPE_HEADER = "BFC-Event-Type"
SCHEME = "v1"
DEFAULT_TOLERANCE_SECONDS = 300
# What a delivery attempt keeps of a receiver's answer for operators (never the whole body).
_ERROR_EXCERPT = 200
# A signature element longer than this is not ours (a v1 signature is 64 hex digits).
_MAX_ELEMENT = 256
# One attempt, resolving and every address included: under the delivery activity's 30 s.
ATTEMPT_SECONDS = 20.0


class InvalidSignature(Exception):
    """The signature header is missing, malformed, stale, or does not match the body."""


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def new_signing_secret() -> str:
    """A fresh endpoint secret: 256 random bits, prefixed so it is recognisable in a
    receiver's configuration (and by secret scanners)."""
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``BFC-Signature`` header value for ``body`` sent at ``timestamp``."""
    return sign_with_each([secret], timestamp, body)


def sign_with_each(secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    """The header with one ``v1`` signature per secret (the new and the previous one while
    an endpoint's secret is rolled over): a receiver accepts it with either."""
    signatures = ",".join(
        f"{SCHEME}={_digest(secret, timestamp, body)}" for secret in dict.fromkeys(secrets)
    )
    return f"t={timestamp},{signatures}"


def parse_signature(header: str) -> tuple[int, list[str]]:
    """``t=…,v1=…[,v1=…]`` -> the timestamp and every v1 signature (several during a
    secret rotation). Unknown schemes are ignored, so a later scheme can be added."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not value:
            raise InvalidSignature(f"malformed signature element {item.strip()!r}")
        if not value.isascii() or len(value) > _MAX_ELEMENT:
            # compare_digest refuses non-ASCII text, int() reads "²" and 5,000 digits badly:
            # whatever a sender puts here is an invalid signature, never another error.
            raise InvalidSignature(f"malformed signature element {key.strip()!r}")
        if key == "t":
            if not value.isdigit():
                raise InvalidSignature("the timestamp is not a number of seconds")
            timestamp = int(value)
        elif key == SCHEME:
            signatures.append(value)
    if timestamp is None:
        raise InvalidSignature("the signature header has no timestamp")
    if not signatures:
        raise InvalidSignature(f"the signature header has no {SCHEME} signature")
    return timestamp, signatures


def verify(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    now: float,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Check a received request; raise ``InvalidSignature`` unless it is ours and fresh.

    ``now`` is the receiver's clock in unix seconds (``time.time()``).
    """
    if not header:
        raise InvalidSignature(f"no {SIGNATURE_HEADER} header")
    timestamp, signatures = parse_signature(header)
    if abs(now - timestamp) > tolerance_seconds:
        raise InvalidSignature("the timestamp is outside the tolerance (a replay, or a clock off)")
    expected = _digest(secret, timestamp, body)
    # Compare with every candidate, without an early exit that would time the match.
    matched = False
    for candidate in signatures:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise InvalidSignature("the signature does not match the body")


def event_body(*, event_id: str, event_type: str, created_at: str, data: dict[str, Any]) -> bytes:
    """The webhook body: compact, keys sorted, so every attempt sends the same bytes."""
    document = {"id": event_id, "type": event_type, "created_at": created_at, "data": data}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class WebhookFailed(Exception):
    """The receiver did not accept the event (non-2xx, timeout, no connection): retry."""

    def __init__(self, message: str, *, status_code: int | None) -> None:
        super().__init__(message)
        self.status_code = status_code


class EndpointGone(WebhookFailed):
    """410 Gone: the receiver asks us to stop sending to this endpoint."""


class UnusableURL(WebhookFailed):
    """The endpoint's URL cannot be parsed (registered before registration refused such
    URLs): nothing was sent, and no retry can change that."""


class DestinationRefused(WebhookFailed):
    """The endpoint's name resolves to an address that is not public (private, loopback,
    link-local, …) while the deployment allows public ones only: nothing was sent."""


@dataclass(frozen=True)
class Accepted:
    status_code: int


def storable_text(raw: bytes | str) -> str:
    """Text PostgreSQL can keep. A receiver's answer is whatever it sent, and its attempt
    must still be recorded: NUL, which no text column holds, and bytes that are not UTF-8
    (or a character the excerpt cut in two) become U+FFFD; a lone surrogate, which has no
    UTF-8 form, becomes ``?``."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    return text.encode(errors="replace").decode().replace("\x00", "\ufffd")


def create_webhook_client(settings: Settings) -> httpx.AsyncClient:
    """One client per worker process, bounded time per read and connect."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.webhook_timeout_seconds, connect=5.0),
        # No connection is kept for another request: sends to checked addresses
        # (``pinned``) go to the IP, and a pool keyed by the IP would hand a request for
        # one name a TLS connection whose certificate was checked for another name there.
        limits=httpx.Limits(max_keepalive_connections=0),
        # A redirect is not an acceptance, and following one would let an endpoint point
        # our signed requests somewhere it was never registered for.
        follow_redirects=False,
        headers={"User-Agent": "BFC-Webhooks/1"},
    )


class WebhookSender:
    def __init__(
        self,
        client: httpx.AsyncClient,
        signing_secret: str,
        *,
        clock: Callable[[], float] = time.time,
        allow_private_addresses: bool = True,
        allow_http: bool = True,
        resolver: Resolver = resolve,
        attempt_seconds: float = ATTEMPT_SECONDS,
    ) -> None:
        self._client = client
        self._secret = signing_secret
        self._clock = clock
        self._allow_private = allow_private_addresses
        self._allow_http = allow_http
        self._resolve = resolver
        self._attempt_seconds = attempt_seconds

    async def send(
        self,
        *,
        url: str,
        event_id: str,
        event_type: str,
        body: bytes,
        secrets: Sequence[str | None] = (None,),
    ) -> Accepted:
        """POST one event signed with each of ``secrets`` (the endpoint's own, and its
        previous one during a rollover; None stands for the platform's secret);
        ``Accepted`` on 2xx, else raise ``WebhookFailed``."""
        # The read timeout bounds each read, not the attempt: a receiver trickling a byte
        # at a time, or a name with many unreachable addresses, would outlast the
        # activity's own timeout and hold a slot of the worker.
        try:
            async with asyncio.timeout(self._attempt_seconds):
                return await self._send(
                    url=url, event_id=event_id, event_type=event_type, body=body, secrets=secrets
                )
        except TimeoutError as exc:
            raise WebhookFailed(
                f"no answer within {self._attempt_seconds:g} s", status_code=None
            ) from exc

    async def _send(
        self,
        *,
        url: str,
        event_id: str,
        event_type: str,
        body: bytes,
        secrets: Sequence[str | None],
    ) -> Accepted:
        # Signed now, at each attempt: a retry hours later still arrives fresh.
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign_with_each(
                [secret or self._secret for secret in secrets], timestamp, body
            ),
            EVENT_ID_HEADER: event_id,
            EVENT_TYPE_HEADER: event_type,
        }
        try:
            named = parse_url(url)
        except ValueError as exc:
            raise UnusableURL(str(exc), status_code=None) from exc
        if named.scheme != "https" and not self._allow_http:
            # Registered while plain http was allowed: no signed event goes out in clear.
            raise UnusableURL(f"{named.scheme}:// is not allowed here", status_code=None)
        targets = [named]
        extensions: dict[str, Any] = {}
        if not self._allow_private:
            try:
                targets, host_header = await pinned(named, self._resolve)
            except LookupError as exc:
                raise DestinationRefused(str(exc), status_code=None) from exc
            except OSError as exc:  # the name does not resolve (now): retried
                raise WebhookFailed(
                    f"{named.host} does not resolve: {exc}", status_code=None
                ) from exc
            headers.update(host_header)
            if named.scheme == "https":
                # The certificate is checked for the name (its ASCII form, as without pinning).
                extensions["sni_hostname"] = ascii_host(named)
        unreachable: list[str] = []
        for target in targets:
            try:
                status, excerpt = await self._post(target, body, headers, extensions)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing was sent: the name's next address may answer (an IPv6 address on
                # a host without an IPv6 route, one server of several down).
                unreachable.append(f"{target.host}: {type(exc).__name__}: {exc}")
            except httpx.HTTPError as exc:
                raise WebhookFailed(f"{type(exc).__name__}: {exc}", status_code=None) from exc
        else:
            raise WebhookFailed("; ".join(unreachable), status_code=None)
        if status == httpx.codes.GONE:
            raise EndpointGone("the endpoint answered 410 Gone", status_code=status)
        if not 200 <= status < 300:
            raise WebhookFailed(
                f"the endpoint answered {status}: {storable_text(excerpt[:_ERROR_EXCERPT])}",
                status_code=status,
            )
        return Accepted(status_code=status)

    async def _post(
        self, target: httpx.URL, body: bytes, headers: dict[str, str], extensions: dict[str, Any]
    ) -> tuple[int, bytes]:
        # Streamed: a receiver's answer body is read only as far as an error excerpt needs,
        # however much it sends.
        async with self._client.stream(
            "POST", target, content=body, headers=headers, extensions=extensions
        ) as response:
            excerpt = b""
            if not response.is_success:
                async for chunk in response.aiter_bytes():
                    excerpt += chunk
                    if len(excerpt) >= _ERROR_EXCERPT:
                        break
            return response.status_code, excerpt
