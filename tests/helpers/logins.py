"""Dev logins of the realm's users, for tests that call the API as someone."""

from __future__ import annotations

from functools import cache

from infra.keycloak import TokenVerifier, password_login
from infra.settings import Settings


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
