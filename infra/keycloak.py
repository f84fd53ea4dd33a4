"""Keycloak as the platform's identity provider: token verification and dev logins.

Access tokens are RS256 JWTs signed by the realm. Verification checks the signature
against the realm's JWKS (fetched once and cached; a token with an unknown ``kid`` makes
the cache refresh once, so a key rotation in Keycloak needs no restart), the issuer, the
audience, expiry and not-before with a small leeway.

A token that verified is remembered (by its exact text) until it expires, while the key
that signed it is still trusted: apps send one token for minutes.

``verify(token, local_only=True)`` never fetches the JWKS: it raises ``KeyNotAtHand``
instead (``infra.key_at_hand``), so the API checks tokens on its event loop and goes to a
thread only for a first or rotated key.

Keycloak unreachable when a key must be fetched: a key that verified tokens before is used
past its lifespan (a withdrawal cannot be learnt from an issuer that does not answer, and
payments should not stop with identity), with a warning; for a token whose key was never
seen, ``IssuerUnreachable``, which the API answers 503, not 401: the token may be good.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from infra.key_at_hand import KeyNotAtHand
from infra.settings import Settings

log = logging.getLogger(__name__)


class InvalidToken(Exception):
    """The token is missing, malformed, expired, or not issued for us."""


class IssuerUnreachable(Exception):
    """The realm's keys could not be fetched, and none known signed this token."""


# How long a fetched signing key is trusted without asking Keycloak again: a key the realm
# withdraws stops verifying within this time.
JWKS_LIFESPAN_SECONDS = 3600
# Keycloak unreachable: a known key is trusted this much longer before the next attempt, so
# requests do not each wait on a fetch (at most JWKS_FETCH_TIMEOUT_SECONDS) meanwhile.
STALE_KEY_RETRY_SECONDS = 30
JWKS_FETCH_TIMEOUT_SECONDS = 5
# Tokens that verified, by their exact text: an app sends one token for minutes, and checking
# it again each time (base64, JSON, the RSA signature, the claims) was a sixth of the API's
# CPU per payment. The oldest go first when the cache is full.
VERIFIED_TOKENS_KEPT = 4096


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
            lifespan=JWKS_LIFESPAN_SECONDS,
            cooldown_duration=settings.keycloak_jwks_refresh_cooldown_seconds,
            timeout=JWKS_FETCH_TIMEOUT_SECONDS,
        )
        # kid -> (key, trusted until, monotonic): keys that verified a token, for local_only.
        self._at_hand: dict[str, tuple[jwt.PyJWK, float]] = {}
        # token -> (its identity, its key's kid, its exp): see VERIFIED_TOKENS_KEPT.
        self._verified: dict[str, tuple[VerifiedToken, str, float]] = {}
        self._verified_lock = threading.Lock()  # verify runs on the loop and in threads

    def verify(self, token: str, *, local_only: bool = False) -> VerifiedToken:
        """The token's identity, or ``InvalidToken``; with ``local_only``, ``KeyNotAtHand``
        rather than a network call when its key is not cached."""
        known = self._verified_before(token)
        if known is not None:
            return known
        try:
            key = self._key_at_hand(token) if local_only else self._fetched_key(token)
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
        verified = VerifiedToken(
            subject=claims["sub"],
            username=claims.get("preferred_username"),
            roles=frozenset(roles),
            client_id=claims.get("azp"),
            claims=claims,
        )
        if key.key_id:
            with self._verified_lock:
                if len(self._verified) >= VERIFIED_TOKENS_KEPT:
                    del self._verified[next(iter(self._verified))]
                self._verified[token] = (verified, key.key_id, float(claims["exp"]))
        return verified

    def _verified_before(self, token: str) -> VerifiedToken | None:
        """The identity of a token that verified before, while it has not expired and the
        key that signed it is still trusted (a withdrawn key stops its tokens too)."""
        with self._verified_lock:
            entry = self._verified.get(token)
        if entry is None:
            return None
        verified, kid, expires = entry
        key = self._at_hand.get(kid)
        if time.time() <= expires + self._leeway and key is not None and key[1] >= time.monotonic():
            return verified
        with self._verified_lock:
            self._verified.pop(token, None)
        return None

    def _key_at_hand(self, token: str) -> jwt.PyJWK:
        kid = jwt.get_unverified_header(token).get("kid")
        entry = self._at_hand.get(kid) if isinstance(kid, str) else None
        if entry is None or entry[1] < time.monotonic():
            raise KeyNotAtHand(str(kid))
        return entry[0]

    def _fetched_key(self, token: str) -> jwt.PyJWK:
        # PyJWKClient refetches the key set once when the kid is not in its cache.
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            kid = str(jwt.get_unverified_header(token).get("kid"))
            known = self._at_hand.get(kid)
            if known is None:
                raise IssuerUnreachable(str(exc)) from exc
            log.warning("keycloak unreachable; key %s used past its lifespan: %s", kid, exc)
            self._at_hand[kid] = (known[0], time.monotonic() + STALE_KEY_RETRY_SECONDS)
            return known[0]
        if key.key_id:
            self._at_hand[key.key_id] = (key, time.monotonic() + JWKS_LIFESPAN_SECONDS)
        return key


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
