"""Dev logins of the realm's users, for tests that call the API as someone."""

from __future__ import annotations

import time

from infra.keycloak import TokenVerifier, password_login
from infra.settings import Settings

TOKEN_REUSE_SECONDS = 120


class Logins:
    """Bearer headers and subject ids of the realm's dev users (one login each per run)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.verifier = TokenVerifier(settings)
        self._tokens: dict[str, tuple[str, float]] = {}

    def token(self, username: str) -> str:
        # Tokens live five minutes and the suite runs longer: log in again well before that.
        fetched = self._tokens.get(username)
        if fetched is None or time.monotonic() - fetched[1] > TOKEN_REUSE_SECONDS:
            fetched = (password_login(self.settings, username, f"dev-{username}"), time.monotonic())
            self._tokens[username] = fetched
        return fetched[0]

    def headers(self, username: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(username)}", **extra}

    def subject(self, username: str) -> str:
        return self.verifier.verify(self.token(username)).subject
