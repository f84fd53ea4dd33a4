"""The API application in-process (real database, real Keycloak tokens), and dev logins."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import cache

import httpx
import pytest

from api.main import create_app
from infra.keycloak import TokenVerifier, password_login
from infra.settings import Settings


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


class Logins:
    """Bearer headers and subject ids of the realm's dev users (one login each per run)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.verifier = TokenVerifier(settings)

    @cache  # noqa: B019 - one instance per test session; tokens live five minutes
    def token(self, username: str) -> str:
        return password_login(self.settings, username, f"dev-{username}")

    def headers(self, username: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(username)}", **extra}

    def subject(self, username: str) -> str:
        return self.verifier.verify(self.token(username)).subject


@pytest.fixture(scope="session")
def logins(settings: Settings) -> Logins:
    return Logins(settings)
