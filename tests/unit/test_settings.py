from __future__ import annotations

import pytest

from infra.settings import Settings


def test_defaults_match_the_local_stack() -> None:
    s = Settings()
    assert s.temporal_address == "127.0.0.1:7233"
    assert s.database_url == "postgresql+psycopg://postgres@127.0.0.1:5433/bfc"
    assert s.keycloak_issuer == "http://127.0.0.1:8080/realms/bfc"


def test_every_port_and_path_is_a_bfc_setting(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("BFC_POSTGRES_PORT", "6543")
    monkeypatch.setenv("BFC_KEYCLOAK_REALM", "other")
    monkeypatch.setenv("BFC_STACK_DIR", str(tmp_path))
    monkeypatch.setenv("BFC_VAULT_SECRET_ID", "s3cr3t")
    s = Settings()
    assert s.database_url.endswith(":6543/bfc")
    assert s.keycloak_issuer.endswith("/realms/other")
    assert s.stack_path == tmp_path
    # A secret never shows in a repr or a log line of the settings.
    assert "s3cr3t" not in repr(s)
