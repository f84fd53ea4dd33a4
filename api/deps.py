"""Dependencies shared by the routers, as ``Annotated`` aliases."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from temporalio.client import Client

from infra.envelope import EnvelopeCipher
from infra.ledger_store import LedgerStore
from infra.settings import Settings
from infra.temporal import connect_temporal


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
                        connect_temporal(self._settings, self._cipher), timeout=3
                    )
                except (TimeoutError, RuntimeError, OSError):
                    return None
            return self._client


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_temporal(request: Request) -> Client | None:
    holder: TemporalHolder = request.app.state.temporal
    return await holder.get()


def get_ledger(request: Request) -> LedgerStore:
    ledger: LedgerStore = request.app.state.ledger
    return ledger


LedgerDep = Annotated[LedgerStore, Depends(get_ledger)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
TemporalClientDep = Annotated[Client | None, Depends(get_temporal)]
