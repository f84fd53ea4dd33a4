"""The FastAPI application: ``uvicorn api.main:create_app --factory``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.body_limit import LimitRequestBodies
from api.deps import TemporalHolder
from api.errors import install_problem_handlers
from api.nul_guard import RefuseNulCharacters
from api.onboarding_starter import ApplicationStarter
from api.payment_starter import SagaStarter
from api.routes import (
    accounts,
    codec,
    events,
    health,
    kyc,
    ledger,
    onboarding,
    payments,
    reviews,
    session,
    webhooks,
)
from api.routes.codec import CodecCORS
from infra.db import create_db_engine
from infra.envelope import EnvelopeCipher
from infra.event_log import EventLog
from infra.identity import IdentityDirectory
from infra.keycloak import TokenVerifier
from infra.ledger_store import LedgerStore, create_ledger_pool
from infra.onboarding_store import OnboardingStore
from infra.payment_store import PaymentStore
from infra.settings import Settings, get_settings
from infra.temporal import EnvelopePayloadCodec
from infra.vault import SecretStore, SecretsUnavailable, connect_vault, load_platform_secrets


def codec_origins(settings: Settings) -> list[str]:
    """The Temporal Web UI's origins: the only pages that may call the codec routes."""
    port = settings.temporal_ui_port
    return sorted(
        {settings.temporal_ui_url, f"http://localhost:{port}", f"http://127.0.0.1:{port}"}
    )


def _install_starters(app: FastAPI, settings: Settings) -> SagaStarter:
    """What starts the workflows of accepted payments, refunds and applications, and sweeps
    up the starts that were lost (one loop, ``SagaStarter.sweep_forever``)."""
    applications = ApplicationStarter(
        app.state.onboarding, app.state.temporal.get, task_queue=settings.task_queue
    )
    app.state.application_starter = applications
    starter = SagaStarter(
        app.state.payments,
        app.state.temporal.get,
        task_queue=settings.task_queue,
        four_eyes_threshold_minor=settings.four_eyes_threshold_minor,
        also_sweep=[applications.sweep],
    )
    app.state.saga_starter = starter
    return starter


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        try:
            vault = connect_vault(settings)
            platform_secrets = load_platform_secrets(SecretStore(vault, settings))
        except SecretsUnavailable as exc:
            # One line a person can act on, then stop: serving without secrets helps no one.
            print(f"api: {exc}", file=sys.stderr)  # noqa: T201
            raise SystemExit(1) from None
        cipher = EnvelopeCipher(vault, settings)
        app.state.cipher = cipher
        app.state.session_key = platform_secrets["api"]["session_signing_key"].encode()
        app.state.codec_origins = origins
        app.state.payload_codec = EnvelopePayloadCodec(cipher)
        app.state.engine = create_db_engine(settings)
        app.state.onboarding = OnboardingStore(app.state.engine, cipher)
        app.state.kyc_webhook_secret = platform_secrets["kyc"]["webhook_signing_secret"]
        # Asks Keycloak only when used (its token too): the API starts without Keycloak.
        app.state.identity = IdentityDirectory.connect(
            settings,
            client_id=platform_secrets["keycloak"]["client_id"],
            client_secret=platform_secrets["keycloak"]["client_secret"],
        )
        app.state.temporal = TemporalHolder(settings, cipher)
        app.state.token_verifier = TokenVerifier(settings)
        # While the database is away, a request hears so at once, not after the pool's wait.
        pool = create_ledger_pool(settings, outage_timeout=0.5)
        await pool.open(wait=False)
        app.state.ledger = LedgerStore(pool)
        app.state.payments = PaymentStore(pool)
        app.state.events = EventLog(pool)
        starter = _install_starters(app, settings)
        sweep = asyncio.create_task(starter.sweep_forever())
        try:
            yield
        finally:
            await starter.stop(sweep)
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
    # The last added runs first: CORS, then the body bound, then the NUL check (which may
    # read a body, so it runs inside the bound); refusals carry the CORS headers too.
    app.add_middleware(RefuseNulCharacters)
    app.add_middleware(LimitRequestBodies)
    origins = codec_origins(settings)
    app.add_middleware(CodecCORS, origins=origins)
    # Starlette tries routes in order: the busiest route (POST /v1/payments) first spares
    # every payment the match against a score of others. No two routers share a prefix.
    for routes in (
        payments,
        health,
        accounts,
        ledger,
        onboarding,
        kyc,
        reviews,
        codec,
        session,
        webhooks,
        events,
    ):
        app.include_router(routes.router)
    return app
