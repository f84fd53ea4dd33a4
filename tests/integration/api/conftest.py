"""Fixtures of the API tests."""

from __future__ import annotations

import pytest
from keycloak import KeycloakAdmin

from infra.settings import Settings


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
