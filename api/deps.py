"""Dependencies shared by the routers, as ``Annotated`` aliases."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.service import RetryConfig

from api.errors import ProblemError, temporal_unavailable
from infra.envelope import EnvelopeCipher
from infra.ledger_store import LedgerStore
from infra.settings import Settings
from infra.temporal import connect_temporal

# An API request that needs Temporal while it is away answers 503 after about two seconds
# of retries instead of the SDK's ten (a brief blip is still ridden out). Starts that fail
# here are not lost: the sweep makes them (api/payment_starter.py).
API_TEMPORAL_RETRY = RetryConfig(max_elapsed_time_millis=2_000, max_retries=6)


class TemporalHolder:
    """The process's one Temporal client, connected on first use (so the API can start
    before Temporal answers) and again after a failed attempt, one attempt at a time."""

    def __init__(self, settings: Settings, cipher: EnvelopeCipher | None = None) -> None:
        self._settings = settings
        self._cipher = cipher
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Client | None:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await asyncio.wait_for(
                        connect_temporal(self._settings, self._cipher, API_TEMPORAL_RETRY),
                        timeout=3,
                    )
                except (TimeoutError, RuntimeError, OSError):
                    return None
            return self._client


# Dependencies are ``async def`` even when they only read app state: FastAPI runs a plain
# ``def`` dependency in a worker thread, a thread hop on every request (7 % of the API's CPU
# per payment when get_ledger was one) for a dictionary lookup.


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_temporal(request: Request) -> Client | None:
    holder: TemporalHolder = request.app.state.temporal
    return await holder.get()


async def get_ledger(request: Request) -> LedgerStore:
    ledger: LedgerStore = request.app.state.ledger
    return ledger


LedgerDep = Annotated[LedgerStore, Depends(get_ledger)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
TemporalClientDep = Annotated[Client | None, Depends(get_temporal)]


# Requests that move money or create something take a client-chosen key; a retry with the
# same key is the same request. Missing -> 400 (not 422): it is a protocol requirement. An
# empty value is a missing key, so the pattern lets it through to require_idempotency_key.
IdempotencyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255, pattern=r"^[\x21-\x7e]*$"),
]


def require_idempotency_key(key: str | None) -> str:
    if not key:
        raise ProblemError(
            400,
            "idempotency_key_required",
            "Idempotency-Key header required",
            "send a unique Idempotency-Key with the request; retry with the same key",
            errors=[{"field": "Idempotency-Key", "code": "missing", "message": "required"}],
        )
    return key


def temporal_or_503(client: Client | None) -> Client:
    if client is None:
        raise temporal_unavailable()
    return client
