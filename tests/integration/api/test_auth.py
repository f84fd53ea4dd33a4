"""Who may call what: the token matrix, the role matrix, and key rotation without restart."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from keycloak import KeycloakAdmin

from api.main import create_app
from infra.keycloak import password_login, token_endpoint
from infra.settings import Settings
from tests.helpers.logins import Logins

AUDIENCE_MAPPER = {
    "name": "bfc-api-audience",
    "protocol": "openid-connect",
    "protocolMapper": "oidc-audience-mapper",
    "config": {"included.client.audience": "bfc-api", "access.token.claim": "true"},
}


@pytest.fixture
def temporary_client(realm_admin: KeycloakAdmin) -> Iterator[Any]:
    """Make a public password-grant client with the given extras; removed afterwards."""
    made: list[str] = []

    def make(*, audience: bool, lifespan_seconds: int | None = None) -> str:
        client_id = f"bfc-test-{uuid.uuid4().hex[:8]}"
        attributes = {}
        if lifespan_seconds is not None:
            attributes["access.token.lifespan"] = str(lifespan_seconds)
        made.append(
            realm_admin.create_client(
                {
                    "clientId": client_id,
                    "publicClient": True,
                    "directAccessGrantsEnabled": True,
                    "standardFlowEnabled": False,
                    "attributes": attributes,
                    "protocolMappers": [AUDIENCE_MAPPER] if audience else [],
                }
            )
        )
        return client_id

    yield make
    for internal_id in made:
        realm_admin.delete_client(internal_id)


def login_with(settings: Settings, client_id: str, username: str = "alice") -> str:
    response = httpx.post(
        token_endpoint(settings),
        data={
            "grant_type": "password",
            "client_id": client_id,
            "username": username,
            "password": f"dev-{username}",
        },
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


@pytest.fixture
async def strict_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with no clock leeway, so an expired token is expired now."""
    app = create_app(settings.model_copy(update={"keycloak_leeway_seconds": 0}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


def forged(real_token: str) -> str:
    """The same claims and key id, signed by a key that is not the realm's."""
    header = jwt.get_unverified_header(real_token)
    claims = jwt.decode(real_token, options={"verify_signature": False})
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": header["kid"]})


async def assert_refused(api: httpx.AsyncClient, token: str | None, why: str) -> None:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    response = await api.get("/v1/accounts", headers=headers)
    assert response.status_code == 401, why
    assert response.headers["WWW-Authenticate"].startswith("Bearer"), why
    assert response.headers["content-type"] == "application/problem+json", why
    assert response.json()["code"] == "unauthenticated", why


async def test_the_token_matrix(
    strict_api: httpx.AsyncClient, settings: Settings, logins: Logins, temporary_client: Any
) -> None:
    good = logins.token("alice")
    assert (
        await strict_api.get("/v1/accounts", headers=logins.headers("alice"))
    ).status_code == 200

    await assert_refused(strict_api, None, "no token")
    await assert_refused(strict_api, "not-a-jwt", "malformed")
    await assert_refused(strict_api, forged(good), "signed by another key")
    other_audience = login_with(settings, temporary_client(audience=False))
    await assert_refused(strict_api, other_audience, "audience is not bfc-api")
    master = httpx.post(
        f"{settings.keycloak_url}/realms/master/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": "admin-cli",
            "username": "admin",
            "password": "dev-admin",
        },
    ).json()["access_token"]
    await assert_refused(strict_api, master, "issued by another realm")

    short = login_with(settings, temporary_client(audience=True, lifespan_seconds=5))
    fresh = await strict_api.get("/v1/accounts", headers={"Authorization": f"Bearer {short}"})
    assert fresh.status_code == 200
    await asyncio.sleep(6)  # past its five seconds, with no leeway
    await assert_refused(strict_api, short, "expired")


# Who gets what on every route. "ok" is any answer but 401/403 (the route's own outcome).
EVERYONE = {"alice", "bob", "olivia", "carol", "cora", "admin"}
STAFF = {"olivia", "admin"}
# Not for bearer tokens: the sender signs the body (tested with the route itself).
SIGNED_BY_THE_SENDER = {("POST", "/v1/kyc/callbacks")}
CUSTOMERS = {"alice", "bob"}
READERS_OF_PAYLOADS = {"olivia", "carol", "cora"}
ROLE_MATRIX: dict[tuple[str, str], set[str]] = {
    ("GET", "/v1/accounts"): EVERYONE,
    ("GET", "/v1/accounts/acc_nothing"): EVERYONE,
    ("GET", "/v1/accounts/acc_nothing/entries"): EVERYONE,
    ("GET", "/v1/accounts/acc_nothing/balance?as_of=2026-01-01T00:00:00Z"): EVERYONE,
    ("POST", "/v1/ledger/accounts"): STAFF,
    ("POST", "/v1/ledger/transfers"): STAFF,
    ("GET", "/v1/ledger/trial-balance"): STAFF,
    ("GET", "/v1/reviews"): {"olivia", "carol", "cora"},
    ("GET", "/v1/reviews/rev_nothing"): {"olivia", "carol", "cora"},
    ("POST", "/v1/reviews/rev_nothing/decision"): {"carol", "cora"},
    ("POST", "/v1/reviews/rev_nothing/assign"): {"carol", "cora"},
    ("POST", "/v1/accounts"): CUSTOMERS,
    ("POST", "/v1/payments"): CUSTOMERS,
    ("GET", "/v1/payments"): EVERYONE,
    ("GET", "/v1/payments/pay_nothing"): EVERYONE,
    ("POST", "/v1/payments/pay_nothing/cancel"): CUSTOMERS | STAFF,
    ("POST", "/v1/payments/pay_nothing/refunds"): CUSTOMERS | STAFF,
    ("GET", "/v1/payments/pay_nothing/refunds"): EVERYONE,
    ("GET", "/v1/payments/pay_nothing/refunds/rfd_nothing"): EVERYONE,
    ("POST", "/v1/onboarding"): set(),  # app clients only
    ("GET", "/v1/onboarding/onb_nothing"): STAFF | {"carol", "cora"},
    ("POST", "/v1/onboarding/onb_nothing/documents"): set(),
    ("POST", "/v1/onboarding/onb_nothing/reminders"): STAFF,
    ("POST", "/v1/onboarding/onb_nothing/cancel"): STAFF,
    ("POST", "/codec/decode"): READERS_OF_PAYLOADS,
    ("POST", "/codec/encode"): READERS_OF_PAYLOADS,
    # Apps only (client-credentials tokens with the app role): no dev user may.
    ("POST", "/v1/webhook-endpoints"): set(),
    ("GET", "/v1/webhook-endpoints"): set(),
    ("DELETE", "/v1/webhook-endpoints/we_nothing"): set(),
    ("POST", "/v1/webhook-endpoints/we_nothing/roll-secret"): set(),
    ("POST", "/v1/webhook-endpoints/we_nothing/enable"): set(),
    ("GET", "/v1/events"): set(),
    ("GET", "/v1/events/evt_nothing"): set(),
}


@pytest.mark.parametrize(("method", "path"), ROLE_MATRIX)
async def test_every_dev_user_gets_what_their_role_allows(
    api: httpx.AsyncClient, logins: Logins, method: str, path: str
) -> None:
    for user in ("alice", "bob", "olivia", "carol", "cora", "admin"):
        response = await api.request(
            method,
            path,
            headers=logins.headers(user, **{"Idempotency-Key": f"matrix-{uuid.uuid4()}"}),
            json={} if method == "POST" else None,
        )
        allowed = user in ROLE_MATRIX[(method, path)]
        assert (response.status_code not in {401, 403}) == allowed, (user, response.text)
        if not allowed:
            assert response.status_code == 403
            assert response.json()["code"] == "forbidden"


def test_the_matrix_covers_every_route() -> None:
    # The OpenAPI document is the list of routes a client can call: each must be in the matrix.
    paths = create_app().openapi()["paths"]
    routes = {
        (method.upper(), path)
        for path, operations in paths.items()
        for method in operations
        if path.startswith(("/v1/", "/codec/"))
    }
    covered = {
        (
            m,
            p.split("?")[0]
            .replace("acc_nothing", "{account_id}")
            .replace("rev_nothing", "{review_id}")
            .replace("pay_nothing", "{payment_id}")
            .replace("rfd_nothing", "{refund_id}")
            .replace("onb_nothing", "{onboarding_id}")
            .replace("we_nothing", "{endpoint_id}")
            .replace("evt_nothing", "{event_id}"),
        )
        for m, p in ROLE_MATRIX
    }
    assert routes == covered | SIGNED_BY_THE_SENDER


async def test_a_rotated_realm_key_is_accepted_without_restart(
    api: httpx.AsyncClient, settings: Settings, realm_admin: KeycloakAdmin
) -> None:
    before = password_login(settings, "bob", "dev-bob")
    ok = await api.get("/v1/accounts", headers={"Authorization": f"Bearer {before}"})
    assert ok.status_code == 200  # the API has cached the realm's keys by now

    realm_id = realm_admin.get_realm(settings.keycloak_realm)["id"]
    component = realm_admin.create_component(
        {
            "name": f"rotated-{uuid.uuid4().hex[:6]}",
            "providerId": "rsa-generated",
            "providerType": "org.keycloak.keys.KeyProvider",
            "parentId": realm_id,
            "config": {
                "priority": [str(int(time.time()))],
                "keySize": ["2048"],
                "active": ["true"],
                "enabled": ["true"],
                "algorithm": ["RS256"],
            },
        }
    )
    try:
        # The API refetches keys for an unknown key id, at most once per cooldown.
        await asyncio.sleep(settings.keycloak_jwks_refresh_cooldown_seconds + 0.5)
        after = password_login(settings, "bob", "dev-bob")
        assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]
        response = await api.get("/v1/accounts", headers={"Authorization": f"Bearer {after}"})
        assert response.status_code == 200, response.text
    finally:
        realm_admin.delete_component(component)
