"""The FastAPI application: ``uvicorn api.main:create_app --factory``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.deps import TemporalHolder
from api.errors import install_problem_handlers
from api.routes import health
from infra.db import create_db_engine
from infra.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.engine = create_db_engine(settings)
        app.state.temporal = TemporalHolder(settings)
        yield
        app.state.engine.dispose()

    app = FastAPI(
        title="BFC Payments API",
        version="0.1.0",
        lifespan=lifespan,
        description="Payments, onboarding and compliance review over Temporal workflows.",
    )
    install_problem_handlers(app)
    app.include_router(health.router)
    return app
