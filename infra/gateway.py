"""Our connector to the card gateway, a Stripe-compatible PSP (locally the sandbox).

Speaks Stripe's wire format (form-encoded bodies, ``Idempotency-Key`` headers, JSON
objects), so a real provider is a change of ``gateway_base_url`` and of the Vault secret
``gateway.api_key``. Card data never reaches us: callers pass the gateway's payment-method
token (``pm_…``) and a bank-account token (``ba_…``) for payouts. Our currencies are
upper-case ISO codes; the wire's lower case is converted here and nowhere else.

Error taxonomy (every error is a ``GatewayError``)::

    GatewayError
    ├── GatewayDeclined        the card or the payout was refused (402 card_error, payout
    │                          status failed). Final: do not retry. ``code`` is the
    │                          decline_code / failure_code (insufficient_funds, account_closed).
    ├── GatewayRetryable       nothing was done, or doing it again is safe: 5xx, 429, 409
    │                          (the same key is still in flight), connection refused, connect
    │                          or pool timeout (the request never left). Retry with the SAME
    │                          idempotency key. Reads (GETs) change nothing, so any transport
    │                          failure of a read is retryable too.
    ├── GatewayUnknownOutcome  a money-moving POST may have been applied: read timeout,
    │                          connection dropped after sending, protocol error, an answer we
    │                          cannot read. Never charge again under a new key; resolve by
    │                          replaying the same key or by looking the payment up
    │                          (``find_charge`` / ``find_payout``).
    └── GatewayRejected        the gateway refused the request itself: 400 invalid request,
                               401 bad key, 404, 400 idempotency_error (same key, other
                               parameters). A bug or bad input: not retryable.

Idempotency: every POST carries the caller's key (payment id + step, never an attempt
number), so a retry, a replay or a concurrent duplicate moves money once.

A real provider's search index lags writes (Stripe: up to a minute), so right after an
unknown outcome a ``find_*`` answering None is not proof of nothing; replaying the same key
is the authoritative way to learn what happened.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import httpx

from infra.settings import Settings
from models.gateway import (
    CHARGE_SUCCEEDED,
    GatewayCharge,
    GatewayPayout,
    GatewayRefund,
    SettlementLine,
    SettlementType,
)

# Response shapes depend on the API version (latest_charge since 2022-11-15); pin it.
STRIPE_API_VERSION = "2024-06-20"
# Searches and lists return at most 100 per page; a payment has a handful of objects.
PAGE_SIZE = 100
MAX_PAGES = 20
# A payout lookup lists every payout since the payment was accepted (Stripe cannot search
# payouts); a lookup right after an unknown outcome reads one page.
MAX_LISTED_PAYOUTS = 5_000
CLOCK_SLACK = dt.timedelta(hours=1)

JsonObject = dict[str, Any]
T = TypeVar("T")


class GatewayError(Exception):
    """Something the gateway (or the way to it) did not do; see the module docstring."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class GatewayDeclined(GatewayError):
    """Refused by the card issuer or the receiving bank; ``code`` says why."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        charge: GatewayCharge | None = None,
        payout: GatewayPayout | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.code: str = code
        # The declined intent or failed payout, as the gateway recorded it.
        self.charge = charge
        self.payout = payout


class GatewayRetryable(GatewayError):
    """Safe to send again with the same idempotency key."""


class GatewayUnknownOutcome(GatewayError):
    """The request may have been applied; resolve by lookup or same-key replay."""


class GatewayRejected(GatewayError):
    """The request itself was refused (bad input, bad key, reused key); do not retry."""


class CardGateway:
    """One per process: it owns the HTTP connection pool to the gateway."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float,
        connect_timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 50,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {api_key}",
                "Stripe-Version": STRIPE_API_VERSION,
            },
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: Settings, api_key: str) -> CardGateway:
        return cls(
            settings.gateway_url,
            api_key,
            timeout=settings.gateway_timeout_seconds,
            connect_timeout=settings.gateway_connect_timeout_seconds,
        )

    def __repr__(self) -> str:
        return f"CardGateway({str(self._client.base_url)!r})"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- cards ---------------------------------------------------------------------------

    async def charge(
        self,
        *,
        idempotency_key: str,
        payment_id: str,
        amount: int,
        currency: str,
        payment_method: str,
    ) -> GatewayCharge:
        """Charge a card and capture at once; returns only a succeeded charge.

        Raises GatewayDeclined (with the declined charge) when the card is refused.
        """
        body = await self._post(
            "/v1/payment_intents",
            {
                "amount": str(amount),
                "currency": currency.lower(),
                "payment_method": payment_method,
                "payment_method_types[0]": "card",
                "confirm": "true",
                "metadata[payment_id]": payment_id,
            },
            idempotency_key=idempotency_key,
        )
        charge = _parse(_charge, body, unsure=True)
        if charge.succeeded:
            return charge
        if not charge.settled_unpaid:
            raise GatewayUnknownOutcome(
                f"charge {charge.id} is still processing; look it up later", code="processing"
            )
        # Anything else needs the customer (3-D Secure) or another card: not captured.
        raise GatewayDeclined(
            charge.refusal_code, f"charge {charge.id} ended {charge.status}", charge=charge
        )

    async def find_charge(self, payment_id: str) -> GatewayCharge | None:
        """The gateway's intent for our payment: a succeeded one if any, else the newest."""
        charges = [
            _parse(_charge, item, unsure=False)
            for item in await self._search("/v1/payment_intents/search", payment_id)
        ]
        succeeded = [c for c in charges if c.status == CHARGE_SUCCEEDED]
        found = succeeded or charges
        return found[0] if found else None

    async def refund(
        self, *, idempotency_key: str, charge_id: str, amount: int, payment_id: str
    ) -> GatewayRefund:
        """Refund part or all of a charge (``charge_id`` is the intent id, ``pi_…``). The
        key goes into the refund's metadata too, so ``find_refund`` can find it after the
        provider has forgotten the key (Stripe keeps one for 24 hours)."""
        body = await self._post(
            "/v1/refunds",
            {
                "payment_intent": charge_id,
                "amount": str(amount),
                "metadata[payment_id]": payment_id,
                "metadata[refund_key]": idempotency_key,
            },
            idempotency_key=idempotency_key,
        )
        return _parse(_refund, body, unsure=True)

    async def find_refund(self, charge_id: str, idempotency_key: str) -> GatewayRefund | None:
        """The refund of the charge made under ``idempotency_key``, if any was."""
        found = [r for r in await self.refunds_of(charge_id) if r.refund_key == idempotency_key]
        return found[0] if found else None

    async def refunds_of(self, charge_id: str) -> list[GatewayRefund]:
        """Every refund of a charge, newest first."""
        refunds: list[GatewayRefund] = []
        params: dict[str, str | int] = {"payment_intent": charge_id, "limit": PAGE_SIZE}
        for _ in range(MAX_PAGES):
            page = await self._get("/v1/refunds", params)
            data = _parse(_data, page, unsure=False)
            refunds.extend(_parse(_refund, item, unsure=False) for item in data)
            if not page.get("has_more") or not data:
                break
            params["starting_after"] = refunds[-1].id
        return refunds

    # -- payouts -------------------------------------------------------------------------

    async def payout(
        self,
        *,
        idempotency_key: str,
        payment_id: str,
        amount: int,
        currency: str,
        destination: str,
    ) -> GatewayPayout:
        """Send money to a bank account token; a failed payout raises GatewayDeclined.

        The sandbox answers paid or failed at once; a real provider answers pending or
        in_transit and settles days later.
        """
        body = await self._post(
            "/v1/payouts",
            {
                "amount": str(amount),
                "currency": currency.lower(),
                "destination": destination,
                "metadata[payment_id]": payment_id,
            },
            idempotency_key=idempotency_key,
        )
        payout = _parse(_payout, body, unsure=True)
        if payout.not_made:
            raise GatewayDeclined(
                payout.failure_code or f"payout_{payout.status}",
                str(body.get("failure_message") or f"payout {payout.id} failed"),
                payout=payout,
            )
        return payout

    async def find_payout(
        self, payment_id: str, *, created_since: dt.datetime
    ) -> GatewayPayout | None:
        """The gateway's payout for our payment, failed or not; None if there is none.

        Stripe has no search for payouts, so this lists those created since
        ``created_since`` (less ``CLOCK_SLACK``: the provider's clock is not ours), newest
        first, and picks ours by its metadata. More than ``MAX_LISTED_PAYOUTS`` to read is
        ``GatewayRejected``: the outcome stays unknown rather than guessed as absent.
        """
        since = int((created_since - CLOCK_SLACK).timestamp())
        params: dict[str, str | int] = {"created[gte]": since, "limit": PAGE_SIZE}
        ours: list[GatewayPayout] = []
        for _ in range(MAX_LISTED_PAYOUTS // PAGE_SIZE):
            page = await self._get("/v1/payouts", params)
            items = _parse(_data, page, unsure=False)
            payouts = [_parse(_payout, item, unsure=False) for item in items]
            ours.extend(p for p in payouts if p.payment_id == payment_id)
            if not page.get("has_more") or not payouts:
                live = [p for p in ours if not p.not_made]
                found = live or ours
                return found[0] if found else None
            params["starting_after"] = payouts[-1].id
        raise GatewayRejected(
            f"more than {MAX_LISTED_PAYOUTS} payouts since {created_since.isoformat()}: "
            f"look up the payout for {payment_id} at the provider by hand"
        )

    # -- reports ---------------------------------------------------------------------------

    async def settlement_report(self, day: dt.date) -> list[SettlementLine]:
        """The money the gateway moved on ``day`` (UTC), one line per charge/refund/payout."""
        response = await self._send("GET", "/v1/reports/settlement", params={"date": str(day)})
        return _parse(_settlement, response.text, unsure=False)

    # -- HTTP ------------------------------------------------------------------------------

    async def _post(self, path: str, data: dict[str, str], *, idempotency_key: str) -> JsonObject:
        response = await self._send(
            "POST", path, data=data, headers={"Idempotency-Key": idempotency_key}
        )
        return _json(response, unsure=True)

    async def _get(self, path: str, params: dict[str, str | int]) -> JsonObject:
        return _json(await self._send("GET", path, params=params), unsure=False)

    async def _search(self, path: str, payment_id: str) -> list[JsonObject]:
        escaped = payment_id.replace("\\", "\\\\").replace("'", "\\'")
        params: dict[str, str | int] = {
            "query": f"metadata['payment_id']:'{escaped}'",
            "limit": PAGE_SIZE,
        }
        found: list[JsonObject] = []
        for _ in range(MAX_PAGES):
            page = await self._get(path, params)
            found.extend(_parse(_data, page, unsure=False))
            if not page.get("has_more") or not page.get("next_page"):
                break
            params["page"] = str(page["next_page"])
        return found

    async def _send(
        self,
        method: str,
        path: str,
        *,
        data: dict[str, str] | None = None,
        params: dict[str, str | int] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        what = f"{method} {path}"
        try:
            response = await self._client.request(
                method, path, data=data, params=params, headers=headers
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left this process.
            raise GatewayRetryable(f"{what}: gateway not reached: {exc!r}") from exc
        except httpx.UnsupportedProtocol as exc:
            raise GatewayRejected(f"{what}: bad gateway URL: {exc}") from exc
        except httpx.TransportError as exc:
            if method == "GET":
                raise GatewayRetryable(f"{what}: {exc!r}") from exc
            raise GatewayUnknownOutcome(
                f"{what}: no answer, the request may have been applied: {exc!r}"
            ) from exc
        if response.is_success:
            return response
        raise _error_for(what, response)


def _error_for(what: str, response: httpx.Response) -> GatewayError:
    status = response.status_code
    try:
        error = response.json()["error"]
        if not isinstance(error, dict):
            raise TypeError(error)
    except (ValueError, KeyError, TypeError):
        error = {"message": response.text[:200]}
    message = f"{what}: {status} {error.get('message') or response.reason_phrase}"
    code = error.get("code") or error.get("type")
    if status == 402:
        intent = error.get("payment_intent")
        charge = None
        if isinstance(intent, dict):
            try:
                charge = _charge(intent)
            except (KeyError, TypeError, ValueError, AttributeError):
                charge = None
        decline_code = error.get("decline_code") or error.get("code") or "card_declined"
        return GatewayDeclined(str(decline_code), message, status=status, charge=charge)
    if status >= 500 or status in (409, 429):
        return GatewayRetryable(message, code=code, status=status)
    return GatewayRejected(message, code=code, status=status)


def _json(response: httpx.Response, *, unsure: bool) -> JsonObject:
    return _parse(lambda r: cast(JsonObject, dict(r.json())), response, unsure=unsure)


def _parse(parse: Callable[[Any], T], raw: Any, *, unsure: bool) -> T:
    """Parse an answer; one we cannot read leaves a POST's outcome unknown."""
    with _readable(unsure=unsure):
        return parse(raw)


@contextmanager
def _readable(*, unsure: bool) -> Iterator[None]:
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        message = f"unreadable answer from the gateway: {exc!r}"
        if unsure:
            raise GatewayUnknownOutcome(message) from exc
        raise GatewayRetryable(message) from exc


def _data(page: JsonObject) -> list[JsonObject]:
    data = page["data"]
    if not isinstance(data, list):
        raise TypeError("data is not a list")
    return [cast(JsonObject, item) for item in data]


def _payment_id(obj: JsonObject) -> str | None:
    return _metadata(obj, "payment_id")


def _metadata(obj: JsonObject, name: str) -> str | None:
    value = (obj.get("metadata") or {}).get(name)
    return None if value is None else str(value)


def _charge(obj: JsonObject) -> GatewayCharge:
    error = obj.get("last_payment_error") or {}
    decline = error.get("decline_code") or error.get("code")
    return GatewayCharge(
        id=str(obj["id"]),
        status=str(obj["status"]),
        amount=int(obj["amount"]),
        amount_received=int(obj.get("amount_received") or 0),
        currency=str(obj["currency"]).upper(),
        payment_id=_payment_id(obj),
        decline_code=None if decline is None else str(decline),
    )


def _refund(obj: JsonObject) -> GatewayRefund:
    return GatewayRefund(
        id=str(obj["id"]),
        charge_id=str(obj["payment_intent"]),
        amount=int(obj["amount"]),
        status=str(obj["status"]),
        currency=str(obj["currency"]).upper(),
        payment_id=_payment_id(obj),
        refund_key=_metadata(obj, "refund_key"),
    )


def _payout(obj: JsonObject) -> GatewayPayout:
    failure = obj.get("failure_code")
    return GatewayPayout(
        id=str(obj["id"]),
        status=str(obj["status"]),
        amount=int(obj["amount"]),
        currency=str(obj["currency"]).upper(),
        payment_id=_payment_id(obj),
        failure_code=None if failure is None else str(failure),
    )


_SETTLEMENT_TYPES: dict[str, SettlementType] = {
    "charge": "charge",
    "refund": "refund",
    "payout": "payout",
}


def _settlement(text: str) -> list[SettlementLine]:
    return [
        SettlementLine(
            id=row["id"],
            type=_SETTLEMENT_TYPES[row["type"]],
            payment_intent=row["payment_intent"] or None,
            amount=int(row["amount"]),
            currency=row["currency"].upper(),
            fee=int(row["fee"]),
            net=int(row["net"]),
            reference=row["reference"] or None,
            created=dt.datetime.fromisoformat(row["created"]).astimezone(dt.UTC),
        )
        for row in csv.DictReader(io.StringIO(text))
    ]
