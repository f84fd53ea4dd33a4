"""The FastAPI application: ``uvicorn api.main:create_app --factory``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.deps import TemporalHolder
from api.errors import install_problem_handlers
from api.routes import accounts, health, ledger
from infra.db import create_db_engine
from infra.keycloak import TokenVerifier
from infra.ledger_store import LedgerStore, create_ledger_pool
from infra.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.engine = create_db_engine(settings)
        app.state.temporal = TemporalHolder(settings)
        app.state.token_verifier = TokenVerifier(settings)
        pool = create_ledger_pool(settings)
        await pool.open(wait=False)
        app.state.ledger = LedgerStore(pool)
        try:
            yield
        finally:
            await app.state.ledger.close()
            await pool.close()
            app.state.engine.dispose()

    app = FastAPI(
        title="BFC Payments API",
        version="0.1.0",
        lifespan=lifespan,
        description="Payments, onboarding and compliance review over Temporal workflows.",
    )
    install_problem_handlers(app)
    app.include_router(health.router)
    app.include_router(accounts.router)
    app.include_router(ledger.router)
    return app
