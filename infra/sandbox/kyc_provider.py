"""The KYC provider sandbox: an outside identity-verification service, played over HTTP.

It checks nothing real: the verdict follows from the document number. It answers the way
such providers do: a verification is accepted at once (202, ``pending``) and decided later;
the decision is POSTed to the caller's ``callback_url``, signed, and can also be polled.
Our connector is ``infra/kyc.py``. Run: ``python -m infra.sandbox.kyc_provider``.

Endpoints (all but /healthz need ``Authorization: Bearer <BFC_KYC_API_KEY>``)::

    POST /v1/verifications        Idempotency-Key required; JSON
                                  {"reference", "document": {"type", "number", "country"},
                                   "person": {"given_name", "family_name", "date_of_birth"},
                                   "callback_url"}  (callback_url: default BFC_KYC_CALLBACK_URL)
                                  -> 202 the verification, status "pending"
    GET  /v1/verifications/{id}   -> 200 the verification
    GET  /healthz

A verification: ``{"id": "ver_…", "reference", "status": "pending"|"completed", "verdict",
"checks", "created_at", "completed_at"}``. Errors: ``{"error": {"code", "message"}}``: 400
``idempotency_key_required``, 401 ``unauthorized``, 404 ``not_found``, 409
``idempotency_key_reused`` (same key, other body), 422 ``invalid_request`` (the message
names the field). The same key with the same body answers the same verification again
(header ``Idempotent-Replayed: true``), whatever its state by then.

Test document numbers (by prefix, case-insensitive)::

    CLEAR…     verdict clear               all checks pass
    MISMATCH…  verdict mismatch            data_match fails: the document is someone else's
    FORGED…    verdict forged              document_authentic fails
    MANUAL…    verdict needs_manual_check  document_authentic inconclusive
    SLOW…      stays pending for BFC_KYC_SLOW_SECONDS (3600) and never calls back; after that
               a poll finds it completed, clear
    other      verdict clear

All but SLOW are decided BFC_KYC_DELAY_SECONDS (1.0) after they were accepted.

Callback: ``POST <callback_url>``, body ``{"id", "reference", "status": "completed",
"verdict", "checks", "completed_at"}`` (the same bytes on every attempt), header
``KYC-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(BFC_KYC_WEBHOOK_SECRET,
"<t>.<body>")>`` (a fresh t per attempt). Anything but a 2xx answer (or no answer in 5 s) is
retried after BFC_KYC_RETRY_BASE_SECONDS (1.0), doubling each time, up to
BFC_KYC_CALLBACK_ATTEMPTS (6) attempts in all.

State (verifications, idempotency keys, callbacks still owed) lives in SQLite under
BFC_KYC_HOME (.stack/kyc), so a restarted sandbox finishes what it had started. It keeps no
personal data: only a digest of each request, for idempotency. Environment:
BFC_KYC_API_KEY and BFC_KYC_WEBHOOK_SECRET (required), BFC_KYC_HOST (127.0.0.1),
BFC_KYC_PORT (8102), and the settings named above.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infra.sandbox.serving import serve

log = logging.getLogger("bfc.sandbox.kyc")

JsonObject = dict[str, Any]
# Document number prefix -> (verdict, checks). SLOW is handled apart: it has no verdict yet.
ALL_PASS = {"document_authentic": "pass", "document_valid": "pass", "data_match": "pass"}
OUTCOMES: dict[str, tuple[str, dict[str, str]]] = {
    "CLEAR": ("clear", ALL_PASS),
    "MISMATCH": ("mismatch", {**ALL_PASS, "data_match": "fail"}),
    "FORGED": ("forged", {**ALL_PASS, "document_authentic": "fail"}),
    "MANUAL": ("needs_manual_check", {**ALL_PASS, "document_authentic": "inconclusive"}),
}
SLOW = "SLOW"
SIGNATURE_HEADER = "KYC-Signature"
CALLBACK_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class KycConfig:
    api_key: str
    webhook_secret: str
    home: Path
    delay_seconds: float = 1.0
    slow_seconds: float = 3600.0
    default_callback_url: str | None = None
    callback_attempts: int = 6
    retry_base_seconds: float = 1.0
    # How often the sandbox looks for verifications to decide and callbacks to send.
    tick_seconds: float = 0.1

    @classmethod
    def from_env(cls) -> KycConfig:
        env = os.environ
        missing = [n for n in ("BFC_KYC_API_KEY", "BFC_KYC_WEBHOOK_SECRET") if not env.get(n)]
        if missing:
            raise SystemExit(f"kyc provider: {' and '.join(missing)} not set")
        return cls(
            api_key=env["BFC_KYC_API_KEY"],
            webhook_secret=env["BFC_KYC_WEBHOOK_SECRET"],
            home=Path(env.get("BFC_KYC_HOME", ".stack/kyc")),
            delay_seconds=float(env.get("BFC_KYC_DELAY_SECONDS", "1.0")),
            slow_seconds=float(env.get("BFC_KYC_SLOW_SECONDS", "3600")),
            default_callback_url=env.get("BFC_KYC_CALLBACK_URL") or None,
            callback_attempts=int(env.get("BFC_KYC_CALLBACK_ATTEMPTS", "6")),
            retry_base_seconds=float(env.get("BFC_KYC_RETRY_BASE_SECONDS", "1.0")),
        )


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": {"code": self.code, "message": self.message}}, status_code=self.status
        )


# -- the request ---------------------------------------------------------------------------


class _Document(BaseModel):
    type: Literal["passport", "id_card", "driving_licence"]
    number: str = Field(min_length=1, max_length=64)
    country: str = Field(pattern=r"^[A-Z]{2}$")


class _Person(BaseModel):
    given_name: str = Field(min_length=1, max_length=200)
    family_name: str = Field(min_length=1, max_length=200)
    date_of_birth: dt.date


class _VerificationRequest(BaseModel):
    reference: str = Field(min_length=1, max_length=100)
    document: _Document
    person: _Person
    callback_url: str | None = Field(default=None, max_length=2000)

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise ValueError("must be an http(s) URL")
        return value


def _outcome(document_number: str) -> str:
    number = document_number.strip().upper()
    if number.startswith(SLOW):
        return SLOW
    return next((prefix for prefix in OUTCOMES if number.startswith(prefix)), "CLEAR")


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


# -- storage -------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS verifications (
    id                TEXT PRIMARY KEY,
    idempotency_key   TEXT NOT NULL UNIQUE,
    fingerprint       TEXT NOT NULL,
    reference         TEXT NOT NULL,
    outcome           TEXT NOT NULL,
    callback_url      TEXT NOT NULL,
    status            TEXT NOT NULL,
    verdict           TEXT,
    checks            TEXT,
    created_at        REAL NOT NULL,
    due_at            REAL NOT NULL,
    completed_at      REAL,
    -- pending: not decided yet; due: owed; delivered; failed: attempts used up; never: SLOW
    callback_state    TEXT NOT NULL DEFAULT 'pending',
    callback_body     TEXT,
    callback_attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   REAL
);
CREATE INDEX IF NOT EXISTS verifications_due ON verifications (status, due_at);
CREATE INDEX IF NOT EXISTS callbacks_due ON verifications (callback_state, next_attempt_at);
"""
COLUMNS = (
    "id, reference, status, verdict, checks, created_at, completed_at, fingerprint, "
    "callback_url, callback_body, callback_attempts"
)


@dataclass(frozen=True)
class Row:
    id: str
    reference: str
    status: str
    verdict: str | None
    checks: str | None
    created_at: float
    completed_at: float | None
    fingerprint: str
    callback_url: str
    callback_body: str | None
    callback_attempts: int

    def public(self) -> JsonObject:
        return {
            "id": self.id,
            "reference": self.reference,
            "status": self.status,
            "verdict": self.verdict,
            "checks": json.loads(self.checks) if self.checks else {},
            "created_at": _iso(self.created_at),
            "completed_at": _iso(self.completed_at),
        }


class Store:
    """The provider's records in one SQLite file, used only from the event loop's thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode loses nothing when the process dies, only on power loss.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _one(self, where: str, value: str) -> Row | None:
        found = self._db.execute(
            f"SELECT {COLUMNS} FROM verifications WHERE {where} = ?",  # noqa: S608 - fixed names
            (value,),
        ).fetchone()
        return None if found is None else Row(*found)

    def get(self, verification_id: str) -> Row | None:
        return self._one("id", verification_id)

    def by_key(self, key: str) -> Row | None:
        return self._one("idempotency_key", key)

    def add(
        self,
        *,
        key: str,
        fingerprint: str,
        reference: str,
        outcome: str,
        callback_url: str,
        now: float,
        due_at: float,
    ) -> Row:
        verification_id = f"ver_{secrets.token_hex(12)}"
        self._db.execute(
            "INSERT INTO verifications (id, idempotency_key, fingerprint, reference, outcome,"
            " callback_url, status, created_at, due_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
            (verification_id, key, fingerprint, reference, outcome, callback_url, now, due_at),
        )
        row = self.get(verification_id)
        assert row is not None  # noqa: S101 - inserted just above
        return row

    def decide_due(self, now: float) -> list[str]:
        """Complete every verification whose time has come; return their ids."""
        due = self._db.execute(
            "SELECT id, reference, outcome, due_at FROM verifications"
            " WHERE status = 'pending' AND due_at <= ?",
            (now,),
        ).fetchall()
        for verification_id, reference, outcome, due_at in due:
            verdict, checks = OUTCOMES.get(outcome, OUTCOMES["CLEAR"])
            completed_at = max(due_at, now)
            body = json.dumps(
                {
                    "id": verification_id,
                    "reference": reference,
                    "status": "completed",
                    "verdict": verdict,
                    "checks": checks,
                    "completed_at": _iso(completed_at),
                },
                separators=(",", ":"),
            )
            self._db.execute(
                "UPDATE verifications SET status = 'completed', verdict = ?, checks = ?,"
                " completed_at = ?, callback_body = ?, callback_state = ?, next_attempt_at = ?"
                " WHERE id = ? AND status = 'pending'",
                (
                    verdict,
                    json.dumps(checks),
                    completed_at,
                    body,
                    "never" if outcome == SLOW else "due",
                    now,
                    verification_id,
                ),
            )
        return [row[0] for row in due]

    def callbacks_due(self, now: float) -> list[Row]:
        found = self._db.execute(
            f"SELECT {COLUMNS} FROM verifications"  # noqa: S608 - fixed names
            " WHERE callback_state = 'due' AND next_attempt_at <= ? ORDER BY next_attempt_at",
            (now,),
        ).fetchall()
        return [Row(*row) for row in found]

    def callback_delivered(self, verification_id: str) -> None:
        self._db.execute(
            "UPDATE verifications SET callback_state = 'delivered',"
            " callback_attempts = callback_attempts + 1, next_attempt_at = NULL WHERE id = ?",
            (verification_id,),
        )

    def callback_failed(self, verification_id: str, *, next_attempt_at: float | None) -> None:
        self._db.execute(
            "UPDATE verifications SET callback_attempts = callback_attempts + 1,"
            " callback_state = ?, next_attempt_at = ? WHERE id = ?",
            ("failed" if next_attempt_at is None else "due", next_attempt_at, verification_id),
        )


# -- the service ---------------------------------------------------------------------------


class KycSandbox:
    """HTTP handlers plus the loop that decides verifications and delivers callbacks."""

    def __init__(self, config: KycConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self._sending: set[str] = set()
        self._deliveries: set[asyncio.Task[None]] = set()

    def app(self) -> Starlette:
        routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/v1/verifications", self.create_verification, methods=["POST"]),
            Route("/v1/verifications/{id}", self.get_verification, methods=["GET"]),
        ]
        return Starlette(
            routes=routes,
            lifespan=self._lifespan,
            exception_handlers={HTTPException: _http_exception, ApiError: _api_error},
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        del app
        async with httpx.AsyncClient(timeout=CALLBACK_TIMEOUT_SECONDS) as client:
            worker = asyncio.create_task(self._work(client))
            try:
                yield
            finally:
                worker.cancel()
                for task in (worker, *self._deliveries):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    def _authenticate(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.encode(), self.config.api_key.encode()
        ):
            raise ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <key>' is needed")

    async def healthz(self, request: Request) -> Response:
        del request
        return JSONResponse({"status": "ok"})

    async def create_verification(self, request: Request) -> Response:
        self._authenticate(request)
        key = request.headers.get("idempotency-key", "").strip()
        if not key:
            raise ApiError(400, "idempotency_key_required", "send an Idempotency-Key header")
        raw = await request.body()
        try:
            payload = _VerificationRequest.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "body"
            raise ApiError(422, "invalid_request", f"{field}: {first['msg']}") from None
        callback_url = payload.callback_url or self.config.default_callback_url
        if callback_url is None:
            raise ApiError(422, "invalid_request", "callback_url: required (no default set)")
        # The digest of the validated request, not of its bytes: the same request sent with
        # other whitespace or key order is the same request.
        fingerprint = hashlib.sha256(
            json.dumps(payload.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest()
        existing = self.store.by_key(key)
        if existing is not None:
            if not secrets.compare_digest(existing.fingerprint, fingerprint):
                raise ApiError(
                    409, "idempotency_key_reused", "this Idempotency-Key came with another body"
                )
            return JSONResponse(
                existing.public(), status_code=202, headers={"Idempotent-Replayed": "true"}
            )
        outcome = _outcome(payload.document.number)
        now = time.time()
        wait = self.config.slow_seconds if outcome == SLOW else self.config.delay_seconds
        row = self.store.add(
            key=key,
            fingerprint=fingerprint,
            reference=payload.reference,
            outcome=outcome,
            callback_url=callback_url,
            now=now,
            due_at=now + wait,
        )
        log.info("accepted %s for %s", row.id, row.reference)
        return JSONResponse(row.public(), status_code=202)

    async def get_verification(self, request: Request) -> Response:
        self._authenticate(request)
        row = self.store.get(request.path_params["id"])
        if row is None:
            raise ApiError(404, "not_found", "no such verification")
        return JSONResponse(row.public())

    # -- deciding and calling back ---------------------------------------------------------

    async def _work(self, client: httpx.AsyncClient) -> None:
        while True:
            try:
                now = time.time()
                for verification_id in self.store.decide_due(now):
                    log.info("decided %s", verification_id)
                for row in self.store.callbacks_due(now):
                    if row.id not in self._sending:
                        self._sending.add(row.id)
                        task = asyncio.create_task(self._deliver(client, row))
                        self._deliveries.add(task)
                        task.add_done_callback(self._deliveries.discard)
            except sqlite3.Error:
                log.exception("kyc sandbox: store error; trying again")
            await asyncio.sleep(self.config.tick_seconds)

    async def _deliver(self, client: httpx.AsyncClient, row: Row) -> None:
        try:
            body = (row.callback_body or "").encode()
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self.config.webhook_secret, body, int(time.time())),
            }
            attempt = row.callback_attempts + 1
            try:
                response = await client.post(row.callback_url, content=body, headers=headers)
                outcome = str(response.status_code)
                delivered = response.is_success
            except httpx.HTTPError as exc:
                outcome, delivered = type(exc).__name__, False
            if delivered:
                self.store.callback_delivered(row.id)
                log.info("callback %s attempt %d: %s", row.id, attempt, outcome)
                return
            retry_at = None
            if attempt < self.config.callback_attempts:
                retry_at = time.time() + self.config.retry_base_seconds * 2 ** (attempt - 1)
            self.store.callback_failed(row.id, next_attempt_at=retry_at)
            log.warning(
                "callback %s attempt %d: %s; %s",
                row.id,
                attempt,
                outcome,
                "giving up" if retry_at is None else "will retry",
            )
        finally:
            self._sending.discard(row.id)


async def _api_error(request: Request, exc: Exception) -> Response:
    del request
    assert isinstance(exc, ApiError)  # noqa: S101 - registered for ApiError only
    return exc.response()


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for HTTPException only
    code = "not_found" if exc.status_code == 404 else "invalid_request"
    return ApiError(exc.status_code, code, f"{request.method} {request.url.path}").response()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = KycConfig.from_env()
    store = Store(config.home / "kyc.sqlite3")
    return serve(
        KycSandbox(config, store).app(),
        host=os.environ.get("BFC_KYC_HOST", "127.0.0.1"),
        port=int(os.environ.get("BFC_KYC_PORT", "8102")),
        close=store.close,
        lifespan="on",
    )


if __name__ == "__main__":
    sys.exit(main())
