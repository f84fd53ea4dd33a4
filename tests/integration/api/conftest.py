"""Fixtures of the API tests."""

from __future__ import annotations

import pytest
from keycloak import KeycloakAdmin

from infra.keycloak import client_credentials_login
from infra.settings import Settings
from infra.vault import SecretStore, connect_vault


def app_login(settings: Settings) -> dict[str, str]:
    """A fresh token of the dev app client (client credentials, its secret from Vault)."""
    creds = SecretStore(connect_vault(settings), settings).read("keycloak")
    token = client_credentials_login(settings, creds["client_id"], creds["client_secret"])
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def app_headers(settings: Settings) -> dict[str, str]:
    return app_login(settings)


@pytest.fixture(scope="module")
def realm_admin(settings: Settings) -> KeycloakAdmin:
    """The master-realm dev admin, for arranging the realm in tests only."""
    return KeycloakAdmin(
        server_url=settings.keycloak_url,
        username="admin",
        password="dev-admin",
        realm_name=settings.keycloak_realm,
        user_realm_name="master",
    )
