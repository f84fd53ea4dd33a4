"""Keycloak: every dev login yields a realm-signed token with the expected roles."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest

from infra.key_at_hand import KeyNotAtHand
from infra.keycloak import (
    JWKS_LIFESPAN_SECONDS,
    InvalidToken,
    IssuerUnreachable,
    TokenVerifier,
    client_credentials_login,
    password_login,
)
from infra.settings import Settings
from infra.stack.launcher import Stack
from infra.vault import SecretStore, connect_vault
from tests.helpers.stack import stopped

DEV_USERS = {
    "alice": "customer",
    "bob": "customer",
    "olivia": "operator",
    "carol": "compliance_officer",
    "cora": "compliance_officer",
    "admin": "admin",
}


@pytest.fixture(scope="module")
def verifier(settings: Settings) -> TokenVerifier:
    return TokenVerifier(settings)


@pytest.mark.parametrize(("username", "role"), DEV_USERS.items())
def test_dev_user_token_verifies_against_the_realm_jwks(
    settings: Settings, verifier: TokenVerifier, username: str, role: str
) -> None:
    token = password_login(settings, username, f"dev-{username}")
    verified = verifier.verify(token)
    assert verified.username == username
    assert verified.roles == {role}
    assert verified.claims["iss"] == settings.keycloak_issuer
    assert settings.keycloak_audience in _audiences(verified.claims)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"


def test_the_app_client_logs_in_with_its_secret_from_vault(
    settings: Settings, verifier: TokenVerifier
) -> None:
    creds = SecretStore(connect_vault(settings), settings).read("keycloak")
    token = client_credentials_login(settings, creds["client_id"], creds["client_secret"])
    verified = verifier.verify(token)
    assert "app" in verified.roles
    assert verified.client_id == "bfc-app"


def test_a_wrong_password_is_refused(settings: Settings) -> None:
    with pytest.raises(httpx.HTTPStatusError) as refused:
        password_login(settings, "alice", "not-her-password")
    # OAuth 2.0 (RFC 6749 5.2): a bad resource-owner password is an invalid_grant.
    assert refused.value.response.status_code == 400
    assert refused.value.response.json()["error"] == "invalid_grant"


def test_a_tampered_token_does_not_verify(settings: Settings, verifier: TokenVerifier) -> None:
    token = password_login(settings, "bob", "dev-bob")
    header, payload, signature = token.split(".")
    forged_claims = jwt.utils.base64url_decode(payload).replace(b'"bob"', b'"eve"')
    forged = ".".join([header, jwt.utils.base64url_encode(forged_claims).decode(), signature])
    with pytest.raises(InvalidToken):
        verifier.verify(forged)


def test_a_cached_key_verifies_without_keycloak_until_its_lifespan_ends(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = TokenVerifier(settings)
    token = password_login(settings, "alice", "dev-alice")
    with pytest.raises(KeyNotAtHand):  # nothing fetched yet: the caller must go to a thread
        fresh.verify(token, local_only=True)

    assert fresh.verify(token).username == "alice"  # fetches the realm's keys
    assert fresh.verify(token, local_only=True).username == "alice"

    # A token signed by another key (or forged) is not let through by the cache.
    header, payload, signature = token.split(".")
    forged_claims = jwt.utils.base64url_decode(payload).replace(b'"alice"', b'"eve"')
    forged = ".".join([header, jwt.utils.base64url_encode(forged_claims).decode(), signature])
    with pytest.raises(InvalidToken):
        fresh.verify(forged, local_only=True)

    # Past the lifespan the key must be fetched again: a withdrawn key stops verifying.
    later = time.monotonic() + JWKS_LIFESPAN_SECONDS + 1
    monkeypatch.setattr("infra.keycloak.time.monotonic", lambda: later)
    with pytest.raises(KeyNotAtHand):
        fresh.verify(token, local_only=True)


def test_a_token_that_verified_is_answered_from_memory_until_it_expires(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = TokenVerifier(settings)
    token = password_login(settings, "bob", "dev-bob")
    first = fresh.verify(token)

    def no_second_check(*_: object, **__: object) -> None:
        raise jwt.InvalidTokenError("checked again")

    monkeypatch.setattr("infra.keycloak.jwt.decode", no_second_check)
    assert fresh.verify(token, local_only=True) is first  # not decoded again
    other = password_login(settings, "bob", "dev-bob")
    with pytest.raises(InvalidToken, match="checked again"):  # another token is checked
        fresh.verify(other, local_only=True)

    # Past its expiry (and the leeway) the token is not taken from memory.
    expired_at = first.claims["exp"] + settings.keycloak_leeway_seconds + 1
    monkeypatch.setattr("infra.keycloak.time.time", lambda: expired_at)
    with pytest.raises(InvalidToken, match="checked again"):
        fresh.verify(token, local_only=True)


@pytest.mark.lifecycle  # stops Keycloak: runs with the fault tests, last
async def test_with_keycloak_away_a_known_key_still_verifies_and_an_unknown_one_is_a_503(
    stack: Stack, settings: Settings, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = password_login(settings, "alice", "dev-alice")
    seen = TokenVerifier(settings)
    assert seen.verify(token).username == "alice"
    never_seen = TokenVerifier(settings)
    async with stopped(stack, "keycloak"):
        # Past the key's lifespan it must be fetched again, and Keycloak does not answer:
        # the key that verified before still does (a withdrawal cannot be learnt now).
        later = time.monotonic() + JWKS_LIFESPAN_SECONDS + 1
        monkeypatch.setattr("infra.keycloak.time.monotonic", lambda: later)
        with pytest.raises(KeyNotAtHand):
            seen.verify(token, local_only=True)
        assert seen.verify(token).username == "alice"
        # ... and stays at hand for a while, so requests do not each try Keycloak.
        assert seen.verify(token, local_only=True).username == "alice"
        monkeypatch.undo()
        # A key never seen cannot be checked: not an invalid token, Keycloak is away.
        with pytest.raises(IssuerUnreachable):
            never_seen.verify(token)
        # The API (a fresh process's verifier) says so: 503 to ask again, not 401.
        response = await api.get("/v1/accounts", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "unavailable"
        assert response.headers["Retry-After"]


def test_a_token_for_another_audience_does_not_verify(settings: Settings) -> None:
    token = password_login(settings, "alice", "dev-alice")
    other = TokenVerifier(settings.model_copy(update={"keycloak_audience": "someone-else"}))
    with pytest.raises(InvalidToken, match=r"[Aa]udience"):
        other.verify(token)


def _audiences(claims: dict[str, object]) -> list[str]:
    aud = claims["aud"]
    return [aud] if isinstance(aud, str) else list(aud)  # type: ignore[call-overload]
