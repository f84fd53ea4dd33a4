"""Suite-wide wiring.

Tests that need the real local stack ask for ``stack`` (or anything built on it): the
session starts whatever is not running yet (``Stack.up`` is idempotent) and, at the end,
stops exactly what it started, so a developer's running stack is left as it was. Tests that
restart the stack (marker ``lifecycle``) run after everything else.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine
from temporalio.client import Client

from api.main import create_app
from infra.db import create_db_engine
from infra.envelope import EnvelopeCipher
from infra.ledger_store import LedgerStore, create_ledger_pool
from infra.settings import Settings
from infra.stack.launcher import Stack
from infra.temporal import connect_temporal
from infra.vault import connect_vault
from tests.helpers.ledger import AccountFactory
from tests.helpers.logins import Logins


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    stack = Stack(Settings())
    report = stack.up()
    yield stack
    if report.started:
        stack.down(tuple(report.started))


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    """Settings as an application process gets them: with the bfc-app AppRole for Vault."""
    creds = json.loads(stack.vault.approle_file.read_text())
    return Settings(vault_role_id=creds["role_id"], vault_secret_id=creds["secret_id"])


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    engine = create_db_engine(settings, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def cipher(settings: Settings) -> EnvelopeCipher:
    return EnvelopeCipher(connect_vault(settings), settings)


@pytest.fixture
async def temporal(settings: Settings, cipher: EnvelopeCipher) -> AsyncIterator[Client]:
    """A client as the platform's processes have it: payloads encrypted end to end."""
    yield await connect_temporal(settings, cipher)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A few connections to the platform database, as the API and the worker pool them."""
    pool = create_ledger_pool(settings, min_size=1, max_size=4)
    await pool.open()
    yield pool
    await pool.close()


@pytest.fixture
async def ledger(settings: Settings) -> AsyncIterator[LedgerStore]:
    pool = create_ledger_pool(settings, max_size=30)
    await pool.open()
    store = LedgerStore(pool)
    yield store
    await store.close()
    await pool.close()


@pytest.fixture
def accounts(ledger: LedgerStore, unique: str) -> AccountFactory:
    return AccountFactory(ledger, unique)


@pytest.fixture(scope="session")
def logins(settings: Settings) -> Logins:
    return Logins(settings)


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API application in-process: real database, Vault, Temporal and Keycloak tokens."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("lifecycle") is not None)
