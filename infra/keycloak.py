"""Keycloak as the platform's identity provider: token verification and dev logins.

Access tokens are RS256 JWTs signed by the realm. Verification checks the signature
against the realm's JWKS (fetched once and cached; a token with an unknown ``kid`` makes
the cache refresh once, so a key rotation in Keycloak needs no restart), the issuer, the
audience, expiry and not-before with a small leeway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from infra.settings import Settings


class InvalidToken(Exception):
    """The token is missing, malformed, expired, or not issued for us."""


@dataclass(frozen=True)
class VerifiedToken:
    subject: str
    username: str | None
    roles: frozenset[str]
    client_id: str | None
    claims: dict[str, Any]


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self._issuer = settings.keycloak_issuer
        self._audience = settings.keycloak_audience
        self._leeway = settings.keycloak_leeway_seconds
        self._jwks = jwt.PyJWKClient(
            f"{self._issuer}/protocol/openid-connect/certs",
            cache_keys=True,
            lifespan=3600,
            cooldown_duration=settings.keycloak_jwks_refresh_cooldown_seconds,
        )

    def verify(self, token: str) -> VerifiedToken:
        try:
            # PyJWKClient refetches the key set once when the kid is not in its cache.
            key = self._jwks.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=["RS256"],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        roles = claims.get("realm_access", {}).get("roles", [])
        return VerifiedToken(
            subject=claims["sub"],
            username=claims.get("preferred_username"),
            roles=frozenset(roles),
            client_id=claims.get("azp"),
            claims=claims,
        )


def token_endpoint(settings: Settings) -> str:
    return f"{settings.keycloak_issuer}/protocol/openid-connect/token"


def password_login(settings: Settings, username: str, password: str) -> str:
    """A development login through the public ``bfc-cli`` client; returns the access token."""
    response = httpx.post(
        token_endpoint(settings),
        data={
            "grant_type": "password",
            "client_id": "bfc-cli",
            "username": username,
            "password": password,
            "scope": "openid",
        },
        timeout=10,
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


def client_credentials_login(settings: Settings, client_id: str, client_secret: str) -> str:
    """A service login (the ``bfc-app`` client) with its secret, read from Vault by callers."""
    response = httpx.post(
        token_endpoint(settings),
        data={"grant_type": "client_credentials"},
        auth=(client_id, client_secret),
        timeout=10,
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token
