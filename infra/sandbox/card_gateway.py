"""The card gateway sandbox: an outside acquirer/PSP, played locally over real HTTP.

A small subset of Stripe's API on Stripe's wire conventions, so that our connector
(``infra/gateway.py``) talks to a real provider by changing only its base URL and key:
paths under ``/v1``, form-encoded request bodies (``metadata[payment_id]=pay_…``), JSON
answers shaped like Stripe's objects, errors as ``{"error": {"type", "code", "message", …}}``
with 402 for card errors, 400 for invalid requests, 401 for a bad key, 404 for an unknown
object. Run: ``python -m infra.sandbox.card_gateway``.

Endpoints (all but /healthz need ``Authorization: Bearer <BFC_GATEWAY_API_KEY>``)::

    POST /v1/payment_intents                 create + confirm, automatic capture (confirm=true)
    GET  /v1/payment_intents/{id}
    GET  /v1/payment_intents/search?query=metadata['payment_id']:'pay_…'
    POST /v1/refunds                         payment_intent, amount (default: the rest)
    GET  /v1/refunds?payment_intent=pi_…     newest first; limit, starting_after
    POST /v1/payouts                         amount, currency, destination (ba_…)
    GET  /v1/payouts?created[gte]=<unix>     newest first; limit, starting_after (as Stripe,
                                             which has no search for payouts)
    GET  /v1/payouts/{id}
    GET  /v1/reports/settlement?date=YYYY-MM-DD   text/csv, see below
    GET  /healthz

Idempotency (as Stripe): a POST with an ``Idempotency-Key`` header that was seen before
answers the stored status and body (header ``Idempotent-Replayed: true``) without doing
anything again; the same key with other parameters (or on another path) is a 400
``idempotency_error``. Stored are successes and card errors; not stored are 5xx answers
and parameter errors, so a retry with the same key runs again. Requests with one key are
serialised, so concurrent duplicates charge once. Keys are kept forever (Stripe: 24 h).

Test payment methods (Stripe's names where Stripe has one)::

    pm_card_visa                              succeeds
    pm_card_chargeDeclined                    402 card_declined, decline_code generic_decline
    pm_card_chargeDeclinedInsufficientFunds   … insufficient_funds
    pm_card_chargeDeclinedFraudulent          … fraudulent
    pm_bfc_timeoutAfterCharge   charges and stores the answer, then holds the response for
                                BFC_GATEWAY_HANG_SECONDS (30): the client times out
    pm_bfc_error500Twice        the first two attempts per Idempotency-Key answer 500
                                api_error without charging, the third succeeds
    pm_bfc_slow                 succeeds after BFC_GATEWAY_SLOW_SECONDS (1.5)

Test payout destinations: ``ba_bfc_ok`` (paid), ``ba_bfc_closed`` (failed, failure_code
``account_closed``), ``ba_bfc_timeoutAfterPayout`` (paid, then hangs like the card above).
Payouts answer synchronously here; a real provider's payout completes days later.

Settlement report (one CSV row per money movement of that UTC day, in the order they
happened; declined charges and failed payouts moved nothing and are not listed)::

    id              ch_… (charge), re_… (refund), po_… (payout)
    type            charge | refund | payout
    payment_intent  the intent charged or refunded; empty for payouts
    amount          minor units, signed from our gateway balance: charges +, refunds/payouts -
    currency        lower-case ISO 4217, as on the wire
    fee             the gateway's fee in minor units (charges: 1.4 % + 25, else 0)
    net             amount - fee
    reference       metadata[payment_id] of the object (our pay_… id)
    created         ISO 8601 UTC, e.g. 2025-01-31T09:15:02Z

Environment: BFC_GATEWAY_API_KEY (required), BFC_GATEWAY_HOST (127.0.0.1),
BFC_GATEWAY_PORT (8101), BFC_GATEWAY_HOME (.stack/gateway: the SQLite file, WAL, so state
survives a restart), BFC_GATEWAY_HANG_SECONDS, BFC_GATEWAY_SLOW_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import secrets
import sqlite3
import string
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from infra.sandbox.serving import serve

JsonObject = dict[str, Any]
# A form body: plain fields, and Stripe's bracketed ones (metadata[payment_id]) as a dict.
Params = dict[str, str | dict[str, str]]

SUCCEEDING_CARDS = {"pm_card_visa"}
TIMEOUT_AFTER_CHARGE = "pm_bfc_timeoutAfterCharge"
ERROR_500_TWICE = "pm_bfc_error500Twice"
SLOW = "pm_bfc_slow"
DECLINING_CARDS: dict[str, tuple[str, str]] = {
    "pm_card_chargeDeclined": ("generic_decline", "Your card was declined."),
    "pm_card_chargeDeclinedInsufficientFunds": (
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclinedFraudulent": ("fraudulent", "Your card was declined."),
}
PAYMENT_METHODS = (
    SUCCEEDING_CARDS | {TIMEOUT_AFTER_CHARGE, ERROR_500_TWICE, SLOW} | set(DECLINING_CARDS)
)
FAILED_ATTEMPTS_BEFORE_SUCCESS = 2

PAYOUT_OK = "ba_bfc_ok"
PAYOUT_CLOSED = "ba_bfc_closed"
PAYOUT_TIMEOUT = "ba_bfc_timeoutAfterPayout"
PAYOUT_DESTINATIONS = {PAYOUT_OK, PAYOUT_CLOSED, PAYOUT_TIMEOUT}

SEARCH_QUERY = re.compile(r"""^\s*metadata\[(['"])(\w+)\1\]\s*:\s*(['"])((?:\\.|(?!\3).)*)\3\s*$""")
SETTLEMENT_COLUMNS = (
    "id",
    "type",
    "payment_intent",
    "amount",
    "currency",
    "fee",
    "net",
    "reference",
    "created",
)
MAX_LIST_LIMIT = 100
_ID_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    return f"{prefix}_{''.join(secrets.choice(_ID_ALPHABET) for _ in range(24))}"


def charge_fee(amount: int) -> int:
    """1.4 % (rounded half up) + 25 minor units: a plausible card fee, in integers."""
    return (amount * 14 + 500) // 1000 + 25


@dataclass(frozen=True)
class GatewayConfig:
    api_key: str
    home: Path
    hang_seconds: float = 30.0
    slow_seconds: float = 1.5

    @classmethod
    def from_env(cls) -> GatewayConfig:
        api_key = os.environ.get("BFC_GATEWAY_API_KEY", "")
        if not api_key:
            raise SystemExit("card gateway: BFC_GATEWAY_API_KEY is not set")
        return cls(
            api_key=api_key,
            home=Path(os.environ.get("BFC_GATEWAY_HOME", ".stack/gateway")),
            hang_seconds=float(os.environ.get("BFC_GATEWAY_HANG_SECONDS", "30")),
            slow_seconds=float(os.environ.get("BFC_GATEWAY_SLOW_SECONDS", "1.5")),
        )


class ApiError(Exception):
    """A Stripe-shaped error answer; never stored for idempotent replay."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: JsonObject = {"type": type_, "message": message}
        if code is not None:
            self.body["code"] = code
        if param is not None:
            self.body["param"] = param

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.body}, status_code=self.status)


# -- storage -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectRow:
    id: str
    kind: str  # payment_intent | refund | payout
    payment_id: str | None
    payment_intent: str | None
    created: int
    data: JsonObject


@dataclass(frozen=True)
class SettlementRow:
    id: str
    type: str
    payment_intent: str | None
    amount: int
    currency: str
    fee: int
    reference: str | None
    created: int


@dataclass
class Reply:
    """What a POST handler decided; its writes and its idempotency record commit together."""

    status: int
    body: JsonObject
    writes: list[ObjectRow | SettlementRow] = field(default_factory=list)
    remember: bool = True
    hang: bool = False


@dataclass(frozen=True)
class StoredReply:
    fingerprint: str
    status: int
    body: JsonObject


SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id             TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    payment_id     TEXT,
    payment_intent TEXT,
    created        INTEGER NOT NULL,
    data           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_by_payment ON objects (kind, payment_id);
CREATE INDEX IF NOT EXISTS objects_by_intent ON objects (kind, payment_intent);
CREATE TABLE IF NOT EXISTS idempotency (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status      INTEGER NOT NULL,
    body        TEXT NOT NULL,
    created     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS fault_attempts (
    key      TEXT PRIMARY KEY,
    attempts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS settlement (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    type           TEXT NOT NULL,
    payment_intent TEXT,
    amount         INTEGER NOT NULL,
    currency       TEXT NOT NULL,
    fee            INTEGER NOT NULL,
    net            INTEGER NOT NULL,
    reference      TEXT,
    created        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS settlement_by_time ON settlement (created);
"""


class Store:
    """The gateway's books in one SQLite file.

    One connection, used only from the event loop's thread: statements run between awaits,
    so a read and the write that depends on it (a refund checking what is left) cannot
    interleave with another request.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode loses nothing when the process dies, only on power loss.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def stored_reply(self, key: str) -> StoredReply | None:
        row = self._db.execute(
            "SELECT fingerprint, status, body FROM idempotency WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return StoredReply(row[0], row[1], json.loads(row[2]))

    def commit(self, reply: Reply, remember: tuple[str, str] | None) -> None:
        """Apply a reply's writes and, if given (key, fingerprint), remember the reply."""
        with self._transaction() as db:
            for write in reply.writes:
                if isinstance(write, ObjectRow):
                    db.execute(
                        "INSERT INTO objects (id, kind, payment_id, payment_intent, created, data)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            write.id,
                            write.kind,
                            write.payment_id,
                            write.payment_intent,
                            write.created,
                            json.dumps(write.data),
                        ),
                    )
                else:
                    db.execute(
                        "INSERT INTO settlement (id, type, payment_intent, amount, currency, fee,"
                        " net, reference, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            write.id,
                            write.type,
                            write.payment_intent,
                            write.amount,
                            write.currency,
                            write.fee,
                            write.amount - write.fee,
                            write.reference,
                            write.created,
                        ),
                    )
            if remember is not None:
                key, fingerprint = remember
                db.execute(
                    "INSERT INTO idempotency (key, fingerprint, status, body, created)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (key, fingerprint, reply.status, json.dumps(reply.body), int(time.time())),
                )

    def count_attempt(self, key: str) -> int:
        """Count one more attempt under ``key``; returns the count including this one."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO fault_attempts (key, attempts) VALUES (?, 1)"
                " ON CONFLICT (key) DO UPDATE SET attempts = attempts + 1",
                (key,),
            )
            row = db.execute("SELECT attempts FROM fault_attempts WHERE key = ?", (key,)).fetchone()
        attempts: int = row[0]
        return attempts

    def get(self, kind: str, object_id: str) -> JsonObject | None:
        row = self._db.execute(
            "SELECT data FROM objects WHERE kind = ? AND id = ?", (kind, object_id)
        ).fetchone()
        return None if row is None else _loads(row[0])

    def by_payment(
        self, kind: str, payment_id: str, *, offset: int, limit: int
    ) -> list[JsonObject]:
        rows = self._db.execute(
            "SELECT data FROM objects WHERE kind = ? AND payment_id = ?"
            " ORDER BY rowid DESC LIMIT ? OFFSET ?",
            (kind, payment_id, limit, offset),
        ).fetchall()
        return [_loads(row[0]) for row in rows]

    def listed(
        self, kind: str, where: list[tuple[str, str | int]], *, starting_after: str | None,
        limit: int,
    ) -> list[JsonObject]:  # fmt: skip
        """Objects of a kind, newest first, as a Stripe list pages them; ``where`` holds
        ``("column <op> ?", value)`` conditions written here, never by a caller's text."""
        sql = "SELECT data FROM objects WHERE kind = ?"
        args: list[str | int] = [kind]
        for condition, value in where:
            sql += f" AND {condition}"
            args.append(value)
        if starting_after is not None:
            sql += " AND rowid < (SELECT rowid FROM objects WHERE id = ?)"
            args.append(starting_after)
        sql += " ORDER BY rowid DESC LIMIT ?"
        args.append(limit)
        return [_loads(row[0]) for row in self._db.execute(sql, args).fetchall()]

    def refunded(self, payment_intent: str) -> int:
        row = self._db.execute(
            "SELECT COALESCE(SUM(json_extract(data, '$.amount')), 0) FROM objects"
            " WHERE kind = 'refund' AND payment_intent = ?",
            (payment_intent,),
        ).fetchone()
        total: int = row[0]
        return total

    def settlement(self, start: int, end: int) -> list[tuple[Any, ...]]:
        return self._db.execute(
            "SELECT id, type, payment_intent, amount, currency, fee, net, reference, created"
            " FROM settlement WHERE created >= ? AND created < ? ORDER BY seq",
            (start, end),
        ).fetchall()


def _loads(text: str) -> JsonObject:
    data: JsonObject = json.loads(text)
    return data


class KeyedLocks:
    """One asyncio lock per idempotency key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]


# -- request parsing -------------------------------------------------------------------------


def parse_form(body: bytes) -> tuple[Params, list[tuple[str, str]]]:
    """Stripe's form encoding: ``a=1&metadata[k]=v``; returns the params and the raw pairs."""
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "The request body is not valid form encoding.") from exc
    params: Params = {}
    for name, value in pairs:
        outer, bracket, inner = name.partition("[")
        if bracket and inner.endswith("]"):
            nested = params.setdefault(outer, {})
            if not isinstance(nested, dict):
                raise ApiError(400, f"Invalid object: {outer}", param=outer)
            nested[inner[:-1]] = value
        else:
            params[name] = value
    return params, pairs


def _only(params: Params, allowed: set[str]) -> None:
    for name in params:
        if name not in allowed:
            raise ApiError(
                400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name
            )


def _text(params: Params, name: str, *, required: bool = True) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise ApiError(
                400, f"Missing required param: {name}.", code="parameter_missing", param=name
            )
        return None
    if isinstance(value, dict):
        raise ApiError(400, f"Invalid string: {name}", code="parameter_invalid_string", param=name)
    return value


def _mapping(params: Params, name: str) -> dict[str, str]:
    value = params.get(name, {})
    if not isinstance(value, dict):
        raise ApiError(400, f"Invalid object: {name}", param=name)
    return value


def _amount(params: Params, *, required: bool = True) -> int | None:
    text = _text(params, "amount", required=required)
    if text is None:
        return None
    if not text.isascii() or not text.isdigit():
        raise ApiError(
            400, "Invalid integer: amount", code="parameter_invalid_integer", param="amount"
        )
    amount = int(text)
    if amount < 1:
        raise ApiError(
            400, "Amount must be at least 1 minor unit.", code="amount_too_small", param="amount"
        )
    return amount


def _currency(params: Params) -> str:
    currency = (_text(params, "currency") or "").lower()
    if len(currency) != 3 or not currency.isascii() or not currency.isalpha():
        raise ApiError(400, f"Invalid currency: {currency}.", param="currency")
    return currency


def _limit(request: Request) -> int:
    text = request.query_params.get("limit", "10")
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIST_LIMIT:
        raise ApiError(400, f"limit must be between 1 and {MAX_LIST_LIMIT}.", param="limit")
    return int(text)


# Stripe's range filter on a list: created[gte]=<unix seconds> and its kin.
CREATED_BOUNDS = {
    "created[gte]": ">=",
    "created[gt]": ">",
    "created[lte]": "<=",
    "created[lt]": "<",
}


def _created_bounds(request: Request) -> list[tuple[str, str | int]]:
    bounds: list[tuple[str, str | int]] = []
    for name, operator in CREATED_BOUNDS.items():
        text = request.query_params.get(name)
        if text is None:
            continue
        if not text.isdigit():
            raise ApiError(
                400, f"Invalid integer: {text}", code="parameter_invalid_integer", param=name
            )
        bounds.append((f"created {operator} ?", int(text)))
    return bounds


def _only_query(request: Request, allowed: set[str]) -> None:
    for name in request.query_params:
        if name not in allowed:
            raise ApiError(
                400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name
            )


def _search_payment_id(request: Request) -> str:
    query = request.query_params.get("query", "")
    match = SEARCH_QUERY.match(query)
    if match is None or match.group(2) != "payment_id":
        raise ApiError(
            400,
            "This gateway searches only by metadata['payment_id']:'<value>'.",
            param="query",
        )
    return re.sub(r"\\(.)", r"\1", match.group(4))


def _fingerprint(path: str, pairs: list[tuple[str, str]]) -> str:
    canonical = json.dumps([path, sorted(pairs)])
    return hashlib.sha256(canonical.encode()).hexdigest()


def _error(body: JsonObject) -> JsonObject:
    return {"error": body}


# -- the application -------------------------------------------------------------------------


class CardGateway:
    """The HTTP handlers; state lives in ``store``, so a restarted process carries on."""

    def __init__(self, config: GatewayConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.locks = KeyedLocks()

    def app(self) -> Starlette:
        routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/v1/payment_intents", self.create_payment_intent, methods=["POST"]),
            Route("/v1/payment_intents/search", self.search_payment_intents, methods=["GET"]),
            Route("/v1/payment_intents/{id}", self.retrieve_payment_intent, methods=["GET"]),
            Route("/v1/refunds", self.create_refund, methods=["POST"]),
            Route("/v1/refunds", self.list_refunds, methods=["GET"]),
            Route("/v1/payouts", self.create_payout, methods=["POST"]),
            Route("/v1/payouts", self.list_payouts, methods=["GET"]),
            Route("/v1/payouts/{id}", self.retrieve_payout, methods=["GET"]),
            Route("/v1/reports/settlement", self.settlement_report, methods=["GET"]),
        ]
        return Starlette(
            routes=routes,
            exception_handlers={HTTPException: _http_exception, ApiError: _api_error},
        )

    # -- plumbing ------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                "You did not provide an API key. Send it as 'Authorization: Bearer <key>'.",
            )
        if not secrets.compare_digest(token.encode(), self.config.api_key.encode()):
            raise ApiError(401, "Invalid API Key provided.")

    async def _idempotent(
        self, request: Request, handler: Callable[[Params, str | None], Awaitable[Reply]]
    ) -> Response:
        self._authenticate(request)
        content_type = request.headers.get("content-type", "")
        body = await request.body()
        if body and not content_type.startswith("application/x-www-form-urlencoded"):
            raise ApiError(
                400, "Request bodies must be form-encoded (application/x-www-form-urlencoded)."
            )
        params, pairs = parse_form(body)
        key = request.headers.get("idempotency-key")
        if not key:
            reply = await handler(params, None)
            self.store.commit(reply, None)
            return await self._answer(reply)
        fingerprint = _fingerprint(request.url.path, pairs)
        async with self.locks.hold(key):
            stored = self.store.stored_reply(key)
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    raise ApiError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters"
                        " they were first used with.",
                        type_="idempotency_error",
                    )
                return JSONResponse(
                    stored.body, status_code=stored.status, headers={"Idempotent-Replayed": "true"}
                )
            reply = await handler(params, key)
            self.store.commit(reply, (key, fingerprint) if reply.remember else None)
        # The answer is on record before the hang, so a replay finds it at once.
        return await self._answer(reply)

    async def _answer(self, reply: Reply) -> Response:
        if reply.hang:
            await asyncio.sleep(self.config.hang_seconds)
        return JSONResponse(reply.body, status_code=reply.status)

    # -- payment intents -------------------------------------------------------------------

    async def create_payment_intent(self, request: Request) -> Response:
        return await self._idempotent(request, self._create_payment_intent)

    async def _create_payment_intent(self, params: Params, key: str | None) -> Reply:
        _only(
            params,
            {
                "amount",
                "currency",
                "payment_method",
                "payment_method_types",
                "confirm",
                "capture_method",
                "metadata",
                "description",
            },
        )
        amount = _amount(params)
        assert amount is not None  # noqa: S101 - required above
        currency = _currency(params)
        metadata = _mapping(params, "metadata")
        if _text(params, "confirm", required=False) != "true":
            raise ApiError(
                400, "This gateway only creates confirmed intents: confirm=true.", param="confirm"
            )
        if _text(params, "capture_method", required=False) not in (None, "automatic"):
            raise ApiError(
                400, "Only capture_method=automatic is supported.", param="capture_method"
            )
        if any(kind != "card" for kind in _mapping(params, "payment_method_types").values()):
            raise ApiError(
                400, "Only card payment methods are supported.", param="payment_method_types"
            )
        payment_method = _text(params, "payment_method") or ""
        if payment_method not in PAYMENT_METHODS:
            raise ApiError(
                400,
                f"No such PaymentMethod: '{payment_method}'",
                code="resource_missing",
                param="payment_method",
            )

        if payment_method == SLOW:
            await asyncio.sleep(self.config.slow_seconds)
        if payment_method == ERROR_500_TWICE:
            # Without a key every request is a first attempt (it cannot be told apart).
            attempts = self.store.count_attempt(f"payment_intents:{key or new_id('anon')}")
            if attempts <= FAILED_ATTEMPTS_BEFORE_SUCCESS:
                return Reply(
                    500,
                    _error({"type": "api_error", "message": "An unexpected error occurred."}),
                    remember=False,
                )

        now = int(time.time())
        intent_id, charge_id = new_id("pi"), new_id("ch")
        payment_id = metadata.get("payment_id")
        decline = DECLINING_CARDS.get(payment_method)
        intent: JsonObject = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0 if decline else amount,
            "capture_method": "automatic",
            "confirmation_method": "automatic",
            "created": now,
            "currency": currency,
            "description": _text(params, "description", required=False),
            "last_payment_error": None,
            "latest_charge": charge_id,
            "livemode": False,
            "metadata": metadata,
            "payment_method": payment_method,
            "payment_method_types": ["card"],
            "status": "requires_payment_method" if decline else "succeeded",
        }
        writes: list[ObjectRow | SettlementRow] = [
            ObjectRow(intent_id, "payment_intent", payment_id, None, now, intent)
        ]
        if decline is None:
            writes.append(
                SettlementRow(
                    charge_id,
                    "charge",
                    intent_id,
                    amount,
                    currency,
                    charge_fee(amount),
                    payment_id,
                    now,
                )
            )
            return Reply(200, intent, writes, hang=payment_method == TIMEOUT_AFTER_CHARGE)
        decline_code, message = decline
        error: JsonObject = {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": decline_code,
            "message": message,
            "charge": charge_id,
            "payment_method": {"id": payment_method, "object": "payment_method"},
        }
        intent["last_payment_error"] = dict(error)
        return Reply(402, _error({**error, "payment_intent": intent}), writes)

    async def retrieve_payment_intent(self, request: Request) -> Response:
        return self._retrieve(request, "payment_intent")

    async def search_payment_intents(self, request: Request) -> Response:
        return self._search(request, "payment_intent")

    # -- refunds -----------------------------------------------------------------------------

    async def create_refund(self, request: Request) -> Response:
        return await self._idempotent(request, self._create_refund)

    async def _create_refund(self, params: Params, key: str | None) -> Reply:
        del key
        _only(params, {"payment_intent", "amount", "metadata", "reason"})
        intent_id = _text(params, "payment_intent") or ""
        requested = _amount(params, required=False)
        metadata = _mapping(params, "metadata")
        intent = self.store.get("payment_intent", intent_id)
        if intent is None:
            raise ApiError(
                400,
                f"No such payment_intent: '{intent_id}'",
                code="resource_missing",
                param="payment_intent",
            )
        if intent["status"] != "succeeded":
            raise ApiError(
                400,
                "This PaymentIntent does not have a successful charge to refund.",
                code="payment_intent_unexpected_state",
                param="payment_intent",
            )
        left = int(intent["amount_received"]) - self.store.refunded(intent_id)
        if left <= 0:
            raise ApiError(
                400,
                f"Charge {intent['latest_charge']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = left if requested is None else requested
        if amount > left:
            raise ApiError(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                code="amount_too_large",
                param="amount",
            )
        now = int(time.time())
        refund: JsonObject = {
            "id": new_id("re"),
            "object": "refund",
            "amount": amount,
            "charge": intent["latest_charge"],
            "created": now,
            "currency": intent["currency"],
            "metadata": metadata,
            "payment_intent": intent_id,
            "reason": _text(params, "reason", required=False),
            "status": "succeeded",
        }
        # Our reference is the payment the money came from, whatever the refund's metadata.
        reference = metadata.get("payment_id") or intent["metadata"].get("payment_id")
        writes: list[ObjectRow | SettlementRow] = [
            ObjectRow(refund["id"], "refund", reference, intent_id, now, refund),
            SettlementRow(
                refund["id"], "refund", intent_id, -amount, intent["currency"], 0, reference, now
            ),
        ]
        return Reply(200, refund, writes)

    async def list_refunds(self, request: Request) -> Response:
        self._authenticate(request)
        intent = request.query_params.get("payment_intent")
        return self._list_page(
            request, "refund", [] if intent is None else [("payment_intent = ?", intent)]
        )

    # -- payouts -----------------------------------------------------------------------------

    async def create_payout(self, request: Request) -> Response:
        return await self._idempotent(request, self._create_payout)

    async def _create_payout(self, params: Params, key: str | None) -> Reply:
        del key
        _only(params, {"amount", "currency", "destination", "metadata", "description", "method"})
        amount = _amount(params)
        assert amount is not None  # noqa: S101 - required above
        currency = _currency(params)
        metadata = _mapping(params, "metadata")
        destination = _text(params, "destination") or ""
        if destination not in PAYOUT_DESTINATIONS:
            raise ApiError(
                400,
                f"No such external account: '{destination}'",
                code="resource_missing",
                param="destination",
            )
        now = int(time.time())
        failed = destination == PAYOUT_CLOSED
        payout: JsonObject = {
            "id": new_id("po"),
            "object": "payout",
            "amount": amount,
            "arrival_date": now,
            "created": now,
            "currency": currency,
            "description": _text(params, "description", required=False),
            "destination": destination,
            "failure_code": "account_closed" if failed else None,
            "failure_message": "The bank account has been closed." if failed else None,
            "livemode": False,
            "metadata": metadata,
            "method": "standard",
            "status": "failed" if failed else "paid",
            "type": "bank_account",
        }
        payment_id = metadata.get("payment_id")
        writes: list[ObjectRow | SettlementRow] = [
            ObjectRow(payout["id"], "payout", payment_id, None, now, payout)
        ]
        if not failed:
            writes.append(
                SettlementRow(payout["id"], "payout", None, -amount, currency, 0, payment_id, now)
            )
        return Reply(200, payout, writes, hang=destination == PAYOUT_TIMEOUT)

    async def retrieve_payout(self, request: Request) -> Response:
        return self._retrieve(request, "payout")

    async def list_payouts(self, request: Request) -> Response:
        self._authenticate(request)
        _only_query(request, {"limit", "starting_after", *CREATED_BOUNDS})
        return self._list_page(request, "payout", _created_bounds(request))

    # -- reads shared by the resources ---------------------------------------------------

    def _list_page(
        self, request: Request, kind: str, where: list[tuple[str, str | int]]
    ) -> Response:
        limit = _limit(request)
        data = self.store.listed(
            kind, where, starting_after=request.query_params.get("starting_after"),
            limit=limit + 1,
        )  # fmt: skip
        return JSONResponse(
            {
                "object": "list",
                "url": request.url.path,
                "has_more": len(data) > limit,
                "data": data[:limit],
            }
        )

    def _retrieve(self, request: Request, kind: str) -> Response:
        self._authenticate(request)
        object_id = request.path_params["id"]
        found = self.store.get(kind, object_id)
        if found is None:
            raise ApiError(
                404, f"No such {kind}: '{object_id}'", code="resource_missing", param="id"
            )
        return JSONResponse(found)

    def _search(self, request: Request, kind: str) -> Response:
        self._authenticate(request)
        payment_id = _search_payment_id(request)
        limit = _limit(request)
        page = request.query_params.get("page", "0")
        if not page.isdigit():
            raise ApiError(400, "Invalid page token.", param="page")
        offset = int(page)
        data = self.store.by_payment(kind, payment_id, offset=offset, limit=limit + 1)
        has_more = len(data) > limit
        return JSONResponse(
            {
                "object": "search_result",
                "url": request.url.path,
                "has_more": has_more,
                "next_page": str(offset + limit) if has_more else None,
                "data": data[:limit],
            }
        )

    async def settlement_report(self, request: Request) -> Response:
        self._authenticate(request)
        try:
            day = dt.date.fromisoformat(request.query_params.get("date", ""))
        except ValueError as exc:
            raise ApiError(400, "date must be YYYY-MM-DD.", param="date") from exc
        start = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(SETTLEMENT_COLUMNS)
        for row in self.store.settlement(start, start + 86_400):
            created = dt.datetime.fromtimestamp(row[-1], tz=dt.UTC)
            writer.writerow(
                [
                    *("" if value is None else value for value in row[:-1]),
                    created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                ]
            )
        return PlainTextResponse(out.getvalue(), media_type="text/csv")

    async def healthz(self, request: Request) -> Response:
        del request
        return JSONResponse({"status": "ok"})


async def _api_error(request: Request, exc: Exception) -> Response:
    del request
    assert isinstance(exc, ApiError)  # noqa: S101 - registered for ApiError only
    return exc.response()


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for HTTPException only
    return ApiError(
        exc.status_code, f"Unrecognized request URL ({request.method}: {request.url.path})."
    ).response()


def main() -> int:
    config = GatewayConfig.from_env()
    store = Store(config.home / "gateway.sqlite3")
    return serve(
        CardGateway(config, store).app(),
        host=os.environ.get("BFC_GATEWAY_HOST", "127.0.0.1"),
        port=int(os.environ.get("BFC_GATEWAY_PORT", "8101")),
        close=store.close,
        lifespan="off",
    )


if __name__ == "__main__":
    sys.exit(main())
